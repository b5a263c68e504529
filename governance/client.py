"""The governance's Interrogation client: asks one device for evidence and checks what comes back.

``InterrogationClient(endpoint, ca, cert, key, hash_name, node_id, pubkey, timeout)`` dials the
device over mutual TLS (the governance's certificate, role ``governance``; the device's certificate
checked against the domain's CA). Each evidence call picks a fresh random 16-byte nonce, computes
the request digest ``Q`` and checks every chunk with ``beat_rpc.evidence.AnswerReader``: the
Ed25519 signature with ``pubkey`` -- the key registered for ``node_id`` on the LEDGER, never one the
device reports -- then node_id, kind, ``Q``, chunk_seq 0, 1, 2, ... and that the last chunk arrived.

Proof segments answers end with the device's signed coverage (docs/interrogation.md, chunk kind
4): ``proof_answer(from_ns, to_ns, flow_tags)`` and ``get_segments(seg_seqs)`` return a
``SegmentsAnswer`` (``segments``, ``coverage``); ``proof_segments`` is ``proof_answer(...).segments``.

Caps: what one device may hand over through one client (one client per device per interrogation)
is bounded: ``max_answer_bytes`` of chunk bodies and ``max_answer_segments`` segments (in full, and
index entries), over all its answers. Beyond either, the answer is refused as the device's:
``AnswerTooLarge`` (an ``EvidenceError``). The defaults are above what a device with the default
limits can send (max_records 20,000,000 and max_index_entries 100,000): a governance that lowers
them, or devices that raise theirs, must keep them in that order.

It does not check ``S``, ``R``, the anchors or the coverage (governance/verify.py does, on the
returned ``Segment``/``Receipt``/``AnchorRef``/``Coverage``). Errors, for the verdict engine:

- ``EvidenceError`` subclasses (re-exported from ``beat_rpc.evidence``): ``BadSignature``,
  ``MalformedEvidence``, ``WrongAnswer`` (another node/kind/request, out of sequence or order),
  ``IncompleteAnswer`` (cut short): the device answered, but not with acceptable evidence;
- ``NodeUnreachable``: no answer (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, TLS handshake), also
  when it comes in the middle of an answer (``chunks``: how many had arrived);
- ``RequestRejected`` (``.code``, ``.details``): the device refused the request (INVALID_ARGUMENT,
  PERMISSION_DENIED, RESOURCE_EXHAUSTED, ...), and its subclass ``NoEvidence`` for NOT_FOUND (a
  device of the former format; ours answer an empty window with its signed coverage).

Every call takes ``timeout=`` (seconds; default the client's ``timeout``). ``governance/retry.py``
(``ask_with_retry``) retries the transient ones within a deadline and classifies the failures for
the judgement (unreachable, refused, incomplete, bad_evidence).
"""
import dataclasses
import os

import grpc

from fastpath.hashes import digest_function

from beat_rpc import evidence as ev
from beat_rpc import interrogation_pb2 as pb
from beat_rpc import interrogation_pb2_grpc as pb_grpc
from beat_rpc.evidence import (BadSignature, EvidenceError, IncompleteAnswer, MalformedEvidence,
                               WrongAnswer)

__all__ = ["InterrogationClient", "SegmentsAnswer", "ClientError", "NodeUnreachable",
           "RequestRejected", "NoEvidence", "WrongNode", "EvidenceError", "BadSignature",
           "MalformedEvidence", "WrongAnswer", "IncompleteAnswer", "AnswerTooLarge",
           "DEFAULT_TIMEOUT_S", "MAX_MESSAGE", "DEFAULT_MAX_ANSWER_BYTES",
           "DEFAULT_MAX_ANSWER_SEGMENTS"]

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_ANSWER_BYTES = 1280 << 20     # 20,000,000 records (915 MiB) + index + headers
DEFAULT_MAX_ANSWER_SEGMENTS = 250_000     # 100,000 in full + 100,000 index entries + audits
MAX_MESSAGE = 64 << 20          # a lone segment of 10^6 records is 48 MB
MAX_RECONNECT_BACKOFF_MS = 4000  # a device back after an outage is dialled again within ~4 s
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED)


class AnswerTooLarge(EvidenceError):
    """The device handed over more than the governance's cap for one device (bytes or
    segments): refused as the device's answer, not evidence."""


@dataclasses.dataclass
class SegmentsAnswer:
    """A checked segments answer: ``segments`` (``Segment``, in seg_seq order) and the signed
    ``coverage`` (``Coverage``) that ended it; what was asked (the window and flow tags of a
    GetProofSegments, or the seg_seqs of a GetSegments); ``chunks`` and ``bytes`` received."""
    segments: list
    coverage: ev.Coverage
    from_ns: int = 0
    to_ns: int = 0
    flow_tags: tuple = ()
    seg_seqs: tuple = ()
    chunks: int = 0
    bytes: int = 0


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
                 timeout=DEFAULT_TIMEOUT_S, server_name=None,
                 max_answer_bytes=DEFAULT_MAX_ANSWER_BYTES,
                 max_answer_segments=DEFAULT_MAX_ANSWER_SEGMENTS):
        pubkey = bytes(pubkey)
        if len(pubkey) != 32:
            raise ValueError(f"pubkey: {len(pubkey)} bytes, an Ed25519 public key is 32 (take it "
                             "from the ledger's registration of the node)")
        digest_function(hash_name)                       # ValueError for an unknown hash
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout: {timeout!r} must be more than 0 s")
        for name, v in (("max_answer_bytes", max_answer_bytes),
                        ("max_answer_segments", max_answer_segments)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: {v!r} must be an integer above 0")
        self.max_answer_bytes = max_answer_bytes
        self.max_answer_segments = max_answer_segments
        self._init_caps()
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

    def _init_caps(self):
        self.max_answer_bytes = getattr(self, "max_answer_bytes", DEFAULT_MAX_ANSWER_BYTES)
        self.max_answer_segments = getattr(self, "max_answer_segments",
                                           DEFAULT_MAX_ANSWER_SEGMENTS)
        self.received_bytes = 0          # chunk bodies received from this device, every answer
        self.received_segments = 0       # segments in full and index entries, every answer

    def _new_nonce(self):
        """A fresh random nonce for one request (an archived client gives the recorded ones)."""
        return os.urandom(ev.NONCE_SIZE)

    def record(self):
        """From now on keep every chunk answered (``governance.archive.Recorder``): returns the
        recorder, whose ``answers`` the evidence archive writes."""
        from .archive import Recorder
        if not isinstance(self.stub, Recorder):
            self.stub = Recorder(self.stub)
        return self.stub

    def close(self):
        if self.channel is not None:
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

    def _take(self, rpc, body):
        """Count a chunk against the caps (before it is checked or decoded)."""
        size = len(body)
        if self.received_bytes + size > self.max_answer_bytes:
            raise AnswerTooLarge(f"node {self.node_id} at {self.endpoint}: {rpc}: the device "
                                 f"sent {self.received_bytes + size} bytes, more than the "
                                 f"governance's max_answer_bytes {self.max_answer_bytes} for one "
                                 "device (its answer is refused)")
        n = 0
        if size >= ev.HEADER_SIZE:
            try:
                h = ev.decode_header(body)
                n = h.count if h.kind in (ev.KIND_SEGMENTS, ev.KIND_COVERAGE) else 0
            except EvidenceError:
                n = 0                          # open_chunk says what is wrong with it
        if self.received_segments + n > self.max_answer_segments:
            raise AnswerTooLarge(f"node {self.node_id} at {self.endpoint}: {rpc}: the device "
                                 f"sent {self.received_segments + n} segments and index "
                                 f"entries, more than the governance's max_answer_segments "
                                 f"{self.max_answer_segments} for one device (its answer is "
                                 "refused)")
        self.received_bytes += size
        self.received_segments += n
        return size

    def _stream(self, rpc, call, reader):
        items = []
        total = 0
        try:
            for chunk in call:
                try:
                    total += self._take(rpc, chunk.body)
                    items.extend(reader.feed(chunk.body, chunk.signature))
                except EvidenceError:
                    call.cancel()
                    raise
        except grpc.RpcError as exc:
            raise self._error(rpc, exc, reader.chunks) from None
        reader.finish()
        reader.bytes = total
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

    def proof_answer(self, from_ns, to_ns, flow_tags=(), timeout=None):
        """The whole proof segments with records in [from_ns, to_ns] (holding one of
        ``flow_tags`` when given), each with its anchor ref, and the signed coverage that ends
        the answer: a ``SegmentsAnswer``. An empty window is an answer too (no segment, the
        coverage)."""
        nonce = self._new_nonce()
        tags = ev.normalise_flow_tags(flow_tags)
        Q = ev.request_digest(self.hash_name, ev.KIND_SEGMENTS, from_ns, to_ns, tags, None, None,
                              nonce)
        req = pb.ProofSegmentsRequest(from_ns=from_ns, to_ns=to_ns, flow_tags=list(tags),
                                      nonce=nonce)
        call = self.stub.GetProofSegments(req, timeout=self._timeout(timeout))
        reader = ev.AnswerReader(self.pubkey, self.node_id, ev.KIND_SEGMENTS, Q)
        segments = self._stream("GetProofSegments", call, reader)
        return SegmentsAnswer(segments, reader.coverage, from_ns, to_ns, tags, (),
                              reader.chunks, reader.bytes)

    def proof_segments(self, from_ns, to_ns, flow_tags=(), timeout=None):
        """``proof_answer(...).segments``: ``list[Segment]``, seg_seq order."""
        return self.proof_answer(from_ns, to_ns, flow_tags, timeout).segments

    def get_segments(self, seg_seqs, timeout=None):
        """The segments named (GetSegments: an audit of index entries) in full, and the signed
        coverage of the ring after them (no index): a ``SegmentsAnswer``. A named segment the
        ring no longer holds is absent (the coverage's ``ring_oldest_seq`` says why);
        ``WrongAnswer`` for a segment that was not asked."""
        nonce = self._new_nonce()
        seqs = ev.normalise_seg_seqs(seg_seqs)
        Q = ev.segments_request_digest(self.hash_name, seqs, nonce)
        req = pb.SegmentsRequest(seg_seqs=list(seqs), nonce=nonce)
        call = self.stub.GetSegments(req, timeout=self._timeout(timeout))
        reader = ev.AnswerReader(self.pubkey, self.node_id, ev.KIND_SEGMENTS, Q)
        segments = self._stream("GetSegments", call, reader)
        asked = set(seqs)
        for sg in segments:
            if sg.seg_seq not in asked:
                raise WrongAnswer(f"node {self.node_id}: segment {sg.seg_seq} in the answer to "
                                  f"GetSegments {list(seqs)[:8]}{'...' if len(seqs) > 8 else ''}"
                                  ", which did not ask for it")
        if reader.coverage.index:
            raise WrongAnswer(f"node {self.node_id}: the coverage of a GetSegments answer has "
                              f"{len(reader.coverage.index)} index entries (it has none)")
        return SegmentsAnswer(segments, reader.coverage, seg_seqs=seqs, chunks=reader.chunks,
                              bytes=reader.bytes)

    def counter_report(self, timeout=None):
        """The device's packet counters, signed: ``list[Counter]`` by (prev_id, next_id)."""
        nonce = self._new_nonce()
        Q = ev.request_digest(self.hash_name, ev.KIND_COUNTERS, 0, 0, (), None, None, nonce)
        try:
            chunk = self.stub.GetCounterReport(pb.CounterReportRequest(nonce=nonce),
                                               timeout=self._timeout(timeout))
        except grpc.RpcError as exc:
            raise self._error("GetCounterReport", exc) from None
        reader = ev.AnswerReader(self.pubkey, self.node_id, ev.KIND_COUNTERS, Q)
        self._take("GetCounterReport", chunk.body)
        items = reader.feed(chunk.body, chunk.signature)
        reader.finish()
        return items

    def gap_records(self, from_ns, to_ns, timeout=None):
        """The device's gap records overlapping [from_ns, to_ns] (docs/gap-records.md), each
        with its anchor ref: ``list[GapRecord]``, sorted; WrongAnswer for one outside the window.
        A device without GetGapRecords refuses it (RequestRejected, UNIMPLEMENTED)."""
        nonce = self._new_nonce()
        Q = ev.request_digest(self.hash_name, ev.KIND_GAP_RECORDS, from_ns, to_ns, (), None,
                              None, nonce)
        req = pb.GapRecordsRequest(from_ns=from_ns, to_ns=to_ns, nonce=nonce)
        call = self.stub.GetGapRecords(req, timeout=self._timeout(timeout))
        reader = ev.AnswerReader(self.pubkey, self.node_id, ev.KIND_GAP_RECORDS, Q)
        items = self._stream("GetGapRecords", call, reader)
        for g in items:
            if not g.overlaps(from_ns, to_ns):
                raise WrongAnswer(f"node {self.node_id}: gap record [{g.from_ns}, {g.to_ns}] in "
                                  f"the answer for [{from_ns}, {to_ns}], which it does not meet")
        return items

    def receipts(self, from_ns, to_ns, src, dst, timeout=None):
        """The receipts of flow (src, dst) (16 bytes each) with epoch_ns in [from_ns, to_ns]:
        ``list[Receipt]`` by (epoch_ns, role); WrongAnswer for one of another flow. After
        ``hold``, a flow and window within the held answer are read from it (no request)."""
        held = self._held_receipts(from_ns, to_ns, src, dst)
        if held is not None:
            return held
        nonce = self._new_nonce()
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

    def receipts_of_flows(self, from_ns, to_ns, flows, timeout=None):
        """The receipts of every flow of ``flows`` (``(src, dst)``, 16 bytes each) with epoch_ns
        in [from_ns, to_ns], in ONE request (GetReceipts naming the flows, request kind 7):
        ``{(src, dst): [Receipt]}`` with every flow asked (``[]`` for none), each list by
        (epoch_ns, role). WrongAnswer for a receipt of a flow not asked or outside the window.

        A device that refuses the request as one of the former protocol (UNIMPLEMENTED, or
        INVALID_ARGUMENT on ``src``: it does not know ``flows`` and sees an empty src) is asked
        one flow at a time (``receipts``) instead; ``self.batched`` says which way it went."""
        flows = ev.normalise_flows(flows)
        if not flows:
            raise ValueError("flows: none given (receipts_of_flows asks for at least one flow)")
        nonce = self._new_nonce()
        Q = ev.flows_request_digest(self.hash_name, from_ns, to_ns, flows, nonce)
        req = pb.ReceiptsRequest(from_ns=from_ns, to_ns=to_ns, nonce=nonce,
                                 flows=[pb.Flow(src=f[:ev.ADDR_SIZE], dst=f[ev.ADDR_SIZE:])
                                        for f in flows])
        out = {(f[:ev.ADDR_SIZE], f[ev.ADDR_SIZE:]): [] for f in flows}
        try:
            call = self.stub.GetReceipts(req, timeout=self._timeout(timeout))
            reader = ev.AnswerReader(self.pubkey, self.node_id, ev.KIND_RECEIPTS, Q,
                                     by_flow=True)
            items = self._stream("GetReceipts", call, reader)
        except RequestRejected as exc:
            if not _former_device(exc):
                raise
            self.batched = False
            for key in out:
                out[key] = self.receipts(from_ns, to_ns, key[0], key[1], timeout=timeout)
            return out
        self.batched = True
        for r in items:
            got = out.get((r.src, r.dst))
            if got is None:
                raise WrongAnswer(f"node {self.node_id}: a receipt of flow {r.src.hex()} -> "
                                  f"{r.dst.hex()} (epoch_ns {r.epoch_ns}) in the answer for "
                                  f"{len(flows)} flows, which did not ask for it")
            if not from_ns <= r.epoch_ns <= to_ns:
                raise WrongAnswer(f"node {self.node_id}: a receipt of flow {r.src.hex()} -> "
                                  f"{r.dst.hex()} of epoch_ns {r.epoch_ns}, outside the window "
                                  f"[{from_ns}, {to_ns}] asked")
            got.append(r)
        return out

    def hold(self, from_ns, to_ns, flows, timeout=None):
        """``receipts_of_flows`` once, its checked answer kept: ``receipts(lo, hi, src, dst)``
        of one of these flows with [lo, hi] within [from_ns, to_ns] is then that flow's receipts
        of the held answer with epoch_ns in [lo, hi], without asking the device again (the
        service's round: one request per device, read once per SLA). Returns the answer."""
        got = self.receipts_of_flows(from_ns, to_ns, flows, timeout)
        self._held = (from_ns, to_ns, got)
        return got

    def _held_receipts(self, from_ns, to_ns, src, dst):
        held = getattr(self, "_held", None)
        if held is None:
            return None
        lo, hi, got = held
        rs = got.get((bytes(src), bytes(dst)))
        if rs is None or not lo <= from_ns <= to_ns <= hi:
            return None
        return [r for r in rs if from_ns <= r.epoch_ns <= to_ns]


def _former_device(exc):
    """A refusal of a receipts-of-flows request that one request per flow answers: a device of
    the former protocol (no GetReceipts: UNIMPLEMENTED; or it reads the request as one flow with
    an empty src), or one that takes fewer flows a request than were named (INVALID_ARGUMENT
    "flows: N given, at most M": its max_flows below the governance's; every SLA of an honest
    device unknown otherwise). A liar gains nothing: it can always refuse as a former device."""
    if exc.code == grpc.StatusCode.UNIMPLEMENTED:
        return True
    details = str(exc.details or "")
    return exc.code == grpc.StatusCode.INVALID_ARGUMENT and (
        details.startswith("src:") or (details.startswith("flows:") and "at most" in details))
