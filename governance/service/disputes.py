"""Opening a dispute, interrogating it and filing this member's decision, exactly once each
across crashes (docs/governance-service.md, "Restarts").

Per dispute the service's state (state.py) goes ``opening`` (written before the ledger is asked)
-> ``opened`` (the ledger's id) -> ``filing`` (the interrogation done: the evidence archive
written under ``<state_dir>/evidence/d<id>``, the evidence digest, verdict digest and faulty
devices saved) -> ``filed`` (this member's approval on the ledger; with k = 1 the decision
itself). A restart resumes each from its state:

- ``opening``: the dispute is looked up on the ledger by its SLA and window (one this member
  opened before the crash) and adopted; only when there is none is it opened;
- ``opened`` / ``undecided``: interrogated (again: nothing was filed);
- ``filing``: the SAME content is filed again (approving one content twice counts once; a new
  interrogation would give another evidence digest, which the ledger refuses as a second
  content from this member).

An interrogation with a device still unreachable decides nothing: the dispute stays
``undecided`` and is interrogated again after ``retry_undecided_s``.
"""
import logging
import os
import shutil
import threading
import time

from .. import interrogate as itg
from .state import dispute_key

__all__ = ["DisputeDesk", "CRASH_ENV"]

log = logging.getLogger("beatd.governance.disputes")
CRASH_ENV = "BEAT_TESTING_SERVICE_CRASH_AT"     # TEST ONLY: os._exit(137) at that step


def _crash_point(step):
    """TEST ONLY: the restart tests make the service die at a named step (as a SIGKILL would)."""
    if os.environ.get(CRASH_ENV) == step:
        log.warning("testing: dying at a crash point", extra={"fields": {"step": step}})
        os._exit(137)


def _event(level, msg, **fields):
    log.log(level, msg, extra={"fields": fields})


class DisputeDesk:
    def __init__(self, ledger, ledger_lock, state, gov_cfg, svc_cfg, signer, metrics):
        self.ledger = ledger
        self.lock = ledger_lock
        self.state = state
        self.gov = gov_cfg
        self.svc = svc_cfg
        self.signer = signer
        self.metrics = metrics            # service.Counters
        self._steps = threading.Lock()    # one dispute step at a time (a job and the resume)

    # -- entries -------------------------------------------------------------------------------
    def entry(self, sla_id, from_ns, to_ns):
        with self.state.lock:
            return self.state.data["disputes"].get(dispute_key(sla_id, from_ns, to_ns))

    def overlaps(self, sla_id, from_ns, to_ns):
        """A dispute of this service on ``sla_id`` whose window meets [from_ns, to_ns]."""
        with self.state.lock:
            for d in self.state.data["disputes"].values():
                if d["sla_id"] == sla_id and d["from_ns"] <= to_ns and from_ns <= d["to_ns"]:
                    return d
        return None

    def unfinished(self, sla_id):
        """This service's dispute on ``sla_id`` not filed yet (None: none)."""
        with self.state.lock:
            for d in self.state.data["disputes"].values():
                if d["sla_id"] == sla_id and d["state"] not in ("filed", "not_judgeable"):
                    return d
        return None

    def _save(self, e, **changes):
        with self.state.lock:
            e.update(changes)
            self.state.save()

    def request(self, sla_id, from_ns, to_ns, reason, sample=None):
        """Open a dispute on ``sla_id`` for the window (unless this service already has one that
        meets it) and try to decide it now. ``sample``: an Interrogation of exactly that window
        already done (the delay sample that found a fault), used as the dispute's. Returns the
        state entry (None when an overlapping dispute exists)."""
        with self.state.lock:
            if self.overlaps(sla_id, from_ns, to_ns) is not None:
                return None
            gap = int(self.svc.min_dispute_gap_s * 1e9)
            last = max((d["to_ns"] for d in self.state.data["disputes"].values()
                        if d["sla_id"] == sla_id), default=None)
            if last is not None and from_ns < last + gap:
                # an ongoing fault is disputed once per min_dispute_gap_s, not every n epochs
                self.state.sla(sla_id)["suppressed"] = \
                    self.state.sla(sla_id).get("suppressed", 0) + 1
                self.state.save()
                _event(logging.INFO, "not disputing: too soon after this SLA's last dispute",
                       sla=sla_id, from_ns=from_ns, to_ns=to_ns, last_to_ns=last,
                       min_dispute_gap_s=self.svc.min_dispute_gap_s, reason=reason)
                return None
            busy = self.unfinished(sla_id)
            if busy is not None:
                # one dispute per SLA at a time: the next one once this one is filed (its
                # interrogation covers what the devices do now; a streak goes on afterwards)
                _event(logging.INFO, "not disputing: a dispute of this SLA is still open here",
                       sla=sla_id, from_ns=from_ns, to_ns=to_ns, open=busy.get("dispute_id"),
                       reason=reason)
                return None
            e = {"sla_id": sla_id, "from_ns": from_ns, "to_ns": to_ns, "reason": reason,
                 "state": "opening", "dispute_id": None, "requested_ns": time.time_ns(),
                 "attempts": 0, "next_try_ns": 0}
            self.state.data["disputes"][dispute_key(sla_id, from_ns, to_ns)] = e
            self.state.sla(sla_id)["blocked_until_ns"] = to_ns
            self.state.save()
        _event(logging.WARNING, "disputing an SLA window", sla=sla_id, from_ns=from_ns,
               to_ns=to_ns, reason=reason)
        self.advance(e, sample=sample)
        return e

    def advance(self, e, sample=None):
        """Take one entry as far as it can go now (see the module doc)."""
        with self._steps:
            self._advance(e, sample)

    def _advance(self, e, sample):
        if e["state"] == "opening":
            _crash_point("before-open")
            self._open(e)
        if e["state"] in ("opened", "undecided"):
            if e["state"] == "undecided" and time.time_ns() < e.get("next_try_ns", 0):
                return
            self._interrogate(e, sample)
        if e["state"] == "filing":
            _crash_point("before-file")
            self._file(e)

    def resume(self):
        """Every entry not filed yet, advanced (at start and periodically)."""
        with self.state.lock:
            todo = [e for e in self.state.data["disputes"].values() if e["state"] != "filed"]
        for e in todo:
            try:
                self.advance(e)
            except Exception as exc:  # noqa: BLE001 (the ledger or a device: retried later)
                _event(logging.WARNING, "dispute step failed; retried later",
                       sla=e["sla_id"], dispute=e.get("dispute_id"), state=e["state"],
                       error=f"{type(exc).__name__}: {exc}")

    # -- steps ---------------------------------------------------------------------------------
    def _find_on_ledger(self, e):
        for d in self.ledger.disputes():
            if (d.sla_id, d.from_ns, d.to_ns) == (e["sla_id"], e["from_ns"], e["to_ns"]):
                return d.dispute_id
        return None

    def _open(self, e):
        with self.lock:
            did = self._find_on_ledger(e)
            adopted = did is not None
            if did is None:
                did = self.ledger.open_dispute(e["sla_id"], e["from_ns"], e["to_ns"],
                                               signer=self.signer)
                _crash_point("after-open")       # opened on the ledger, its id not saved
        with self.state.lock:       # opened by this service (adopted: before its crash)
            self.state.sla(e["sla_id"])["disputes_opened"] += 1
            self._save(e, state="opened", dispute_id=did, opened_ns=time.time_ns())
        _event(logging.WARNING, "dispute opened" if not adopted else
               "dispute found on the ledger (opened before a restart): adopted",
               sla=e["sla_id"], dispute=did, from_ns=e["from_ns"], to_ns=e["to_ns"],
               reason=e["reason"])

    def _anchored_past(self, sla, to_ns):
        """Every device of the route has anchors reaching past ``to_ns``."""
        with self.lock:
            for n in sla.route:
                nxt = self.ledger.next_batch_seq(n)
                a = self.ledger.get_anchor(n, nxt - 1) if nxt else None
                if a is None or a.last_t_ns <= to_ns:
                    return False
        return True

    def _interrogate(self, e, sample=None):
        with self.lock:
            sla = self.ledger.get_sla(e["sla_id"])
        if sample is None:
            waited = time.time_ns() - e.get("opened_ns", 0)
            if not self._anchored_past(sla, e["to_ns"]) and \
                    waited < self.svc.final_after_s * 1e9:
                return                           # the route's records of the window: soon
            e["attempts"] = e.get("attempts", 0) + 1
            try:
                it = itg.interrogate(self.ledger, e["sla_id"], e["from_ns"], e["to_ns"],
                                     self.gov, receipt_epoch_ns=self.svc.epoch_ns)
            except itg.NotJudgeable as exc:
                self._save(e, state="not_judgeable", error=str(exc))
                _event(logging.ERROR, "dispute window not judgeable", dispute=e["dispute_id"],
                       error=str(exc))
                return
        else:
            it = sample
        unreachable = sorted(n for n, ev in it.evidence.items() if ev.status == "unreachable")
        if unreachable:
            self._save(e, state="undecided", unreachable=unreachable,
                       next_try_ns=time.time_ns() + int(self.svc.retry_undecided_s * 1e9))
            _event(logging.WARNING, "dispute not decided: devices unreachable; asked again later",
                   dispute=e["dispute_id"], unreachable=unreachable)
            return
        path = os.path.join(self.state.dir, "evidence", f"d{e['dispute_id']}")
        if os.path.exists(path):
            shutil.rmtree(path)                  # a run that died before "filing": not filed
        it.write_evidence(path)
        j = it.judgement
        route = set(j.sla.route)
        faulty = sorted(n for n in j.faulty if n in route)
        vd = itg.verdict_digest(j, it.evidence_digest)
        from ..report import to_dict
        report = to_dict(j)
        with open(os.path.join(path, "report.json"), "w") as f:
            import json
            json.dump(report, f, sort_keys=True)
        self.metrics.equivocations(e["sla_id"], it)
        self._save(e, state="filing", evidence_dir=path,
                   evidence_digest=it.evidence_digest.hex(), verdict_digest=vd.hex(),
                   faulty=faulty, verdicts={str(n): d.verdict for n, d in j.devices.items()},
                   named_at_fault=sorted(j.faulty))

    def _file(self, e):
        ev, vd = bytes.fromhex(e["evidence_digest"]), bytes.fromhex(e["verdict_digest"])
        did, faulty = e["dispute_id"], e["faulty"]
        with self.lock:
            committee = getattr(self.ledger, "committee", None)
            k = committee().k if committee is not None else 1
            d = self.ledger.get_dispute(did)
            if d is not None and d.state in ("decided", "settled") and k == 1:
                pass                             # decided already (a crash after deciding)
            elif k == 1:
                self.ledger.record_evidence(did, ev, signer=self.signer)
                self.ledger.decide(did, vd, faulty, signer=self.signer)
            else:
                self.ledger.approve_decision(did, ev, vd, faulty, signer=self.signer)
            d = self.ledger.get_dispute(did)
        self._save(e, state="filed", filed_ns=time.time_ns(), ledger_state=d.state, k=k)
        _event(logging.WARNING, "decision filed", dispute=did, faulty=faulty,
               verdict_digest=vd.hex()[:16], ledger_state=d.state, k=k)
