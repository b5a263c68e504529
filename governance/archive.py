"""The evidence archive of an interrogation: every signed chunk the devices answered, kept so that
anyone can re-check the decision later (``beatctl verify-decision``; docs/interrogation.md,
"The evidence archive").

A directory::

    manifest.json            what was asked, of whom, with which parameters (canonical JSON)
    node-<id>/<k>-<rpc>.bin  the chunks of one answer: (u32 length || body || signature(64))...

The manifest holds the SLA, the window, the judgement's parameters (f, margins, skew, hop delay,
receipt epoch), the topology and owners used, and per device its status, the error when it gave
no evidence, and for each answer the request (rpc, window, flow tags, src/dst or flows, seg_seqs,
nonce), the number of chunks and ``H`` of its file. The **evidence digest** recorded on the ledger is
``H(canonical manifest)``: it commits to every signed chunk through their files' digests.

Recording: ``Recorder`` wraps a live ``InterrogationClient``'s stub and keeps every chunk as it
arrives (one recording per attempt; the governance keeps the last). Replaying: ``ArchivedClient``
is an ``InterrogationClient`` whose stub answers from the archive and whose nonces are the
recorded ones, so the very same checks run again (signature with the key on the ledger, Q,
sequence, coverage, anchors, audit with the recorded seed).
"""
import json
import os
import struct

from fastpath.hashes import constructor

__all__ = ["FORMAT", "ArchiveError", "Recorder", "Archive", "ArchivedClient", "assemble",
           "write", "read", "from_blobs", "evidence_digest"]

FORMAT = "beat-evidence-v1"
SIGNATURE_SIZE = 64
_LEN = struct.Struct(">I")


class ArchiveError(Exception):
    """An archive that cannot be read or does not match its manifest; the message names the
    file and what is wrong."""


def _canonical(data):
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def evidence_digest(hash_name, manifest):
    """``H(canonical manifest)``: the evidence digest the ledger records (32 bytes)."""
    return constructor(hash_name)(_canonical(manifest)).digest()


class _Chunk:
    __slots__ = ("body", "signature")

    def __init__(self, body, signature):
        self.body, self.signature = body, signature


def _request(rpc, req):
    """The fields of a request that its Q binds (JSON-able)."""
    out = {"rpc": rpc, "nonce": bytes(req.nonce).hex()}
    for name in ("from_ns", "to_ns"):
        if hasattr(req, name):
            out[name] = int(getattr(req, name))
    if hasattr(req, "flow_tags"):
        out["flow_tags"] = [bytes(t).hex() for t in req.flow_tags]
    if hasattr(req, "seg_seqs"):
        out["seg_seqs"] = [int(s) for s in req.seg_seqs]
    for name in ("src", "dst"):
        if hasattr(req, name):
            out[name] = bytes(getattr(req, name)).hex()
    if len(getattr(req, "flows", ())):
        # a receipts-of-flows request (kind 7): its flows, src || dst, as sent
        out["flows"] = [(bytes(f.src) + bytes(f.dst)).hex() for f in req.flows]
    return out


class Recorder:
    """Wraps a gRPC stub: every evidence call is forwarded and every chunk it returns kept, in
    order (``answers``: ``[(request dict, [(body, signature)])]``)."""

    STREAMS = ("GetProofSegments", "GetSegments", "GetReceipts", "GetGapRecords")
    UNARY = ("GetCounterReport",)

    def __init__(self, stub):
        self._stub = stub
        self.answers = []

    def __getattr__(self, name):
        target = getattr(self._stub, name)
        if name in self.STREAMS:
            def stream(req, **kw):
                chunks = []
                self.answers.append((_request(name, req), chunks))
                return _RecordedCall(target(req, **kw), chunks)
            return stream
        if name in self.UNARY:
            def unary(req, **kw):
                c = target(req, **kw)
                self.answers.append((_request(name, req), [(bytes(c.body), bytes(c.signature))]))
                return c
            return unary
        return target


class _RecordedCall:
    """A live stream whose chunks are kept as they are read; ``cancel()`` cancels the call (the
    client does so on a chunk that fails its checks)."""

    def __init__(self, call, chunks):
        self._call, self._chunks = call, chunks

    def __iter__(self):
        for c in self._call:
            self._chunks.append((bytes(c.body), bytes(c.signature)))
            yield c

    def cancel(self):
        cancel = getattr(self._call, "cancel", None)
        if cancel is not None:
            cancel()


def assemble(manifest, recordings, hash_name):
    """``(manifest, {file name: blob})``: the manifest with every device's ``answers`` filled
    from ``recordings`` (``{node_id: [(request, [(body, signature)])]}``), one blob per answer."""
    H = constructor(hash_name)
    manifest = json.loads(json.dumps(manifest))
    blobs = {}
    for node, answers in sorted(recordings.items()):
        dev = manifest["devices"].setdefault(str(node), {})
        dev["answers"] = []
        for k, (request, chunks) in enumerate(answers):
            blob = b"".join(_LEN.pack(len(body)) + body + sig for body, sig in chunks)
            name = f"node-{node}/{k:03d}-{request['rpc']}.bin"
            blobs[name] = blob
            dev["answers"].append({"request": request, "file": name, "chunks": len(chunks),
                                   "digest": H(blob).hexdigest()})
    return manifest, blobs


def write(path, manifest, blobs):
    """Write an assembled archive to the directory ``path`` (created; an existing non-empty one
    is refused): the manifest and one file per answer."""
    if os.path.isdir(path) and os.listdir(path):
        raise ArchiveError(f"{path}: exists and is not empty; give a new directory")
    try:
        os.makedirs(path, exist_ok=True)
        for name, blob in blobs.items():
            os.makedirs(os.path.join(path, os.path.dirname(name)), exist_ok=True)
            with open(os.path.join(path, name), "wb") as f:
                f.write(blob)
        with open(os.path.join(path, "manifest.json"), "wb") as f:
            f.write(_canonical(manifest) + b"\n")
    except OSError as exc:
        raise ArchiveError(f"{path}: {exc.strerror or exc}") from None


class Archive:
    """A read archive: ``manifest``, ``digest`` (the evidence digest), ``answers(node)``:
    ``[(request, [_Chunk])]`` with every file's digest checked."""

    def __init__(self, path, manifest, chunks):
        self.path, self.manifest, self._chunks = path, manifest, chunks
        self.digest = evidence_digest(manifest["hash"], manifest)

    def answers(self, node):
        return self._chunks.get(node, [])


def read(path):
    """Read and check an archive: every file present, its digest the manifest's, its chunks
    whole. ``ArchiveError`` names what is wrong."""
    mpath = os.path.join(path, "manifest.json")
    try:
        with open(mpath, "rb") as f:
            manifest = json.loads(f.read())
    except OSError as exc:
        raise ArchiveError(f"{mpath}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ArchiveError(f"{mpath}: not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError(f"{mpath}: not a {FORMAT} manifest")
    try:
        H = constructor(manifest["hash"])
    except (KeyError, ValueError) as exc:
        raise ArchiveError(f"{mpath}: hash: {exc}") from None
    chunks = {}
    for node, dev in sorted(manifest.get("devices", {}).items()):
        out = chunks.setdefault(int(node), [])
        for a in dev.get("answers", []):
            fpath = os.path.join(path, a["file"])
            if os.path.normpath(a["file"]).startswith((os.sep, "..")):
                raise ArchiveError(f"{mpath}: {a['file']}: not a file of the archive")
            try:
                with open(fpath, "rb") as f:
                    blob = f.read()
            except OSError as exc:
                raise ArchiveError(f"{fpath}: {exc.strerror or exc}") from None
            if H(blob).hexdigest() != a["digest"]:
                raise ArchiveError(f"{fpath}: its digest is {H(blob).hexdigest()}, the manifest "
                                   f"says {a['digest']}")
            out.append((a["request"], _split(blob, fpath, a["chunks"])))
    return Archive(path, manifest, chunks)


def from_blobs(manifest, blobs, path="(in memory)"):
    """The ``Archive`` of an assembled manifest and its blobs (``assemble``), not written: the
    interrogation judges through it exactly as anyone judges the written one."""
    chunks = {}
    for node, dev in sorted(manifest.get("devices", {}).items()):
        out = chunks.setdefault(int(node), [])
        for a in dev.get("answers", []):
            out.append((a["request"], _split(blobs[a["file"]], a["file"], a["chunks"])))
    return Archive(path, manifest, chunks)


def _split(blob, where, expected):
    """The chunks of one answer file: ``(u32 length || body || signature)...``."""
    parts, off = [], 0
    while off < len(blob):
        if len(blob) - off < _LEN.size:
            raise ArchiveError(f"{where}: truncated at offset {off}")
        (n,) = _LEN.unpack_from(blob, off)
        off += _LEN.size
        if len(blob) - off < n + SIGNATURE_SIZE:
            raise ArchiveError(f"{where}: chunk at offset {off - 4} is truncated")
        parts.append(_Chunk(blob[off:off + n], blob[off + n:off + n + SIGNATURE_SIZE]))
        off += n + SIGNATURE_SIZE
    if len(parts) != expected:
        raise ArchiveError(f"{where}: {len(parts)} chunks, the manifest says {expected}")
    return parts


class NotRecorded(ArchiveError):
    """A call the archive has no answer to although the interrogation makes it (gap records):
    the archive is refused."""


class _ArchivedStub:
    """Answers a client's calls from one device's recorded answers, in the recorded order; a
    call that is not the next recorded one (another rpc or request) is refused."""

    def __init__(self, node, answers):
        self.node = node
        self._answers = list(answers)
        self._next = 0

    def _take(self, rpc, req):
        from .client import NodeUnreachable
        if rpc == "GetGapRecords" and (self._next >= len(self._answers) or
                                       self._answers[self._next][0]["rpc"] != rpc):
            raise NotRecorded(f"node {self.node}: archive: holds no gap records answer where "
                              "the interrogation asks for one: not judged (whoever recorded it "
                              "left the question out)")
        if self._next >= len(self._answers):
            raise NodeUnreachable(f"node {self.node}: archive: no recorded answer to {rpc}")
        request, chunks = self._answers[self._next]
        self._next += 1
        if request != _request(rpc, req):
            raise ArchiveError(f"node {self.node}: archive: the replay asks {_request(rpc, req)}"
                               f", the recorded answer was to {request}")
        return chunks

    def __getattr__(self, rpc):
        if rpc in Recorder.UNARY:
            return lambda req, **kw: self._take(rpc, req)[0]
        if rpc in Recorder.STREAMS:
            return lambda req, **kw: _Replay(self._take(rpc, req))
        raise AttributeError(rpc)


class _Replay:
    """A recorded stream, as a gRPC call the client can iterate and cancel."""

    def __init__(self, chunks):
        self._it = iter(chunks)

    def __iter__(self):
        return self._it

    def cancel(self):
        self._it = iter(())


def _recorded_nonces(answers):
    for request, _ in answers:
        yield bytes.fromhex(request["nonce"])


class ArchivedClient:
    """An ``InterrogationClient`` for one device that answers from an archive (see the module
    doc): the same checks as a live one, with the recorded nonces."""

    def __new__(cls, archive, node_id, hash_name, pubkey):
        from .client import InterrogationClient

        client = InterrogationClient.__new__(InterrogationClient)
        client.endpoint = f"archive {archive.path}"
        client.hash_name = hash_name
        client.node_id = node_id
        client.pubkey = bytes(pubkey)
        client.timeout = None
        client.channel = None
        answers = archive.answers(node_id)
        client.stub = _ArchivedStub(node_id, answers)
        nonces = _recorded_nonces(answers)
        client._new_nonce = lambda: next(nonces, bytes(16))
        client._init_caps()
        return client
