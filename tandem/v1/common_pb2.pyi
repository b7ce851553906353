from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

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
    __slots__ = ("name", "kind", "device", "max_seq_length", "source", "dimension", "dtype", "precision", "backend", "parameter_bytes", "choice", "trials")
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
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
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
    choice: str
    trials: _containers.RepeatedCompositeFieldContainer[BackendTrial]
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., device: _Optional[str] = ..., max_seq_length: _Optional[int] = ..., source: _Optional[str] = ..., dimension: _Optional[int] = ..., dtype: _Optional[str] = ..., precision: _Optional[str] = ..., backend: _Optional[str] = ..., parameter_bytes: _Optional[int] = ..., choice: _Optional[str] = ..., trials: _Optional[_Iterable[_Union[BackendTrial, _Mapping]]] = ...) -> None: ...

class BackendTrial(_message.Message):
    __slots__ = ("backend", "precision", "items_per_second", "judged", "agrees", "ndcg_mean", "ndcg_worst", "top_loss", "min_cosine", "chosen", "error", "verdict")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    JUDGED_FIELD_NUMBER: _ClassVar[int]
    AGREES_FIELD_NUMBER: _ClassVar[int]
    NDCG_MEAN_FIELD_NUMBER: _ClassVar[int]
    NDCG_WORST_FIELD_NUMBER: _ClassVar[int]
    TOP_LOSS_FIELD_NUMBER: _ClassVar[int]
    MIN_COSINE_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    backend: str
    precision: str
    items_per_second: float
    judged: bool
    agrees: bool
    ndcg_mean: float
    ndcg_worst: float
    top_loss: float
    min_cosine: float
    chosen: bool
    error: str
    verdict: str
    def __init__(self, backend: _Optional[str] = ..., precision: _Optional[str] = ..., items_per_second: _Optional[float] = ..., judged: _Optional[bool] = ..., agrees: _Optional[bool] = ..., ndcg_mean: _Optional[float] = ..., ndcg_worst: _Optional[float] = ..., top_loss: _Optional[float] = ..., min_cosine: _Optional[float] = ..., chosen: _Optional[bool] = ..., error: _Optional[str] = ..., verdict: _Optional[str] = ...) -> None: ...
