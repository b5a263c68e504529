from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Neighbour(_message.Message):
    __slots__ = ("node_id", "mac", "interface")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    mac: bytes
    interface: str
    def __init__(self, node_id: _Optional[int] = ..., mac: _Optional[bytes] = ..., interface: _Optional[str] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "hash", "public_key", "neighbours", "oldest_proof_t_ns", "newest_proof_t_ns", "threshold_ns", "version", "format_version", "ring_short", "now_ns", "anchored_until_t_ns")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    OLDEST_PROOF_T_NS_FIELD_NUMBER: _ClassVar[int]
    NEWEST_PROOF_T_NS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_NS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RING_SHORT_FIELD_NUMBER: _ClassVar[int]
    NOW_NS_FIELD_NUMBER: _ClassVar[int]
    ANCHORED_UNTIL_T_NS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    hash: str
    public_key: bytes
    neighbours: _containers.RepeatedCompositeFieldContainer[Neighbour]
    oldest_proof_t_ns: int
    newest_proof_t_ns: int
    threshold_ns: int
    version: str
    format_version: int
    ring_short: bool
    now_ns: int
    anchored_until_t_ns: int
    def __init__(self, node_id: _Optional[int] = ..., hash: _Optional[str] = ..., public_key: _Optional[bytes] = ..., neighbours: _Optional[_Iterable[_Union[Neighbour, _Mapping]]] = ..., oldest_proof_t_ns: _Optional[int] = ..., newest_proof_t_ns: _Optional[int] = ..., threshold_ns: _Optional[int] = ..., version: _Optional[str] = ..., format_version: _Optional[int] = ..., ring_short: _Optional[bool] = ..., now_ns: _Optional[int] = ..., anchored_until_t_ns: _Optional[int] = ...) -> None: ...

class ProofSegmentsRequest(_message.Message):
    __slots__ = ("from_ns", "to_ns", "flow_tags", "nonce")
    FROM_NS_FIELD_NUMBER: _ClassVar[int]
    TO_NS_FIELD_NUMBER: _ClassVar[int]
    FLOW_TAGS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    from_ns: int
    to_ns: int
    flow_tags: _containers.RepeatedScalarFieldContainer[bytes]
    nonce: bytes
    def __init__(self, from_ns: _Optional[int] = ..., to_ns: _Optional[int] = ..., flow_tags: _Optional[_Iterable[bytes]] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class SegmentsRequest(_message.Message):
    __slots__ = ("seg_seqs", "nonce")
    SEG_SEQS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    seg_seqs: _containers.RepeatedScalarFieldContainer[int]
    nonce: bytes
    def __init__(self, seg_seqs: _Optional[_Iterable[int]] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class CounterReportRequest(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class Flow(_message.Message):
    __slots__ = ("src", "dst")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    src: bytes
    dst: bytes
    def __init__(self, src: _Optional[bytes] = ..., dst: _Optional[bytes] = ...) -> None: ...

class ReceiptsRequest(_message.Message):
    __slots__ = ("from_ns", "to_ns", "src", "dst", "nonce", "flows")
    FROM_NS_FIELD_NUMBER: _ClassVar[int]
    TO_NS_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    from_ns: int
    to_ns: int
    src: bytes
    dst: bytes
    nonce: bytes
    flows: _containers.RepeatedCompositeFieldContainer[Flow]
    def __init__(self, from_ns: _Optional[int] = ..., to_ns: _Optional[int] = ..., src: _Optional[bytes] = ..., dst: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., flows: _Optional[_Iterable[_Union[Flow, _Mapping]]] = ...) -> None: ...

class GapRecordsRequest(_message.Message):
    __slots__ = ("from_ns", "to_ns", "nonce")
    FROM_NS_FIELD_NUMBER: _ClassVar[int]
    TO_NS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    from_ns: int
    to_ns: int
    nonce: bytes
    def __init__(self, from_ns: _Optional[int] = ..., to_ns: _Optional[int] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class SignedChunk(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...
