"""The governance's Interrogation client: asks one device for evidence and checks what comes back.

``InterrogationClient(endpoint, ca, cert, key, hash_name, node_id, pubkey, timeout)`` dials the
device over mutual TLS (the governance's certificate, role ``governance``; the device's certificate
checked against the domain's CA). Each evidence call picks a fresh random 16-byte nonce, computes
the request digest ``Q`` and checks every chunk with ``beat_rpc.evidence.AnswerReader``: the
Ed25519 signature with ``pubkey`` -- the key registered for ``node_id`` on the LEDGER, never one the
device reports -- then node_id, kind, ``Q``, chunk_seq 0, 1, 2, ... and that the last chunk arrived.

It does not check ``S``, ``R`` or the anchors (governance/verify.py does, on the returned
``Segment``/``Receipt``/``AnchorRef``). Errors, for the verdict engine:

- ``EvidenceError`` subclasses (re-exported from ``beat_rpc.evidence``): ``BadSignature``,
  ``MalformedEvidence``, ``WrongAnswer`` (another node/kind/request, out of sequence or order),
  ``IncompleteAnswer`` (cut short): the device answered, but not with acceptable evidence;
- ``NodeUnreachable``: no answer (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, TLS handshake), also
  when it comes in the middle of an answer (``chunks``: how many had arrived);
- ``RequestRejected`` (``.code``, ``.details``): the device refused the request (INVALID_ARGUMENT,
  PERMISSION_DENIED, RESOURCE_EXHAUSTED, ...), and its subclass ``NoEvidence`` for NOT_FOUND (none
  of the flow tags occurs in the window).

Every call takes ``timeout=`` (seconds; default the client's ``timeout``). ``governance/retry.py``
(``ask_with_retry``) retries the transient ones within a deadline and classifies the failures for
the judgement (unreachable, refused, incomplete, bad_evidence).
"""
import os

import grpc

from fastpath.hashes import digest_function

from beat_rpc import evidence as ev
from beat_rpc import interrogation_pb2 as pb
from beat_rpc import interrogation_pb2_grpc as pb_grpc
from beat_rpc.evidence import (BadSignature, EvidenceError, IncompleteAnswer, MalformedEvidence,
                               WrongAnswer)

__all__ = ["InterrogationClient", "ClientError", "NodeUnreachable", "RequestRejected",
           "NoEvidence", "WrongNode", "EvidenceError", "BadSignature", "MalformedEvidence",
           "WrongAnswer", "IncompleteAnswer", "DEFAULT_TIMEOUT_S", "MAX_MESSAGE"]

DEFAULT_TIMEOUT_S = 60.0
MAX_MESSAGE = 64 << 20          # a lone segment of 10^6 records is 48 MB
MAX_RECONNECT_BACKOFF_MS = 4000  # a device back after an outage is dialled again within ~4 s
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED)


class ClientError(Exception):
    """The interrogation of a device failed without evidence to judge (see the module doc)."""


class NodeUnreachable(ClientError):
    """No answer from the device: ``code`` the gRPC status (UNAVAILABLE, DEADLINE_EXCEEDED,
    CANCELLED; UNAVAILABLE also when the device cannot read its store) and its ``details``;
    ``chunks``: the checked chunks of the answer that had arrived before (0: none)."""

    def __init__(self, message, code=None, details=None, chunks=0):
        super().__init__(message)
        self.code = code
        self.details = details
        self.chunks = chunks


class RequestRejected(ClientError):
    """The device refused the request: ``code`` (grpc.StatusCode) and its ``details``."""

    def __init__(self, message, code, details):
        super().__init__(message)
        self.code = code
        self.details = details


class NoEvidence(RequestRejected):
    """NOT_FOUND: none of the flow tags occurs in the window's segments."""


class WrongNode(ClientError):
    """GetNodeInfo answered for another node_id than the one dialled."""


def _pem(value, what):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    try:
        with open(os.fspath(value), "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f'{what}: "{os.fspath(value)}": cannot read: '
                         f"{exc.strerror or exc}") from None


class InterrogationClient:
    """One device's Interrogation service (see the module doc). ``ca``, ``cert``, ``key``: PEM
    file paths (or the PEM bytes); ``server_name``: the name to check the device's certificate
    for when it differs from the endpoint's host."""

    def __init__(self, endpoint, ca, cert, key, hash_name, node_id, pubkey,
                 timeout=DEFAULT_TIMEOUT_S, server_name=None):
        pubkey = bytes(pubkey)
        if len(pubkey) != 32:
            raise ValueError(f"pubkey: {len(pubkey)} bytes, an Ed25519 public key is 32 (take it "
                             "from the ledger's registration of the node)")
        digest_function(hash_name)                       # ValueError for an unknown hash
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout: {timeout!r} must be more than 0 s")
        self.endpoint = endpoint
        self.hash_name = hash_name
        self.node_id = node_id
        self.pubkey = pubkey
        self.timeout = timeout
        creds = grpc.ssl_channel_credentials(_pem(ca, "ca"), _pem(key, "key"), _pem(cert, "cert"))
        options = [("grpc.max_receive_message_length", MAX_MESSAGE),
                   ("grpc.max_send_message_length", 1 << 20),
                   ("grpc.initial_reconnect_backoff_ms", 500),
                   ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self.channel = grpc.secure_channel(endpoint, creds, options=options)
        self.stub = pb_grpc.InterrogationStub(self.channel)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- errors --

    def _error(self, rpc, exc, chunks=0):
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        where = f"node {self.node_id} at {self.endpoint}: {rpc}"
        if code in _UNREACHABLE or code is None:
            name = code.name if code is not None else "error"
            after = f" (after {chunks} chunks of the answer)" if chunks else ""
            return NodeUnreachable(f"{where}: {name}{after}: {details}", code, details, chunks)
        if code == grpc.StatusCode.NOT_FOUND:
            return NoEvidence(f"{where}: NOT_FOUND: {details}", code, details)
        return RequestRejected(f"{where}: {code.name}: {details}", code, details)

    def _stream(self, rpc, call, reader):
        items = []
        try:
            for chunk in call:
                try:
                    items.extend(reader.feed(chunk.body, chunk.signature))
                except EvidenceError:
                    call.cancel()
                    raise
        except grpc.RpcError as exc:
            raise self._error(rpc, exc, reader.chunks) from None
        reader.finish()
        return items

    def _timeout(self, timeout):
        return self.timeout if timeout is None else timeout

    # -- calls --

    def node_info(self, timeout=None):
        """The device's NodeInfo (unsigned, not evidence); WrongNode when it names another
        node_id than the one dialled."""
        try:
            info = self.stub.GetNodeInfo(pb.NodeInfoRequest(), timeout=self._timeout(timeout))
        except grpc.RpcError as exc:
            raise self._error("GetNodeInfo", exc) from None
        if info.node_id != self.node_id:
            raise WrongNode(f"{self.endpoint}: answers as node {info.node_id}, dialled as node "
                            f"{self.node_id}")
        return info

    def proof_segments(self, from_ns, to_ns, flow_tags=(), timeout=None):
        """The whole proof segments with records in [from_ns, to_ns] (holding one of
        ``flow_tags`` when given), each with its anchor ref: ``list[Segment]``, seg_seq order."""
        nonce = os.urandom(ev.NONCE_SIZE)
        tags = ev.normalise_flow_tags(flow_tags)
        Q = ev.request_digest(self.hash_name, ev.KIND_SEGMENTS, from_ns, to_ns, tags, None, None,
                              nonce)
        req = pb.ProofSegmentsRequest(from_ns=from_ns, to_ns=to_ns, flow_tags=list(tags),
                                      nonce=nonce)
        call = self.stub.GetProofSegments(req, timeout=self._timeout(timeout))
        reader = ev.AnswerReader(self.pubkey, self.node_id, ev.KIND_SEGMENTS, Q)
        return self._stream("GetProofSegments", call, reader)

    def counter_report(self, timeout=None):
        """The device's packet counters, signed: ``list[Counter]`` by (prev_id, next_id)."""
        nonce = os.urandom(ev.NONCE_SIZE)
        Q = ev.request_digest(self.hash_name, ev.KIND_COUNTERS, 0, 0, (), None, None, nonce)
        try:
            chunk = self.stub.GetCounterReport(pb.CounterReportRequest(nonce=nonce),
                                               timeout=self._timeout(timeout))
        except grpc.RpcError as exc:
            raise self._error("GetCounterReport", exc) from None
        reader = ev.AnswerReader(self.pubkey, self.node_id, ev.KIND_COUNTERS, Q)
        items = reader.feed(chunk.body, chunk.signature)
        reader.finish()
        return items

    def receipts(self, from_ns, to_ns, src, dst, timeout=None):
        """The receipts of flow (src, dst) (16 bytes each) with epoch_ns in [from_ns, to_ns]:
        ``list[Receipt]`` by (epoch_ns, role); WrongAnswer for one of another flow."""
        nonce = os.urandom(ev.NONCE_SIZE)
        Q = ev.request_digest(self.hash_name, ev.KIND_RECEIPTS, from_ns, to_ns, (), src, dst,
                              nonce)
        req = pb.ReceiptsRequest(from_ns=from_ns, to_ns=to_ns, src=bytes(src), dst=bytes(dst),
                                 nonce=nonce)
        call = self.stub.GetReceipts(req, timeout=self._timeout(timeout))
        reader = ev.AnswerReader(self.pubkey, self.node_id, ev.KIND_RECEIPTS, Q)
        items = self._stream("GetReceipts", call, reader)
        for r in items:
            if r.src != bytes(src) or r.dst != bytes(dst):
                raise WrongAnswer(f"node {self.node_id}: a receipt of flow {r.src.hex()} -> "
                                  f"{r.dst.hex()} (epoch_ns {r.epoch_ns}) in the answer for "
                                  f"{bytes(src).hex()} -> {bytes(dst).hex()}")
        return items
