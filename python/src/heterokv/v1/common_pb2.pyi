from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ShardID(_message.Message):
    __slots__ = ("namespace", "sequence", "layer", "kv_head", "chunk")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KV_HEAD_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    namespace: int
    sequence: int
    layer: int
    kv_head: int
    chunk: int
    def __init__(self, namespace: _Optional[int] = ..., sequence: _Optional[int] = ..., layer: _Optional[int] = ..., kv_head: _Optional[int] = ..., chunk: _Optional[int] = ...) -> None: ...
