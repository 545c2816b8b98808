from heterokv.v1 import coordinator_pb2 as _coordinator_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateSequenceRequest(_message.Message):
    __slots__ = ("ref", "max_tokens", "profiles")
    REF_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    ref: _coordinator_pb2.SequenceRef
    max_tokens: int
    profiles: _containers.RepeatedCompositeFieldContainer[_coordinator_pb2.HeadProfileReport]
    def __init__(self, ref: _Optional[_Union[_coordinator_pb2.SequenceRef, _Mapping]] = ..., max_tokens: _Optional[int] = ..., profiles: _Optional[_Iterable[_Union[_coordinator_pb2.HeadProfileReport, _Mapping]]] = ...) -> None: ...

class SequenceInfo(_message.Message):
    __slots__ = ("ref", "model", "layers", "query_heads", "kv_heads", "head_dim", "placement_version", "nodes", "replication")
    REF_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    QUERY_HEADS_FIELD_NUMBER: _ClassVar[int]
    KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FIELD_NUMBER: _ClassVar[int]
    ref: _coordinator_pb2.SequenceRef
    model: str
    layers: int
    query_heads: int
    kv_heads: int
    head_dim: int
    placement_version: int
    nodes: _containers.RepeatedScalarFieldContainer[str]
    replication: int
    def __init__(self, ref: _Optional[_Union[_coordinator_pb2.SequenceRef, _Mapping]] = ..., model: _Optional[str] = ..., layers: _Optional[int] = ..., query_heads: _Optional[int] = ..., kv_heads: _Optional[int] = ..., head_dim: _Optional[int] = ..., placement_version: _Optional[int] = ..., nodes: _Optional[_Iterable[str]] = ..., replication: _Optional[int] = ...) -> None: ...

class AppendRequest(_message.Message):
    __slots__ = ("ref", "layer", "tokens", "keys", "values", "observation_rows", "observation_queries")
    REF_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_ROWS_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_QUERIES_FIELD_NUMBER: _ClassVar[int]
    ref: _coordinator_pb2.SequenceRef
    layer: int
    tokens: int
    keys: bytes
    values: bytes
    observation_rows: int
    observation_queries: bytes
    def __init__(self, ref: _Optional[_Union[_coordinator_pb2.SequenceRef, _Mapping]] = ..., layer: _Optional[int] = ..., tokens: _Optional[int] = ..., keys: _Optional[bytes] = ..., values: _Optional[bytes] = ..., observation_rows: _Optional[int] = ..., observation_queries: _Optional[bytes] = ...) -> None: ...

class AppendResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: int
    def __init__(self, tokens: _Optional[int] = ...) -> None: ...

class AttendRequest(_message.Message):
    __slots__ = ("ref", "layer", "queries", "with_selection")
    REF_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    WITH_SELECTION_FIELD_NUMBER: _ClassVar[int]
    ref: _coordinator_pb2.SequenceRef
    layer: int
    queries: bytes
    with_selection: bool
    def __init__(self, ref: _Optional[_Union[_coordinator_pb2.SequenceRef, _Mapping]] = ..., layer: _Optional[int] = ..., queries: _Optional[bytes] = ..., with_selection: _Optional[bool] = ...) -> None: ...

class TokenSelection(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, tokens: _Optional[_Iterable[int]] = ...) -> None: ...

class AttendResponse(_message.Message):
    __slots__ = ("output", "selections", "bytes_moved")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SELECTIONS_FIELD_NUMBER: _ClassVar[int]
    BYTES_MOVED_FIELD_NUMBER: _ClassVar[int]
    output: bytes
    selections: _containers.RepeatedCompositeFieldContainer[TokenSelection]
    bytes_moved: int
    def __init__(self, output: _Optional[bytes] = ..., selections: _Optional[_Iterable[_Union[TokenSelection, _Mapping]]] = ..., bytes_moved: _Optional[int] = ...) -> None: ...

class AppendAttendRequest(_message.Message):
    __slots__ = ("append", "attend")
    APPEND_FIELD_NUMBER: _ClassVar[int]
    ATTEND_FIELD_NUMBER: _ClassVar[int]
    append: AppendRequest
    attend: AttendRequest
    def __init__(self, append: _Optional[_Union[AppendRequest, _Mapping]] = ..., attend: _Optional[_Union[AttendRequest, _Mapping]] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released_bytes",)
    RELEASED_BYTES_FIELD_NUMBER: _ClassVar[int]
    released_bytes: int
    def __init__(self, released_bytes: _Optional[int] = ...) -> None: ...

class HeadStats(_message.Message):
    __slots__ = ("layer", "kv_head", "role", "cap", "resident_bytes", "pivot")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KV_HEAD_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIVOT_FIELD_NUMBER: _ClassVar[int]
    layer: int
    kv_head: int
    role: str
    cap: int
    resident_bytes: int
    pivot: int
    def __init__(self, layer: _Optional[int] = ..., kv_head: _Optional[int] = ..., role: _Optional[str] = ..., cap: _Optional[int] = ..., resident_bytes: _Optional[int] = ..., pivot: _Optional[int] = ...) -> None: ...

class SequenceStats(_message.Message):
    __slots__ = ("ref", "tokens", "policy", "worker_bytes", "memory_tier_bytes", "full_kv_bytes", "decode_steps", "bytes_moved", "refreshes", "failovers", "heads", "unshipped_rows", "stored_rows", "kept_tokens", "context_tokens", "decode_bytes_moved", "under_replicated_shards", "prefill_tokens")
    REF_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    WORKER_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TIER_BYTES_FIELD_NUMBER: _ClassVar[int]
    FULL_KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    DECODE_STEPS_FIELD_NUMBER: _ClassVar[int]
    BYTES_MOVED_FIELD_NUMBER: _ClassVar[int]
    REFRESHES_FIELD_NUMBER: _ClassVar[int]
    FAILOVERS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    UNSHIPPED_ROWS_FIELD_NUMBER: _ClassVar[int]
    STORED_ROWS_FIELD_NUMBER: _ClassVar[int]
    KEPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DECODE_BYTES_MOVED_FIELD_NUMBER: _ClassVar[int]
    UNDER_REPLICATED_SHARDS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ref: _coordinator_pb2.SequenceRef
    tokens: int
    policy: str
    worker_bytes: int
    memory_tier_bytes: int
    full_kv_bytes: int
    decode_steps: int
    bytes_moved: int
    refreshes: int
    failovers: int
    heads: _containers.RepeatedCompositeFieldContainer[HeadStats]
    unshipped_rows: int
    stored_rows: int
    kept_tokens: int
    context_tokens: int
    decode_bytes_moved: int
    under_replicated_shards: int
    prefill_tokens: int
    def __init__(self, ref: _Optional[_Union[_coordinator_pb2.SequenceRef, _Mapping]] = ..., tokens: _Optional[int] = ..., policy: _Optional[str] = ..., worker_bytes: _Optional[int] = ..., memory_tier_bytes: _Optional[int] = ..., full_kv_bytes: _Optional[int] = ..., decode_steps: _Optional[int] = ..., bytes_moved: _Optional[int] = ..., refreshes: _Optional[int] = ..., failovers: _Optional[int] = ..., heads: _Optional[_Iterable[_Union[HeadStats, _Mapping]]] = ..., unshipped_rows: _Optional[int] = ..., stored_rows: _Optional[int] = ..., kept_tokens: _Optional[int] = ..., context_tokens: _Optional[int] = ..., decode_bytes_moved: _Optional[int] = ..., under_replicated_shards: _Optional[int] = ..., prefill_tokens: _Optional[int] = ...) -> None: ...
