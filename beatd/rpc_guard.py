"""Who may call what on a device's gRPC server, how many calls at once, and for how long.

``RpcGuard(limits, open_methods, own_methods)`` is a ``grpc.ServerInterceptor`` wrapped around
every handler of the server (beat.v1.Interrogation, grpc.health.v1.Health, server reflection). At
the start of each call -- on the worker thread gRPC gives it, before the real handler runs -- it:

1. reads the peer's role from the client certificate of the TLS session (``beatd.certs``): a
   method outside ``open_methods`` needs the governance role, else PERMISSION_DENIED
   (``"ServerReflectionInfo needs the governance role; the client certificate has device:7"``);
2. counts the call: a peer (one client certificate) without the governance role may have
   ``max_peer_rpcs`` calls running, all of them together ``max_device_rpcs``, else
   RESOURCE_EXHAUSTED naming the peer's role, the count and the limit. The governance is not
   counted against these: the server's pool has ``max_device_rpcs`` workers more than the
   governance needs, so other certificates can never hold every worker;
3. records the call for the watchdog (``cancel_overdue``): a call running longer than
   ``max_call_s`` is cancelled (the client sees CANCELLED), except ``own_methods`` (the evidence
   answers: their servicer cancels them after ``max_stream_s``).

A refused call holds its worker only while it is refused (microseconds): it never reaches the
handler. A call's slot is given back when its worker is done with it (the handler returned, or
its response stream ended or was dropped), not merely when the RPC ended, so that a handler still
running after a cancellation keeps counting. Handlers that answer without a worker (gRPC's
non-blocking Health.Watch) give their slot back when the RPC ends.

The gRPC interceptor API gives no access to the TLS session before a worker is taken; that is why
the check runs first thing on the worker rather than on gRPC's polling thread.
"""
import hashlib
import itertools
import logging
import threading
import time
from functools import lru_cache

import grpc

from .certs import ROLE_GOVERNANCE, peer_role

__all__ = ["RpcGuard", "peer_of", "REASON_ROLE", "REASON_PEER", "REASON_DEVICES"]

log = logging.getLogger("beatd.interrogation")

REASON_ROLE = "role"                  # PERMISSION_DENIED: the method needs the governance role
REASON_PEER = "max_peer_rpcs"         # RESOURCE_EXHAUSTED: one certificate's calls
REASON_DEVICES = "max_device_rpcs"    # RESOURCE_EXHAUSTED: all non-governance calls together
CANCELLED_CALL = "max_call_s"         # cancelled by the watchdog
LOG_EVERY_S = 60.0                    # refusals of one peer are logged at most this often


@lru_cache(maxsize=256)
def _peer_of_pem(pem):
    role, why = peer_role(pem)
    return role, why, hashlib.sha256(pem).digest()


def peer_of(context):
    """``(role or None, description, key)`` of the client certificate of a call: ``key`` tells
    peers apart (SHA-256 of the certificate), ``description`` is the role ("governance",
    "device:7") or what the certificate has instead."""
    certs = context.auth_context().get("x509_pem_cert")
    if not certs:
        return None, "no client certificate", b""
    return _peer_of_pem(bytes(certs[0]))


class _Refused(Exception):
    def __init__(self, code, reason, message):
        super().__init__(message)
        self.code = code
        self.reason = reason


class _Call:
    __slots__ = ("sid", "method", "governance", "peer", "why", "context", "t0", "cancelled")

    def __init__(self, sid, method, governance, peer, why, context, t0):
        self.sid = sid
        self.method = method
        self.governance = governance
        self.peer = peer
        self.why = why
        self.context = context
        self.t0 = t0
        self.cancelled = False


def _short(method):
    return method.rsplit("/", 1)[-1]


class RpcGuard(grpc.ServerInterceptor):
    """See the module doc. ``limits``: ``beatd.interrogation.Limits`` (``max_peer_rpcs``,
    ``max_device_rpcs``, ``max_call_s``); ``open_methods``: full method names any certificate of
    the domain may call (``/grpc.health.v1.Health/Check``, ...); ``own_methods``: full method
    names the watchdog leaves to their servicer; ``clock``: monotonic seconds."""

    def __init__(self, limits, open_methods=(), own_methods=(), clock=time.monotonic):
        self.limits = limits
        self.open_methods = frozenset(open_methods)
        self.own_methods = frozenset(own_methods)
        self.clock = clock
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._calls = {}                   # sid -> _Call
        self._per_peer = {}                # certificate key -> calls running (non-governance)
        self._others = 0                   # non-governance calls running
        self._governance = 0               # governance calls running
        self.refused = {}                  # status code name -> count
        self.refused_reasons = {}          # REASON_* -> count
        self.cancelled = 0                 # calls cancelled after max_call_s
        self._logged = {}                  # certificate key -> (last logged, refusals since)

    # -- the interceptor --

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:                # unknown method: gRPC answers UNIMPLEMENTED
            return None
        return self._wrap(handler_call_details.method, handler)

    def _wrap(self, method, h):
        kw = dict(request_deserializer=h.request_deserializer,
                  response_serializer=h.response_serializer)
        if h.request_streaming and h.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(method, h.stream_stream), **kw)
        if h.request_streaming:
            return grpc.stream_unary_rpc_method_handler(self._unary(method, h.stream_unary), **kw)
        if h.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(method, h.unary_stream), **kw)
        return grpc.unary_unary_rpc_method_handler(self._unary(method, h.unary_unary), **kw)

    def _unary(self, method, behavior):
        def guarded(request, context):
            call = self._enter(method, context)
            try:
                return behavior(request, context)
            finally:
                self._leave(call)
        return guarded

    def _streaming(self, method, behavior):
        if getattr(behavior, "experimental_non_blocking", False):
            # answers from callbacks, holding no worker (gRPC's Health.Watch): the slot is
            # given back when the RPC ends
            def guarded_non_blocking(request, context, send_response_callback=None):
                call = self._enter(method, context)
                if not context.add_callback(lambda: self._leave(call)):
                    self._leave(call)                  # the RPC has already ended
                    return None
                return behavior(request, context, send_response_callback=send_response_callback)
            guarded_non_blocking.experimental_non_blocking = True
            guarded_non_blocking.experimental_thread_pool = getattr(
                behavior, "experimental_thread_pool", None)
            return guarded_non_blocking

        def guarded(request, context):
            call = self._enter(method, context)
            try:
                yield from behavior(request, context)
            finally:                       # also when gRPC drops the stream (GeneratorExit)
                self._leave(call)
        return guarded

    # -- counting --

    def _enter(self, method, context):
        role, why, peer = peer_of(context)
        governance = role is not None and role.kind == ROLE_GOVERNANCE
        try:
            if not governance and method not in self.open_methods:
                raise _Refused(grpc.StatusCode.PERMISSION_DENIED, REASON_ROLE,
                               f"{_short(method)} needs the governance role; the client "
                               f"certificate has {why}")
            lim = self.limits
            with self._lock:
                if governance:
                    self._governance += 1
                else:
                    n = self._per_peer.get(peer, 0)
                    if n >= lim.max_peer_rpcs:
                        raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, REASON_PEER,
                                       f"{n} calls of this client certificate ({why}) are "
                                       f"running: the device's max_peer_rpcs is "
                                       f"{lim.max_peer_rpcs}; retry later")
                    if self._others >= lim.max_device_rpcs:
                        raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, REASON_DEVICES,
                                       f"{self._others} calls of certificates without the "
                                       f"governance role are running (this one has {why}): the "
                                       f"device's max_device_rpcs is {lim.max_device_rpcs}; "
                                       "retry later")
                    self._per_peer[peer] = n + 1
                    self._others += 1
                call = _Call(next(self._ids), method, governance, peer, why, context, self.clock())
                self._calls[call.sid] = call
            return call
        except _Refused as exc:
            now = self.clock()
            with self._lock:
                self.refused[exc.code.name] = self.refused.get(exc.code.name, 0) + 1
                self.refused_reasons[exc.reason] = self.refused_reasons.get(exc.reason, 0) + 1
                last, since = self._logged.get(peer, (None, 0))
                if last is None or now - last >= LOG_EVERY_S:
                    self._logged[peer] = (now, 0)
                    if len(self._logged) > 4096:           # forget the quiet ones
                        self._logged = {k: v for k, v in self._logged.items()
                                        if now - v[0] < LOG_EVERY_S}
                else:
                    self._logged[peer] = (last, since + 1)
                    since = None
            if since is not None:          # a flood is logged once a minute per peer
                log.info("interrogation refused: %s: %s: %s%s", exc.code.name, method, exc,
                         f" ({since} more refusals of this certificate in the last "
                         f"{LOG_EVERY_S:g} s)" if since else "")
            context.abort(exc.code, str(exc))
            raise                          # not reached: abort raises

    def _leave(self, call):
        with self._lock:
            if self._calls.pop(call.sid, None) is None:
                return
            if call.governance:
                self._governance -= 1
                return
            n = self._per_peer[call.peer] - 1
            if n:
                self._per_peer[call.peer] = n
            else:
                del self._per_peer[call.peer]
            self._others -= 1

    # -- the watchdog --

    def cancel_overdue(self, now=None):
        """Cancel the calls (other than ``own_methods``) running longer than max_call_s;
        returns how many. Their slots come back when their workers are done with them."""
        now = self.clock() if now is None else now
        limit = self.limits.max_call_s
        with self._lock:
            overdue = [c for c in self._calls.values()
                       if not c.cancelled and c.method not in self.own_methods
                       and now - c.t0 > limit]
            for c in overdue:
                c.cancelled = True
            self.cancelled += len(overdue)
        for c in overdue:
            log.warning("interrogation: %s of %s ran longer than max_call_s %g s (%.1f s); "
                        "cancelled", _short(c.method), c.why, limit, now - c.t0)
            c.context.cancel()
        return len(overdue)

    def stats(self):
        with self._lock:
            return {"calls": {"governance": self._governance, "others": self._others},
                    "refused": dict(self.refused),
                    "refused_reasons": dict(self.refused_reasons),
                    "cancelled": self.cancelled}
