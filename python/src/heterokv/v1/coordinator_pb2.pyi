from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MemberRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEMBER_ROLE_UNSPECIFIED: _ClassVar[MemberRole]
    MEMBER_ROLE_MEMORY_NODE: _ClassVar[MemberRole]
    MEMBER_ROLE_WORKER: _ClassVar[MemberRole]
MEMBER_ROLE_UNSPECIFIED: MemberRole
MEMBER_ROLE_MEMORY_NODE: MemberRole
MEMBER_ROLE_WORKER: MemberRole

class RegisterRequest(_message.Message):
    __slots__ = ("member_id", "role", "data_address", "control_address", "capacity_bytes", "transport")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    role: MemberRole
    data_address: str
    control_address: str
    capacity_bytes: int
    transport: str
    def __init__(self, member_id: _Optional[str] = ..., role: _Optional[_Union[MemberRole, str]] = ..., data_address: _Optional[str] = ..., control_address: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., transport: _Optional[str] = ...) -> None: ...

class BudgetPolicy(_message.Message):
    __slots__ = ("policy", "memory_fraction", "min_tokens", "max_tokens", "full_head_cost", "stability_threshold", "similarity_threshold", "profile_interval_steps")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FULL_HEAD_COST_FIELD_NUMBER: _ClassVar[int]
    STABILITY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PROFILE_INTERVAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    policy: str
    memory_fraction: float
    min_tokens: int
    max_tokens: int
    full_head_cost: float
    stability_threshold: float
    similarity_threshold: float
    profile_interval_steps: int
    def __init__(self, policy: _Optional[str] = ..., memory_fraction: _Optional[float] = ..., min_tokens: _Optional[int] = ..., max_tokens: _Optional[int] = ..., full_head_cost: _Optional[float] = ..., stability_threshold: _Optional[float] = ..., similarity_threshold: _Optional[float] = ..., profile_interval_steps: _Optional[int] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("incarnation", "lease_seconds", "heartbeat_seconds", "cluster", "policy", "replication")
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FIELD_NUMBER: _ClassVar[int]
    incarnation: int
    lease_seconds: float
    heartbeat_seconds: float
    cluster: str
    policy: BudgetPolicy
    replication: int
    def __init__(self, incarnation: _Optional[int] = ..., lease_seconds: _Optional[float] = ..., heartbeat_seconds: _Optional[float] = ..., cluster: _Optional[str] = ..., policy: _Optional[_Union[BudgetPolicy, _Mapping]] = ..., replication: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("member_id", "incarnation", "used_bytes")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    incarnation: int
    used_bytes: int
    def __init__(self, member_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., used_bytes: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class SequenceRef(_message.Message):
    __slots__ = ("namespace", "sequence")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    namespace: int
    sequence: int
    def __init__(self, namespace: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class OpenSequenceRequest(_message.Message):
    __slots__ = ("ref", "worker_id", "max_tokens")
    REF_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ref: SequenceRef
    worker_id: str
    max_tokens: int
    def __init__(self, ref: _Optional[_Union[SequenceRef, _Mapping]] = ..., worker_id: _Optional[str] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class PlacementNode(_message.Message):
    __slots__ = ("node_id", "data_address", "transport", "weight")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    data_address: str
    transport: str
    weight: float
    def __init__(self, node_id: _Optional[str] = ..., data_address: _Optional[str] = ..., transport: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class SequencePlacement(_message.Message):
    __slots__ = ("ref", "version", "replication", "nodes", "departed", "reserved_bytes")
    REF_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    DEPARTED_FIELD_NUMBER: _ClassVar[int]
    RESERVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    ref: SequenceRef
    version: int
    replication: int
    nodes: _containers.RepeatedCompositeFieldContainer[PlacementNode]
    departed: _containers.RepeatedScalarFieldContainer[str]
    reserved_bytes: int
    def __init__(self, ref: _Optional[_Union[SequenceRef, _Mapping]] = ..., version: _Optional[int] = ..., replication: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[PlacementNode, _Mapping]]] = ..., departed: _Optional[_Iterable[str]] = ..., reserved_bytes: _Optional[int] = ...) -> None: ...

class HeadProfileReport(_message.Message):
    __slots__ = ("layer", "kv_head", "stability", "similarity", "role", "pivot")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KV_HEAD_FIELD_NUMBER: _ClassVar[int]
    STABILITY_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PIVOT_FIELD_NUMBER: _ClassVar[int]
    layer: int
    kv_head: int
    stability: float
    similarity: _containers.RepeatedScalarFieldContainer[float]
    role: str
    pivot: int
    def __init__(self, layer: _Optional[int] = ..., kv_head: _Optional[int] = ..., stability: _Optional[float] = ..., similarity: _Optional[_Iterable[float]] = ..., role: _Optional[str] = ..., pivot: _Optional[int] = ...) -> None: ...

class ReportProfilesRequest(_message.Message):
    __slots__ = ("ref", "prefill_tokens", "heads")
    REF_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    ref: SequenceRef
    prefill_tokens: int
    heads: _containers.RepeatedCompositeFieldContainer[HeadProfileReport]
    def __init__(self, ref: _Optional[_Union[SequenceRef, _Mapping]] = ..., prefill_tokens: _Optional[int] = ..., heads: _Optional[_Iterable[_Union[HeadProfileReport, _Mapping]]] = ...) -> None: ...

class HeadBudgetEntry(_message.Message):
    __slots__ = ("layer", "kv_head", "role", "pivot", "stability", "similarity", "cap")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KV_HEAD_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PIVOT_FIELD_NUMBER: _ClassVar[int]
    STABILITY_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    layer: int
    kv_head: int
    role: str
    pivot: int
    stability: float
    similarity: float
    cap: int
    def __init__(self, layer: _Optional[int] = ..., kv_head: _Optional[int] = ..., role: _Optional[str] = ..., pivot: _Optional[int] = ..., stability: _Optional[float] = ..., similarity: _Optional[float] = ..., cap: _Optional[int] = ...) -> None: ...

class SequenceBudgets(_message.Message):
    __slots__ = ("ref", "policy", "prefill_tokens", "total_tokens", "heads")
    REF_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    ref: SequenceRef
    policy: str
    prefill_tokens: int
    total_tokens: int
    heads: _containers.RepeatedCompositeFieldContainer[HeadBudgetEntry]
    def __init__(self, ref: _Optional[_Union[SequenceRef, _Mapping]] = ..., policy: _Optional[str] = ..., prefill_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., heads: _Optional[_Iterable[_Union[HeadBudgetEntry, _Mapping]]] = ...) -> None: ...

class GetBudgetsRequest(_message.Message):
    __slots__ = ("ref", "layer")
    REF_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    ref: SequenceRef
    layer: int
    def __init__(self, ref: _Optional[_Union[SequenceRef, _Mapping]] = ..., layer: _Optional[int] = ...) -> None: ...

class GetBudgetsResponse(_message.Message):
    __slots__ = ("sequences",)
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[SequenceBudgets]
    def __init__(self, sequences: _Optional[_Iterable[_Union[SequenceBudgets, _Mapping]]] = ...) -> None: ...

class ReleaseSequenceRequest(_message.Message):
    __slots__ = ("ref", "undropped_nodes")
    REF_FIELD_NUMBER: _ClassVar[int]
    UNDROPPED_NODES_FIELD_NUMBER: _ClassVar[int]
    ref: SequenceRef
    undropped_nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ref: _Optional[_Union[SequenceRef, _Mapping]] = ..., undropped_nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class CloseSequenceResponse(_message.Message):
    __slots__ = ("released_bytes",)
    RELEASED_BYTES_FIELD_NUMBER: _ClassVar[int]
    released_bytes: int
    def __init__(self, released_bytes: _Optional[int] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MemberInfo(_message.Message):
    __slots__ = ("member_id", "role", "data_address", "control_address", "capacity_bytes", "used_bytes", "status", "incarnation", "lease_remaining_seconds", "transport")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    LEASE_REMAINING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    role: MemberRole
    data_address: str
    control_address: str
    capacity_bytes: int
    used_bytes: int
    status: str
    incarnation: int
    lease_remaining_seconds: float
    transport: str
    def __init__(self, member_id: _Optional[str] = ..., role: _Optional[_Union[MemberRole, str]] = ..., data_address: _Optional[str] = ..., control_address: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., status: _Optional[str] = ..., incarnation: _Optional[int] = ..., lease_remaining_seconds: _Optional[float] = ..., transport: _Optional[str] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[MemberInfo]
    def __init__(self, members: _Optional[_Iterable[_Union[MemberInfo, _Mapping]]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicationReport(_message.Message):
    __slots__ = ("ref", "placement_version", "under_replicated_shards", "shards_copied", "bytes_copied")
    REF_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNDER_REPLICATED_SHARDS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_COPIED_FIELD_NUMBER: _ClassVar[int]
    BYTES_COPIED_FIELD_NUMBER: _ClassVar[int]
    ref: SequenceRef
    placement_version: int
    under_replicated_shards: int
    shards_copied: int
    bytes_copied: int
    def __init__(self, ref: _Optional[_Union[SequenceRef, _Mapping]] = ..., placement_version: _Optional[int] = ..., under_replicated_shards: _Optional[int] = ..., shards_copied: _Optional[int] = ..., bytes_copied: _Optional[int] = ...) -> None: ...

class ReplicationReportResponse(_message.Message):
    __slots__ = ("placement_version",)
    PLACEMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    placement_version: int
    def __init__(self, placement_version: _Optional[int] = ...) -> None: ...

class SequenceSummary(_message.Message):
    __slots__ = ("ref", "worker_id", "max_tokens", "prefill_tokens", "placement_version", "reserved_bytes", "head_count", "repaired_version", "under_replicated_shards", "shards_copied")
    REF_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESERVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    HEAD_COUNT_FIELD_NUMBER: _ClassVar[int]
    REPAIRED_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNDER_REPLICATED_SHARDS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_COPIED_FIELD_NUMBER: _ClassVar[int]
    ref: SequenceRef
    worker_id: str
    max_tokens: int
    prefill_tokens: int
    placement_version: int
    reserved_bytes: int
    head_count: int
    repaired_version: int
    under_replicated_shards: int
    shards_copied: int
    def __init__(self, ref: _Optional[_Union[SequenceRef, _Mapping]] = ..., worker_id: _Optional[str] = ..., max_tokens: _Optional[int] = ..., prefill_tokens: _Optional[int] = ..., placement_version: _Optional[int] = ..., reserved_bytes: _Optional[int] = ..., head_count: _Optional[int] = ..., repaired_version: _Optional[int] = ..., under_replicated_shards: _Optional[int] = ..., shards_copied: _Optional[int] = ...) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("cluster", "capacity_bytes", "used_bytes", "reserved_bytes", "nodes_up", "nodes_down", "workers_up", "sequences", "replication", "policy", "sequences_awaiting_drop", "store", "leader", "replicas")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESERVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    NODES_UP_FIELD_NUMBER: _ClassVar[int]
    NODES_DOWN_FIELD_NUMBER: _ClassVar[int]
    WORKERS_UP_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_AWAITING_DROP_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    capacity_bytes: int
    used_bytes: int
    reserved_bytes: int
    nodes_up: int
    nodes_down: int
    workers_up: int
    sequences: _containers.RepeatedCompositeFieldContainer[SequenceSummary]
    replication: int
    policy: str
    sequences_awaiting_drop: int
    store: str
    leader: str
    replicas: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cluster: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., reserved_bytes: _Optional[int] = ..., nodes_up: _Optional[int] = ..., nodes_down: _Optional[int] = ..., workers_up: _Optional[int] = ..., sequences: _Optional[_Iterable[_Union[SequenceSummary, _Mapping]]] = ..., replication: _Optional[int] = ..., policy: _Optional[str] = ..., sequences_awaiting_drop: _Optional[int] = ..., store: _Optional[str] = ..., leader: _Optional[str] = ..., replicas: _Optional[_Iterable[str]] = ...) -> None: ...
