from google.protobuf import struct_pb2 as _struct_pb2
from tandem.v1 import filter_pb2 as _filter_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_MODE_UNSPECIFIED: _ClassVar[SearchMode]
    SEARCH_MODE_DENSE: _ClassVar[SearchMode]
    SEARCH_MODE_HYBRID: _ClassVar[SearchMode]
    SEARCH_MODE_SPARSE: _ClassVar[SearchMode]
SEARCH_MODE_UNSPECIFIED: SearchMode
SEARCH_MODE_DENSE: SearchMode
SEARCH_MODE_HYBRID: SearchMode
SEARCH_MODE_SPARSE: SearchMode

class SearchRequest(_message.Message):
    __slots__ = ("collection", "query", "top_n", "recall_k", "filter", "mode", "rerank", "reranker", "require_rerank", "rerank_stages", "exclude_text", "rerank_depth", "max_tokens_per_doc", "filter_text")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    RECALL_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    RERANKER_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_RERANK_FIELD_NUMBER: _ClassVar[int]
    RERANK_STAGES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_TEXT_FIELD_NUMBER: _ClassVar[int]
    RERANK_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_PER_DOC_FIELD_NUMBER: _ClassVar[int]
    FILTER_TEXT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    query: str
    top_n: int
    recall_k: int
    filter: _filter_pb2.Filter
    mode: SearchMode
    rerank: bool
    reranker: str
    require_rerank: bool
    rerank_stages: _containers.RepeatedCompositeFieldContainer[RerankStage]
    exclude_text: bool
    rerank_depth: int
    max_tokens_per_doc: int
    filter_text: str
    def __init__(self, collection: _Optional[str] = ..., query: _Optional[str] = ..., top_n: _Optional[int] = ..., recall_k: _Optional[int] = ..., filter: _Optional[_Union[_filter_pb2.Filter, _Mapping]] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., rerank: _Optional[bool] = ..., reranker: _Optional[str] = ..., require_rerank: _Optional[bool] = ..., rerank_stages: _Optional[_Iterable[_Union[RerankStage, _Mapping]]] = ..., exclude_text: _Optional[bool] = ..., rerank_depth: _Optional[int] = ..., max_tokens_per_doc: _Optional[int] = ..., filter_text: _Optional[str] = ...) -> None: ...

class RerankStage(_message.Message):
    __slots__ = ("model", "keep")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    model: str
    keep: int
    def __init__(self, model: _Optional[str] = ..., keep: _Optional[int] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("id", "text", "metadata", "score", "recall_score", "recall_rank", "passage", "passage_offset")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RECALL_SCORE_FIELD_NUMBER: _ClassVar[int]
    RECALL_RANK_FIELD_NUMBER: _ClassVar[int]
    PASSAGE_FIELD_NUMBER: _ClassVar[int]
    PASSAGE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    metadata: _struct_pb2.Struct
    score: float
    recall_score: float
    recall_rank: int
    passage: str
    passage_offset: int
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., score: _Optional[float] = ..., recall_score: _Optional[float] = ..., recall_rank: _Optional[int] = ..., passage: _Optional[str] = ..., passage_offset: _Optional[int] = ...) -> None: ...

class SearchTimings(_message.Message):
    __slots__ = ("embed_seconds", "recall_seconds", "rerank_seconds", "total_seconds", "rerank_stages")
    EMBED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RECALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RERANK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RERANK_STAGES_FIELD_NUMBER: _ClassVar[int]
    embed_seconds: float
    recall_seconds: float
    rerank_seconds: float
    total_seconds: float
    rerank_stages: _containers.RepeatedCompositeFieldContainer[RerankStageTiming]
    def __init__(self, embed_seconds: _Optional[float] = ..., recall_seconds: _Optional[float] = ..., rerank_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ..., rerank_stages: _Optional[_Iterable[_Union[RerankStageTiming, _Mapping]]] = ...) -> None: ...

class RerankStageTiming(_message.Message):
    __slots__ = ("model", "seconds", "scored", "skipped")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    SCORED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    model: str
    seconds: float
    scored: int
    skipped: bool
    def __init__(self, model: _Optional[str] = ..., seconds: _Optional[float] = ..., scored: _Optional[int] = ..., skipped: _Optional[bool] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "reranked", "timings", "degraded_reason", "recalled")
    HITS_FIELD_NUMBER: _ClassVar[int]
    RERANKED_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASON_FIELD_NUMBER: _ClassVar[int]
    RECALLED_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    reranked: bool
    timings: SearchTimings
    degraded_reason: str
    recalled: int
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., reranked: _Optional[bool] = ..., timings: _Optional[_Union[SearchTimings, _Mapping]] = ..., degraded_reason: _Optional[str] = ..., recalled: _Optional[int] = ...) -> None: ...
