from tandem.v1 import common_pb2 as _common_pb2
from tandem.v1 import document_pb2 as _document_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CollectionInfo(_message.Message):
    __slots__ = ("collection", "row_count", "embedder", "dimension", "index_type", "metric_type", "index_params", "language", "chunking", "documents", "passages")
    class IndexParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_TYPE_FIELD_NUMBER: _ClassVar[int]
    METRIC_TYPE_FIELD_NUMBER: _ClassVar[int]
    INDEX_PARAMS_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    CHUNKING_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    collection: str
    row_count: int
    embedder: str
    dimension: int
    index_type: str
    metric_type: str
    index_params: _containers.ScalarMap[str, str]
    language: str
    chunking: Chunking
    documents: int
    passages: int
    def __init__(self, collection: _Optional[str] = ..., row_count: _Optional[int] = ..., embedder: _Optional[str] = ..., dimension: _Optional[int] = ..., index_type: _Optional[str] = ..., metric_type: _Optional[str] = ..., index_params: _Optional[_Mapping[str, str]] = ..., language: _Optional[str] = ..., chunking: _Optional[_Union[Chunking, _Mapping]] = ..., documents: _Optional[int] = ..., passages: _Optional[int] = ...) -> None: ...

class Chunking(_message.Message):
    __slots__ = ("max_tokens", "overlap_tokens")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_TOKENS_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    overlap_tokens: int
    def __init__(self, max_tokens: _Optional[int] = ..., overlap_tokens: _Optional[int] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("collection", "embedder", "language", "chunking")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    CHUNKING_FIELD_NUMBER: _ClassVar[int]
    collection: str
    embedder: str
    language: str
    chunking: Chunking
    def __init__(self, collection: _Optional[str] = ..., embedder: _Optional[str] = ..., language: _Optional[str] = ..., chunking: _Optional[_Union[Chunking, _Mapping]] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: CollectionInfo
    def __init__(self, info: _Optional[_Union[CollectionInfo, _Mapping]] = ...) -> None: ...

class DropCollectionRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class DropCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collections: _Optional[_Iterable[str]] = ...) -> None: ...

class DescribeCollectionRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class DescribeCollectionResponse(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: CollectionInfo
    def __init__(self, info: _Optional[_Union[CollectionInfo, _Mapping]] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "documents")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    documents: _containers.RepeatedCompositeFieldContainer[_document_pb2.Document]
    def __init__(self, collection: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[_document_pb2.Document, _Mapping]]] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("upserted", "usage", "passages")
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    usage: _common_pb2.Usage
    passages: int
    def __init__(self, upserted: _Optional[int] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., passages: _Optional[int] = ...) -> None: ...

class UpsertStreamRequest(_message.Message):
    __slots__ = ("collection", "documents")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    documents: _containers.RepeatedCompositeFieldContainer[_document_pb2.Document]
    def __init__(self, collection: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[_document_pb2.Document, _Mapping]]] = ...) -> None: ...

class UpsertStreamResponse(_message.Message):
    __slots__ = ("upserted", "requests", "usage", "passages")
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    requests: int
    usage: _common_pb2.Usage
    passages: int
    def __init__(self, upserted: _Optional[int] = ..., requests: _Optional[int] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., passages: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class CollectionRecord(_message.Message):
    __slots__ = ("format_version", "collection", "embedder", "dimension", "language", "chunking", "documents", "rows")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    CHUNKING_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    collection: str
    embedder: str
    dimension: int
    language: str
    chunking: Chunking
    documents: int
    rows: int
    def __init__(self, format_version: _Optional[int] = ..., collection: _Optional[str] = ..., embedder: _Optional[str] = ..., dimension: _Optional[int] = ..., language: _Optional[str] = ..., chunking: _Optional[_Union[Chunking, _Mapping]] = ..., documents: _Optional[int] = ..., rows: _Optional[int] = ...) -> None: ...

class Row(_message.Message):
    __slots__ = ("id", "text", "metadata_json", "dense", "chunk", "of", "start")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    OF_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    metadata_json: str
    dense: bytes
    chunk: int
    of: int
    start: int
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., metadata_json: _Optional[str] = ..., dense: _Optional[bytes] = ..., chunk: _Optional[int] = ..., of: _Optional[int] = ..., start: _Optional[int] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("collection", "page_size")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    page_size: int
    def __init__(self, collection: _Optional[str] = ..., page_size: _Optional[int] = ...) -> None: ...

class ExportResponse(_message.Message):
    __slots__ = ("record", "rows")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    record: CollectionRecord
    rows: _containers.RepeatedCompositeFieldContainer[Row]
    def __init__(self, record: _Optional[_Union[CollectionRecord, _Mapping]] = ..., rows: _Optional[_Iterable[_Union[Row, _Mapping]]] = ...) -> None: ...

class ImportRequest(_message.Message):
    __slots__ = ("record", "collection", "into_existing", "re_embed", "embedder", "language", "chunking", "rows")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    INTO_EXISTING_FIELD_NUMBER: _ClassVar[int]
    RE_EMBED_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    CHUNKING_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    record: CollectionRecord
    collection: str
    into_existing: bool
    re_embed: bool
    embedder: str
    language: str
    chunking: Chunking
    rows: _containers.RepeatedCompositeFieldContainer[Row]
    def __init__(self, record: _Optional[_Union[CollectionRecord, _Mapping]] = ..., collection: _Optional[str] = ..., into_existing: _Optional[bool] = ..., re_embed: _Optional[bool] = ..., embedder: _Optional[str] = ..., language: _Optional[str] = ..., chunking: _Optional[_Union[Chunking, _Mapping]] = ..., rows: _Optional[_Iterable[_Union[Row, _Mapping]]] = ...) -> None: ...

class ImportResponse(_message.Message):
    __slots__ = ("rows", "documents", "requests", "re_embedded", "usage")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    RE_EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    rows: int
    documents: int
    requests: int
    re_embedded: bool
    usage: _common_pb2.Usage
    def __init__(self, rows: _Optional[int] = ..., documents: _Optional[int] = ..., requests: _Optional[int] = ..., re_embedded: _Optional[bool] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...
