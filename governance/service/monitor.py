"""QM-SLA evaluation from verifiable evidence, one receipt epoch at a time (docs/governance-service.md).

For every active SLA and every receipt epoch, the receipts of the SLA's flow at the first device
of the agreed route (role 1, ingress) and at the last one (role 2, egress), asked over mutual TLS
(``governance.client``) and checked against their anchors (``governance.verify.verify_receipts``,
the interrogation's own check). Only a receipt whose ``R`` and inclusion proof check out against
the anchor on the ledger counts. Per epoch and end, a ``Reading``:

- ``counted``: the anchored receipt's packets; or 0 packets when the device has anchored past the
  epoch (its anchors on the ledger reach a whole epoch beyond its end) and its signed answer holds
  no receipt of the epoch for the flow (and no overflow receipt, which may hold the flow);
- ``unreachable``: the device did not answer (transport) or refused the request: unknown;
- ``refused``: what it answered is not acceptable (bad signature, malformed, a receipt whose R or
  inclusion proof does not match its anchor, two different receipts for one epoch, a receipt
  anchored long after its epoch): reported and never counted; unknown for this epoch;
- ``pending``: not settled yet (asked again at the next round, unknown after ``final_after_s``).

``evaluate_epoch`` (pure) turns the two readings, the SLA's terms and the delay sample into an
``EpochResult``; ``Streak`` (pure) counts consecutive violations. A device that cannot be heard
gives ``unknown``, never a violation; the monitor only opens disputes: the verdict is the
interrogation's.
"""
import dataclasses
import math

__all__ = ["OK", "VIOLATION", "UNKNOWN", "IDLE", "Reading", "EpochResult", "evaluate_epoch",
           "Streak", "inflight_allowance", "read_end", "DEFAULT_INFLIGHT_NS"]

OK, VIOLATION, UNKNOWN, IDLE = "ok", "violation", "unknown", "idle"
COUNTED, UNREACHABLE, REFUSED, PENDING = "counted", "unreachable", "refused", "pending"
INGRESS, EGRESS = 1, 2
OVERFLOW = bytes(16)                    # src = dst = :: : the receipts beyond the device's cap
DEFAULT_INFLIGHT_NS = 10_000_000        # an SLA without a delay term: 10 ms in flight at most


@dataclasses.dataclass(frozen=True)
class Reading:
    """One end of the route in one epoch (see the module doc)."""
    status: str
    packets: int = 0
    bytes: int = 0
    reason: str = ""
    R: str = ""                         # the counted receipt's R (hex), "" for none

    @property
    def known(self):
        return self.status == COUNTED


@dataclasses.dataclass(frozen=True)
class EpochResult:
    epoch_ns: int
    result: str                         # OK, VIOLATION, UNKNOWN, IDLE
    ingress: object = None              # packets, None when unknown
    egress: object = None
    loss_ppm: object = None             # (ingress - egress) / ingress, None when unknown
    excess_ppm: object = None           # the loss beyond the in-flight allowance (compared)
    allowance: int = 0                  # packets that may be in flight across the boundary
    delay_us: object = None             # the sampled end-to-end delay percentile, if any
    reasons: tuple = ()

    def to_dict(self):
        # by hand: dataclasses.asdict deep-copies every field (~0.3 ms an epoch at 1,000 SLAs,
        # the service's largest cost after the receipts); the fields are numbers and strings
        d = {name: getattr(self, name) for name in _RESULT_FIELDS}
        d["reasons"] = list(self.reasons)
        return d


_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(EpochResult))


def inflight_allowance(ingress, epoch_ns, max_delay_us):
    """Packets of an epoch's ingress that may still be on their way at its end (and be counted
    at the egress in the next epoch): ``ceil(ingress * d / epoch)`` with ``d`` the SLA's delay
    term (``DEFAULT_INFLIGHT_NS`` without one), at most the epoch."""
    d = max_delay_us * 1000 if max_delay_us > 0 else DEFAULT_INFLIGHT_NS
    return math.ceil(ingress * min(d, epoch_ns) / epoch_ns) if ingress > 0 else 0


def evaluate_epoch(epoch_ns, ingress, egress, *, max_loss_ppm, max_delay_us, epoch_len_ns,
                   delay_us=None):
    """The epoch's result from its two ``Reading``s and the terms.

    Loss: ``excess = ingress - egress - allowance`` (``inflight_allowance``); a violation when
    ``excess * 10^6 / ingress > max_loss_ppm`` (strictly: at the term is within it). Delay
    (``delay_us``, a sampled percentile of the end-to-end delay, None when the epoch has none): a
    violation when above ``max_delay_us`` (0: no delay term). Unknown when an end is not counted
    and the delay sample says nothing against the terms; idle when the ingress counted 0."""
    reasons = []
    delay_bad = delay_us is not None and max_delay_us > 0 and delay_us > max_delay_us
    if delay_bad:
        reasons.append(f"delay {delay_us} us above max_delay_us {max_delay_us}")
    if not ingress.known or (not egress.known and not (ingress.known and ingress.packets == 0)):
        for name, r in (("ingress", ingress), ("egress", egress)):
            if not r.known:
                reasons.append(f"{name} {r.status}: {r.reason}" if r.reason else
                               f"{name} {r.status}")
        return EpochResult(epoch_ns, VIOLATION if delay_bad else UNKNOWN,
                           ingress.packets if ingress.known else None,
                           egress.packets if egress.known else None,
                           delay_us=delay_us, reasons=tuple(reasons))
    n_in = ingress.packets
    n_out = egress.packets if egress.known else None
    if n_in == 0:
        allowance = 0
        if n_out is not None and n_out > inflight_allowance(n_out, epoch_len_ns, max_delay_us):
            # more left the route than entered it, beyond what was in flight: a device's
            # receipts contradict the other's; nobody's terms can be checked
            reasons.append(f"egress {n_out} packets with no ingress: the two ends' receipts "
                           "contradict each other")
            return EpochResult(epoch_ns, VIOLATION if delay_bad else UNKNOWN, 0, n_out,
                               delay_us=delay_us, reasons=tuple(reasons))
        return EpochResult(epoch_ns, VIOLATION if delay_bad else IDLE, 0, n_out,
                           delay_us=delay_us, reasons=tuple(reasons))
    allowance = inflight_allowance(n_in, epoch_len_ns, max_delay_us)
    lost = max(0, n_in - n_out)
    excess = max(0, n_in - n_out - allowance)
    loss_ppm = lost * 1_000_000 // n_in
    excess_ppm = excess * 1_000_000 // n_in
    # strictly above the term (integer arithmetic: excess / n_in > max / 10^6)
    loss_bad = excess * 1_000_000 > max_loss_ppm * n_in
    if loss_bad:
        reasons.append(f"loss {excess} of {n_in} packets beyond {allowance} in flight: "
                       f"{excess_ppm} ppm above max_loss_ppm {max_loss_ppm}")
    return EpochResult(epoch_ns, VIOLATION if (loss_bad or delay_bad) else OK, n_in, n_out,
                       loss_ppm, excess_ppm, allowance, delay_us, tuple(reasons))


class Streak:
    """Consecutive violating epochs. ``feed(result)`` returns the window ``(from_ns, to_ns)`` to
    dispute when the ``n``-th violation in a row comes (and starts a new streak), else None.
    OK ends a streak; UNKNOWN and IDLE end it when ``unknown_breaks``, else are skipped (a device
    that withholds every other epoch cannot keep a streak from completing; an IDLE epoch may be
    an ingress withholding its receipt: 0 entered reads as idle). ``epochs``: the violating
    epochs so far (kept in the service's state)."""

    def __init__(self, n, epoch_len_ns, unknown_breaks=False, epochs=()):
        if n < 1:
            raise ValueError(f"consecutive: {n} must be 1 or more")
        self.n, self.epoch_len_ns, self.unknown_breaks = n, epoch_len_ns, unknown_breaks
        self.epochs = list(epochs)

    def feed(self, result):
        if result.result == VIOLATION:
            self.epochs.append(result.epoch_ns)
            if len(self.epochs) >= self.n:
                window = (self.epochs[0], self.epochs[-1] + self.epoch_len_ns - 1)
                self.epochs = []
                return window
            return None
        if result.result == OK or (result.result in (UNKNOWN, IDLE) and self.unknown_breaks):
            self.epochs = []
        return None


# -- one end's receipts, read and checked -------------------------------------------------------

DEFAULT_SETTLE_NS = 200_000_000


def settled(anchored_until_ns, epoch_ns, epoch_len_ns, settle_ns):
    """Whether a device whose anchors reach ``anchored_until_ns`` has stored every receipt of
    the epoch starting at ``epoch_ns`` (see ``read_end``)."""
    return anchored_until_ns >= epoch_ns + epoch_len_ns + settle_ns


def read_end(receipts_check, overflow_check, role, epochs, epoch_len_ns, anchored_until_ns,
             late, problems_out, settle_ns=DEFAULT_SETTLE_NS):
    """``{epoch_ns: Reading}`` for ``epochs`` at one end, from the device's checked answers
    (``verify.ReceiptsCheck`` of the flow's receipts and of its overflow receipts, or an
    exception: it did not answer / answered unacceptably), ``role`` (INGRESS or EGRESS), the
    newest ``last_t_ns`` of its anchors on the ledger (``anchored_until_ns``) and ``late(rc)``:
    a reason when the receipt's anchor came too late (back-dated), else None. Refusals are
    appended to ``problems_out`` as ``(epoch_ns, reason)``.

    An epoch ``E`` with no receipt of the flow is 0 packets once the device's anchors reach
    ``E + epoch_len_ns + settle_ns`` (``settle_ns`` at least the domain's join window): a device
    closes E's receipts as soon as its clock passes E's end plus its join window, in the same
    batch of outputs as the records it releases then, and its store writes them in that batch's
    transaction; so an anchor holding a record of a later time comes after E's receipts were
    stored, and the device's answer holds them (anchored, or not yet: pending)."""
    from ..client import NodeUnreachable, RequestRejected

    if isinstance(receipts_check, Exception) or isinstance(overflow_check, Exception):
        exc = receipts_check if isinstance(receipts_check, Exception) else overflow_check
        status = UNREACHABLE if isinstance(exc, (NodeUnreachable, RequestRejected)) else REFUSED
        from ..retry import InterrogationFailed
        if isinstance(exc, InterrogationFailed):
            status = REFUSED if exc.classification in ("incomplete", "bad_evidence") \
                else UNREACHABLE
        why = f"{type(exc).__name__}: {exc}"
        if status == REFUSED:
            problems_out.extend((e, why) for e in epochs)
        return {e: Reading(status, reason=why) for e in epochs}
    by_epoch, bad = {}, {}
    for p in receipts_check.problems:
        if p.kind == "tampered":
            e = _epoch_of(p.item)
            bad.setdefault(e, []).append(f"{p.kind}: {p.reason}")
    for rc in receipts_check.receipts:
        if rc.role != role:
            continue
        why = late(rc)
        if why:
            bad.setdefault(rc.epoch_ns, []).append(why)
            continue
        prev = by_epoch.get(rc.epoch_ns)
        if prev is not None and bytes(prev.R) != bytes(rc.R):
            bad.setdefault(rc.epoch_ns, []).append(
                f"two receipts for epoch {rc.epoch_ns} role {role}: R {bytes(prev.R).hex()} "
                f"and {bytes(rc.R).hex()}")
        by_epoch[rc.epoch_ns] = rc
    unproven = {rc.epoch_ns for rc in receipts_check.unproven if rc.role == role}
    overflow = {rc.epoch_ns for rc in (overflow_check.receipts + overflow_check.unproven)
                if rc.role == role}
    out = {}
    for e in epochs:
        if e in bad:
            why = "; ".join(bad[e])
            problems_out.append((e, why))
            out[e] = Reading(REFUSED, reason=why)
        elif e in by_epoch:
            rc = by_epoch[e]
            out[e] = Reading(COUNTED, rc.packets, rc.bytes, R=bytes(rc.R).hex())
        elif e in unproven:
            out[e] = Reading(PENDING, reason="its receipt is not anchored yet")
        elif not settled(anchored_until_ns, e, epoch_len_ns, settle_ns):
            out[e] = Reading(PENDING, reason="the device has not anchored past the epoch")
        elif e in overflow:
            out[e] = Reading(UNREACHABLE, reason="no receipt of the flow, and an overflow "
                                                 "receipt (the device's cap) that may hold it")
        else:
            out[e] = Reading(COUNTED, 0, 0)
    return out


def _epoch_of(item):
    # verify.Problem.item of a receipt: "receipt epoch_ns=<E> role=<r>"
    try:
        return int(item.split("epoch_ns=")[1].split()[0])
    except (IndexError, ValueError):
        return None
