from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Usage(_message.Message):
    __slots__ = ("pairs", "tokens", "truncated", "queue_seconds", "inference_seconds", "total_seconds", "windows")
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    pairs: int
    tokens: int
    truncated: int
    queue_seconds: float
    inference_seconds: float
    total_seconds: float
    windows: int
    def __init__(self, pairs: _Optional[int] = ..., tokens: _Optional[int] = ..., truncated: _Optional[int] = ..., queue_seconds: _Optional[float] = ..., inference_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ..., windows: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "kind", "device", "max_seq_length", "source", "dimension", "dtype", "precision", "backend", "parameter_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    device: str
    max_seq_length: int
    source: str
    dimension: int
    dtype: str
    precision: str
    backend: str
    parameter_bytes: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., device: _Optional[str] = ..., max_seq_length: _Optional[int] = ..., source: _Optional[str] = ..., dimension: _Optional[int] = ..., dtype: _Optional[str] = ..., precision: _Optional[str] = ..., backend: _Optional[str] = ..., parameter_bytes: _Optional[int] = ...) -> None: ...
