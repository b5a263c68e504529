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
``undecided`` and is interrogated again after ``retry_undecided_s``; after ``stuck_after_s`` it
no longer holds up the SLA's next disputes. Windows that cannot be disputed yet (one in progress,
``min_dispute_gap_s``) are queued per SLA, merged, and disputed later (``drain``). With k >= 2,
another member's approved content is approved here after judging its archive again
(``peer_evidence``: ``_from_peers``). docs/governance-service.md, "Disputes, and restarts".
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

    def _blocking(self, sla_id, now):
        """This service's dispute of ``sla_id`` in progress (not filed yet), which holds up the
        SLA's next dispute; an ``undecided`` one stops holding it up ``stuck_after_s`` after it
        was requested (flagged ``stuck``, logged once). None: none."""
        with self.state.lock:
            for d in self.state.data["disputes"].values():
                if d["sla_id"] != sla_id or d["state"] in ("filed", "not_judgeable"):
                    continue
                if d["state"] == "undecided" and \
                        now - d.get("requested_ns", 0) > self.svc.stuck_after_s * 1e9:
                    if not d.get("stuck"):
                        self._save(d, stuck=True)
                        _event(logging.WARNING, "dispute stuck undecided: no longer holding up "
                               "this SLA's next disputes", sla=sla_id, dispute=d.get("dispute_id"),
                               unreachable=d.get("unreachable"),
                               stuck_after_s=self.svc.stuck_after_s)
                    continue
                return d
        return None

    def _gap(self, sla_id, now, from_ns=None):
        """The SLA's last dispute here while it holds new ones up: for ``min_dispute_gap_s``
        after it was requested (wall clock) and, for a window starting at ``from_ns``, when that
        starts less than ``min_dispute_gap_s`` after the last one's window ends (an ongoing fault
        is disputed once per gap, the windows in between queued); else None."""
        gap = self.svc.min_dispute_gap_s * 1e9
        with self.state.lock:
            mine = [d for d in self.state.data["disputes"].values() if d["sla_id"] == sla_id]
        last = max(mine, key=lambda d: d.get("requested_ns", 0), default=None)
        if last is None:
            return None
        if now < last.get("requested_ns", 0) + gap or \
                (from_ns is not None and from_ns < last["to_ns"] + gap):
            return last
        return None

    def _queue(self, sla_id, from_ns, to_ns, reason, why, other):
        """A window that cannot be disputed now: merged into the SLA's queued window (one per
        SLA: ``[earliest from, latest to]``), disputed by ``drain`` when allowed."""
        with self.state.lock:
            st = self.state.sla(sla_id)
            q = st.get("queued")
            if q:
                q["from_ns"], q["to_ns"] = min(q["from_ns"], from_ns), max(q["to_ns"], to_ns)
                q["windows"] += 1
            else:
                st["queued"] = {"from_ns": from_ns, "to_ns": to_ns, "reason": reason,
                                "windows": 1, "queued_ns": time.time_ns()}
            st["suppressed"] = st.get("suppressed", 0) + 1
            self.state.save()
            q = dict(st["queued"])
        _event(logging.INFO, f"not disputing yet ({why}): queued", sla=sla_id, from_ns=from_ns,
               to_ns=to_ns, other=other, queued_from_ns=q["from_ns"], queued_to_ns=q["to_ns"],
               reason=reason)

    def _new(self, sla_id, from_ns, to_ns, reason):
        """The state entry of a dispute to open (under the state lock), saved."""
        e = {"sla_id": sla_id, "from_ns": from_ns, "to_ns": to_ns, "reason": reason,
             "state": "opening", "dispute_id": None, "requested_ns": time.time_ns(),
             "attempts": 0, "next_try_ns": 0}
        self.state.data["disputes"][dispute_key(sla_id, from_ns, to_ns)] = e
        self.state.sla(sla_id)["blocked_until_ns"] = to_ns
        self.state.save()
        return e

    def request(self, sla_id, from_ns, to_ns, reason, sample=None):
        """Open a dispute on ``sla_id`` for the window (unless this service already has one that
        meets it) and try to decide it now; when another of the SLA is in progress here, or it is
        within ``min_dispute_gap_s`` of the SLA's last one (``_gap``), the window is queued
        (``drain``). ``sample``: an Interrogation of exactly that window already done (the delay
        sample that found a fault), used as the dispute's. Returns the state entry (None when
        overlapping or queued)."""
        with self.state.lock:
            if self.overlaps(sla_id, from_ns, to_ns) is not None:
                return None
            now = time.time_ns()
            busy = self._blocking(sla_id, now)
            last = None if busy is not None else self._gap(sla_id, now, from_ns)
            if (busy is not None or last is not None) and sample is not None:
                # a sample is a probe, not a record of every epoch: one held up is not queued
                # (its interrogation would be stale by then); the next sample sees the fault
                # if it goes on
                self.state.sla(sla_id)["suppressed"] = \
                    self.state.sla(sla_id).get("suppressed", 0) + 1
                self.state.save()
                _event(logging.INFO, "not disputing a sampled window: another dispute of this "
                       "SLA is in progress here or less than min_dispute_gap_s old", sla=sla_id,
                       from_ns=from_ns, to_ns=to_ns, other=(busy or last).get("dispute_id"),
                       reason=reason)
                return None
            if busy is not None or last is not None:
                self._queue(sla_id, from_ns, to_ns, reason,
                            "a dispute of this SLA is in progress here" if busy is not None else
                            f"within min_dispute_gap_s {self.svc.min_dispute_gap_s:g} s of this "
                            "SLA's last dispute",
                            (busy or last).get("dispute_id"))
                return None
            e = self._new(sla_id, from_ns, to_ns, reason)
        _event(logging.WARNING, "disputing an SLA window", sla=sla_id, from_ns=from_ns,
               to_ns=to_ns, reason=reason)
        self.advance(e, sample=sample)
        return e

    def _member_name(self):
        """How the ledger names this member in its votes (``Member.name()``)."""
        pub = getattr(self.signer, "public", None)
        return bytes(pub).hex() if pub is not None else str(self.signer.address).lower()

    def adopt(self, view):
        """Disputes opened on the ledger by others (the tenant on its SLA, another member, a
        ``beatctl open-dispute``) and still undecided, that this service has no entry for and
        this member has not approved: interrogated and filed here as its own are, from state
        ``opened`` (``adopted``: another member's archive is waited for ``peer_wait_s``). One
        per SLA at a time (an SLA's dispute in progress here holds the next one up: a tenant who
        opens many costs one interrogation at a time, never a flood), lowest id first. Returns
        the entries adopted."""
        me = self._member_name()
        now = time.time_ns()
        adopted, busy = [], set()
        with self.state.lock:
            mine = {d.get("dispute_id") for d in self.state.data["disputes"].values()}
            for d in sorted(view.disputes.values(), key=lambda d: d.dispute_id):
                if d.state != "opened" or d.sla_id not in view.slas or d.dispute_id in mine:
                    continue
                if d.to_ns + int(self.svc.final_after_s * 1e9) > now:
                    continue                     # a window not over (and settled) yet: later
                if any(str(v.member).lower() == me for v in view.votes.get(d.dispute_id, ())):
                    continue                     # approved already (beatctl decide, by hand)
                key = dispute_key(d.sla_id, d.from_ns, d.to_ns)
                if key in self.state.data["disputes"]:
                    continue                     # this window is disputed here (another id)
                if d.sla_id in busy or self.unfinished(d.sla_id) is not None:
                    continue
                e = {"sla_id": d.sla_id, "from_ns": d.from_ns, "to_ns": d.to_ns,
                     "reason": "opened on the ledger by another party", "state": "opened",
                     "dispute_id": d.dispute_id, "requested_ns": now, "opened_ns": now,
                     "attempts": 0, "next_try_ns": 0, "adopted": True, "external": True}
                self.state.data["disputes"][key] = e
                busy.add(d.sla_id)
                adopted.append(e)
            if adopted:
                self.state.save()
        for e in adopted:
            _event(logging.WARNING, "dispute opened by another party: interrogating it here",
                   sla=e["sla_id"], dispute=e["dispute_id"], from_ns=e["from_ns"],
                   to_ns=e["to_ns"])
            self.advance(e)
        return adopted

    def drain(self, sla_id):
        """The SLA's queued window disputed, when nothing holds it up any more."""
        with self.state.lock:
            st = self.state.sla(sla_id)
            q = st.get("queued")
            if not q:
                return None
            now = time.time_ns()
            if self._blocking(sla_id, now) is not None or self._gap(sla_id, now) is not None:
                return None
            st["queued"] = None
            reason = q["reason"] + (f" (and {q['windows'] - 1} window(s) queued after it)"
                                    if q["windows"] > 1 else "")
            e = self.state.data["disputes"].get(dispute_key(sla_id, q["from_ns"], q["to_ns"]))
            if e is None:
                e = self._new(sla_id, q["from_ns"], q["to_ns"], reason)
            else:
                self.state.save()
        _event(logging.WARNING, "disputing an SLA window (queued)", sla=sla_id,
               from_ns=q["from_ns"], to_ns=q["to_ns"], windows=q["windows"], reason=reason)
        self.advance(e)
        return e

    def advance(self, e, sample=None):
        """Take one entry as far as it can go now (see the module doc); once it is done, the
        SLA's queued window (``drain``)."""
        with self._steps:
            self._advance(e, sample)
        if e["state"] in ("filed", "not_judgeable"):
            self.drain(e["sla_id"])

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
        with self.state.lock:
            queued = [int(k) for k, st in self.state.data["slas"].items() if st.get("queued")]
        for sla_id in queued:
            try:
                self.drain(sla_id)
            except Exception as exc:  # noqa: BLE001 (the ledger or a device: retried later)
                _event(logging.WARNING, "queued dispute failed; retried later", sla=sla_id,
                       error=f"{type(exc).__name__}: {exc}")

    # -- steps ---------------------------------------------------------------------------------
    def _find_on_ledger(self, e):
        """The lowest dispute id on the ledger of the entry's SLA and window (None: none)."""
        return min((d.dispute_id for d in self.ledger.disputes()
                    if (d.sla_id, d.from_ns, d.to_ns) == (e["sla_id"], e["from_ns"], e["to_ns"])),
                   default=None)

    def _open(self, e):
        with self.lock:
            did = self._find_on_ledger(e)
            adopted = did is not None
            if did is None:
                did = self.ledger.open_dispute(e["sla_id"], e["from_ns"], e["to_ns"],
                                               signer=self.signer)
                _crash_point("after-open")       # opened on the ledger, its id not saved
                # looked up and opened in two steps: another service (another member) may have
                # opened the same window meanwhile; every one pursues the lowest id
                first = self._find_on_ledger(e)
                if first is not None and first != did:
                    _event(logging.WARNING, "the same window was opened at the same moment by "
                           "another service: pursuing the lowest dispute id, the duplicate "
                           "left unpursued", sla=e["sla_id"], dispute=first, duplicate=did)
                    did, adopted = first, True
        with self.state.lock:       # opened by this service (adopted: before its crash)
            self.state.sla(e["sla_id"])["disputes_opened"] += 1
            self._save(e, state="opened", dispute_id=did, opened_ns=time.time_ns(),
                       adopted=adopted)
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

    def _k(self):
        committee = getattr(self.ledger, "committee", None)
        with self.lock:
            return committee().k if committee is not None else 1

    def _from_peers(self, e):
        """k >= 2: another member's approval of this dispute whose evidence archive is in a
        ``peer_evidence`` directory (``d<dispute>``), judged again here (``interrogate.replay``,
        as ``beatctl decide``: every signed chunk checked against the keys and anchors on the
        ledger). When this judgement gives the verdict digest that member approved, the same
        content is prepared for filing (state ``filing``; the faulty devices are this service's
        own judgement's) and True returned; otherwise (no archive, or another verdict: logged)
        False: the service interrogates itself, and its approval is dissent if it differs."""
        from .. import archive
        did = e["dispute_id"]
        with self.lock:
            votes = list(getattr(self.ledger, "dispute_votes", lambda _d: [])(did))
            d = self.ledger.get_dispute(did)
        approved = {(bytes(v.evidence_digest), bytes(v.verdict_digest)) for v in votes}
        if not approved or d is None:
            return False
        for root in self.svc.peer_evidence:
            src = os.path.join(root, f"d{did}")
            if not os.path.isdir(src):
                continue
            try:
                arch = archive.read(src)
                if not any(ev == arch.digest for ev, _ in approved):
                    continue                     # not the archive of an approval on the ledger
                m = arch.manifest
                if (m["sla_id"], m["window"]["from_ns"], m["window"]["to_ns"]) != \
                        (d.sla_id, d.from_ns, d.to_ns):
                    raise ValueError(f"evidence of sla {m['sla_id']} window "
                                     f"{m['window']}, dispute {did} is sla {d.sla_id} "
                                     f"[{d.from_ns}, {d.to_ns}]")
                j, evidence = itg.replay(arch, self.ledger)
            except (OSError, LookupError, ValueError, KeyError, archive.ArchiveError) as exc:
                _event(logging.WARNING, "another member's evidence archive cannot be judged "
                       "here; not used", dispute=did, archive=src,
                       error=f"{type(exc).__name__}: {exc}")
                continue
            vd = itg.verdict_digest(j, arch.digest)
            unreachable = sorted(n for n, x in evidence.items() if x.status == "unreachable")
            if (arch.digest, vd) not in approved or unreachable:
                _event(logging.ERROR, "another member approved a verdict its evidence archive "
                       "does not give (or one with devices unreachable, which decides nothing): "
                       "judged by this service's own interrogation instead", dispute=did,
                       archive=src, evidence_digest=arch.digest.hex(), rejudged_verdict=vd.hex(),
                       unreachable=unreachable)
                continue
            path = os.path.join(self.state.dir, "evidence", f"d{did}")
            if os.path.exists(path):
                shutil.rmtree(path)
            shutil.copytree(src, path)
            self._report(e, path, j, arch.digest, vd, evidence, source=src,
                         manifest=arch.manifest)
            _event(logging.WARNING, "another member's evidence judged again here: the same "
                   "verdict; approving that content", dispute=did, archive=src,
                   evidence_digest=arch.digest.hex()[:16], faulty=e["faulty"])
            return True
        return False

    def _report(self, e, path, j, ev_digest, vd, evidence, source=None, manifest=None):
        """The judgement written beside its archive and saved for filing (state ``filing``)."""
        import json
        from types import SimpleNamespace
        from ..report import to_dict
        route = set(j.sla.route)
        faulty = sorted(n for n in j.faulty if n in route)
        with open(os.path.join(path, "report.json"), "w") as f:
            json.dump(to_dict(j), f, sort_keys=True)
        self.metrics.equivocations(e["sla_id"], SimpleNamespace(evidence=evidence,
                                                                manifest=manifest))
        self._save(e, state="filing", evidence_dir=path, evidence_source=source,
                   evidence_digest=ev_digest.hex(), verdict_digest=vd.hex(),
                   faulty=faulty, verdicts={str(n): x.verdict for n, x in j.devices.items()},
                   named_at_fault=sorted(j.faulty))

    def _interrogate(self, e, sample=None):
        with self.lock:
            sla = self.ledger.get_sla(e["sla_id"])
        if sample is None and self._k() >= 2:
            if self._from_peers(e):
                return
            waited = time.time_ns() - e.get("opened_ns", 0)
            if e.get("adopted") and self.svc.peer_evidence and \
                    waited < self.svc.peer_wait_s * 1e9:
                return                 # opened by another member: its archive may come soon
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
        vd = itg.verdict_digest(it.judgement, it.evidence_digest)
        self._report(e, path, it.judgement, it.evidence_digest, vd, it.evidence,
                     manifest=it.manifest)

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
