"""Asking a device again: retries with exponential backoff and jitter within an overall deadline,
and what the failure means for the judgement.

``ask_with_retry(call, deadline_s)`` calls ``call(timeout_s)`` -- one request to one device,
e.g. ``lambda t: client.proof_segments(lo, hi, [ft], timeout=t)`` with ``governance/client.py``
-- until it returns, retrying transient failures until ``deadline_s`` seconds have passed; it
returns the call's result or raises an ``InterrogationFailed`` whose ``classification`` is one of:

- ``"unreachable"`` (``Unreachable``): no answer after the retries -- the transport failed
  (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, the TLS handshake; ``NodeUnreachable``), before or
  in the middle of an answer, or the device stayed busy (RESOURCE_EXHAUSTED saying "retry later",
  or gRPC's "Concurrent RPC limit exceeded!"). Reported, no verdict, asked again later. Nothing
  here is something only the device itself could have done: a third party (a flood, a path
  that drops packets) can cause each of them, so none of them may make an honest device MISSING.
  A device that chooses not to answer is unreachable too; it gains nothing it did not have.
- ``"refused"`` (``Refused``): the device answered the TLS handshake and returned an error status
  that is not transient (INVALID_ARGUMENT, PERMISSION_DENIED, NOT_FOUND, a RESOURCE_EXHAUSTED that
  does not say "retry later" such as max_records, UNIMPLEMENTED, INTERNAL, ...). Not retried.
- ``"incomplete"`` (``Incomplete``): the device ended its answer (status OK) before the chunk
  flagged last, or sent chunks after it (``IncompleteAnswer``). Only the device can end a stream
  inside TLS. Not retried.
- ``"bad_evidence"`` (``BadEvidence``): a chunk with a bad signature, malformed, or answering
  something else (``BadSignature``, ``MalformedEvidence``, ``WrongAnswer``, ``WrongNode``). Not
  retried.

Every ``InterrogationFailed`` carries ``attempts``, ``last_error`` (the exception of the last
attempt), ``errors`` (one line per attempt), ``elapsed_s`` and ``busy`` (the last transient
failure was the device saying it is busy). ``classify(exc)`` gives the classification of one
exception (and whether it is retried) for callers that do their own looping. Exceptions that are
not about the device (a ValueError for bad arguments, a bug) are raised unchanged.

Backoff: the k-th wait is ``min(max_delay_s, first_delay_s * multiplier**(k-1))`` scaled by a
random factor in ``[1 - jitter, 1]``; no wait or attempt starts past the deadline, and each attempt
gets ``min(attempt_timeout_s, time left)`` as its gRPC timeout. ``clock``, ``sleep`` and
``random`` can be injected (the tests run without waiting).
"""
import dataclasses
import random as _random
import time

import grpc

from beat_rpc.evidence import BadSignature, IncompleteAnswer, MalformedEvidence, WrongAnswer

from .client import NodeUnreachable, RequestRejected, WrongNode

__all__ = ["ask_with_retry", "classify", "Classified", "InterrogationFailed", "Unreachable",
           "Refused", "Incomplete", "BadEvidence", "UNREACHABLE", "REFUSED", "INCOMPLETE",
           "BAD_EVIDENCE", "CLASSIFICATIONS", "is_busy"]

UNREACHABLE = "unreachable"
REFUSED = "refused"
INCOMPLETE = "incomplete"
BAD_EVIDENCE = "bad_evidence"
CLASSIFICATIONS = (UNREACHABLE, REFUSED, INCOMPLETE, BAD_EVIDENCE)

TRANSPORT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                   grpc.StatusCode.CANCELLED)
BUSY_MARKERS = ("retry later", "Concurrent RPC limit exceeded")


class InterrogationFailed(Exception):
    """A request to a device that gave no acceptable answer; see the module doc."""

    classification = None

    def __init__(self, message, *, attempts, last_error, errors=(), elapsed_s=0.0, busy=False):
        super().__init__(message)
        self.attempts = attempts
        self.last_error = last_error
        self.errors = list(errors)
        self.elapsed_s = elapsed_s
        self.busy = busy


class Unreachable(InterrogationFailed):
    classification = UNREACHABLE


class Refused(InterrogationFailed):
    classification = REFUSED


class Incomplete(InterrogationFailed):
    classification = INCOMPLETE


class BadEvidence(InterrogationFailed):
    classification = BAD_EVIDENCE


_ERROR_CLASS = {UNREACHABLE: Unreachable, REFUSED: Refused, INCOMPLETE: Incomplete,
                BAD_EVIDENCE: BadEvidence}


@dataclasses.dataclass(frozen=True)
class Classified:
    """What one exception means: ``classification`` (or None: not about the device, raised
    unchanged), ``retry`` (transient: ask again), ``busy`` (the device said it is busy)."""
    classification: str | None
    retry: bool = False
    busy: bool = False


def is_busy(details):
    """Whether a RESOURCE_EXHAUSTED's details say the device is busy (asking again later may
    work: the device's stream and per-peer limits, gRPC's own limit) rather than that the request
    is too big for it (max_records: asking again is pointless)."""
    return any(m in (details or "") for m in BUSY_MARKERS)


def _status(code, details):
    if code in TRANSPORT_CODES or code is None:
        return Classified(UNREACHABLE, retry=True)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and is_busy(details):
        return Classified(UNREACHABLE, retry=True, busy=True)
    return Classified(REFUSED)


def classify(exc):
    """The ``Classified`` of an exception raised by a request to a device (see the module
    doc): governance/client.py's errors, ``beat_rpc.evidence``'s, or a raw ``grpc.RpcError``."""
    if isinstance(exc, NodeUnreachable):
        return Classified(UNREACHABLE, retry=True)
    if isinstance(exc, RequestRejected):
        return _status(exc.code, exc.details)
    if isinstance(exc, IncompleteAnswer):
        return Classified(INCOMPLETE)
    if isinstance(exc, (BadSignature, MalformedEvidence, WrongAnswer, WrongNode)):
        return Classified(BAD_EVIDENCE)
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return _status(exc.code(), exc.details() if hasattr(exc, "details") else str(exc))
    return Classified(None)


def ask_with_retry(call, deadline_s, *, what="the request", attempt_timeout_s=None,
                   first_delay_s=0.25, max_delay_s=4.0, multiplier=2.0, jitter=0.5,
                   clock=time.monotonic, sleep=time.sleep, random=_random.random, on_retry=None):
    """``call(timeout_s)``'s result, retried on transient failures until ``deadline_s`` seconds
    have passed; else an ``InterrogationFailed`` subclass (module doc). ``what`` names the request
    in messages ("node 3 GetProofSegments"); ``on_retry(attempt, exc, delay_s)`` is told of each
    retry (for the report)."""
    if isinstance(deadline_s, bool) or not isinstance(deadline_s, (int, float)) \
            or not deadline_s > 0:
        raise ValueError(f"deadline_s: {deadline_s!r} must be a number of seconds above 0")
    if attempt_timeout_s is not None and not attempt_timeout_s > 0:
        raise ValueError(f"attempt_timeout_s: {attempt_timeout_s!r} must be above 0 (or None)")
    if not 0 <= jitter <= 1:
        raise ValueError(f"jitter: {jitter!r} must be within [0, 1]")
    if not (first_delay_s > 0 and max_delay_s >= first_delay_s and multiplier >= 1):
        raise ValueError(f"backoff: first_delay_s {first_delay_s!r}, max_delay_s "
                         f"{max_delay_s!r}, multiplier {multiplier!r}: need 0 < first <= max "
                         "and multiplier >= 1")
    start = clock()
    end = start + deadline_s
    errors = []
    attempt = 0
    busy = False
    while True:
        attempt += 1
        left = end - clock()
        timeout = left if attempt_timeout_s is None else min(attempt_timeout_s, left)
        try:
            return call(timeout)
        except Exception as exc:  # noqa: BLE001 (classified below; others re-raised)
            c = classify(exc)
            if c.classification is None:
                raise
            errors.append(f"attempt {attempt}: {type(exc).__name__}: {exc}")
            busy = c.busy
            last = exc
            if not c.retry:
                break
            delay = min(max_delay_s, first_delay_s * multiplier ** (attempt - 1))
            delay *= 1.0 - jitter * random()
            if clock() + delay >= end:
                break
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            sleep(delay)
    elapsed = clock() - start
    kind = c.classification
    tail = (f" after {attempt} attempt{'s' if attempt > 1 else ''} in {elapsed:.1f} s (deadline "
            f"{deadline_s:g} s)" if c.retry else "")
    busy_note = " (the device stayed busy)" if c.retry and busy else ""
    raise _ERROR_CLASS[kind](f"{what}: {kind}{tail}{busy_note}: {type(last).__name__}: {last}",
                             attempts=attempt, last_error=last, errors=errors,
                             elapsed_s=elapsed, busy=busy) from last
