"""What a Tandem collection is in Milvus: its fields, indexes, analyzers, id encoding and record.

Schema per collection:
- `id`        VARCHAR primary key (client-chosen; upsert replaces). milvus-lite 2.5 cannot replace an id
              holding `'`, nor match one holding a control character, so new collections store ids with
              `%`, quotes, backslash and control characters percent-encoded; clients see the ids they sent.
- `text`      VARCHAR(65535) with the collection's analyzer (`language`), input of the BM25 function
- `dense`     FLOAT_VECTOR(dim), COSINE; the index is the best the engine takes (`DENSE_INDEXES`)
- `sparse`    SPARSE_FLOAT_VECTOR, filled by Milvus's BM25 function, SPARSE_INVERTED_INDEX
- `metadata`  JSON: the client's metadata object. Kept in one JSON field rather
              than dynamic top-level fields so user keys can never shadow or
              address the reserved fields above.
- `present`   JSON {key path: type} of every non-null metadata value, written by the store. It lets
              filters say "absent" and "not a number" without `not`, which milvus-lite 2.5 lacks
              (see filters.py).
A chunked collection (passage indexing, server/chunking.py) stores one row per passage instead: `id` is
`<document id>#<n>`, and four more fields say whose passage it is:
- `doc_id`    VARCHAR, the (encoded) document id, with an INVERTED index where the engine builds one
- `chunk`     INT32 passage number from 0, and `of`, INT32 the document's passage count
- `start`     INT64 character offset of the passage in the document
`text` then holds the passage; the document's text is the join of its passages, so a document may be longer
than one VARCHAR. Recall groups passages by `doc_id` (Milvus grouping search), one hit per document.
The collection's record (embedder, dimension, language, chunking) is JSON in the schema description, which
every engine keeps, and in collection properties, which Milvus servers keep (v0.1 wrote only those).
"""

from __future__ import annotations

import json
import uuid
import re
from dataclasses import dataclass, field

from pymilvus import DataType, Function, FunctionType, MilvusClient
from pymilvus.exceptions import MilvusException

from tandem.server.errors import invalid

METRIC = "COSINE"
# Dense indexes in order of preference. Milvus servers and milvus-lite 3 build HNSW; milvus-lite 2.5's local
# mode takes only FLAT, IVF_FLAT and AUTOINDEX. Search params follow the index type.
DENSE_INDEXES = [("HNSW", {"M": 16, "efConstruction": 200}), ("AUTOINDEX", {})]
MAX_TEXT_CHARS = 65535
MAX_ID_CHARS = 3 * 512  # room for escapes
EMBEDDER, DIMENSION, LANGUAGE = "tandem.embedder", "tandem.dimension", "tandem.language"  # v0.1 properties
RECORD = "tandem:"  # schema description prefix of the collection record

# BM25 analyzers by `language`. English stems and drops stop words; "standard" is v0.1's (lowercase only).
STEMMED = ("arabic", "danish", "dutch", "finnish", "french", "german", "greek", "hungarian", "italian",
           "norwegian", "portuguese", "romanian", "russian", "spanish", "swedish", "tamil", "turkish")
ANALYZERS = {"english": {"type": "english"}, "standard": {"type": "standard"}, "chinese": {"type": "chinese"},
             **{lang: {"tokenizer": "standard", "filter": ["lowercase", {"type": "stemmer", "language": lang}]}
                for lang in STEMMED}}
DEFAULT_LANGUAGE = "english"


def analyzer(language: str) -> tuple[str, dict]:
    lang = (language or DEFAULT_LANGUAGE).strip().lower()
    if lang not in ANALYZERS:
        raise invalid(f"language {language!r} has no BM25 analyzer; use one of {', '.join(sorted(ANALYZERS))}")
    return lang, ANALYZERS[lang]


_ID_UNSAFE = re.compile(r"[%'\"\\\x00-\x1f\x7f]")
_ID_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def encode_id(doc_id: str) -> str:
    return _ID_UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", doc_id)


def decode_id(stored: str) -> str:
    return _ID_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), stored)


def presence(metadata: dict, prefix: str = "") -> dict[str, str]:
    """{dotted key path: type} for every non-null value, nested objects included."""
    out: dict[str, str] = {}
    for k, v in metadata.items():
        if v is None:
            continue
        path = prefix + k
        out[path] = ("bool" if isinstance(v, bool) else "number" if isinstance(v, (int, float))
                     else "string" if isinstance(v, str) else "list" if isinstance(v, list) else "object")
        if isinstance(v, dict):
            out.update(presence(v, path + "."))
    return out


@dataclass(frozen=True)
class CollectionMeta:
    name: str
    embedder: str
    dimension: int
    language: str = "standard"
    index_type: str = "HNSW"
    index_params: dict = field(default_factory=dict)
    has_presence: bool = False  # v0.1 collections lack the `present` field
    escaped_ids: bool = False  # v0.1 collections store ids as sent
    chunking: tuple[int, int] | None = None  # (max_tokens, overlap_tokens) of a chunked collection
    # A fresh id each time a collection is created: another replica's drop and re-create under the same name
    # changes it ("" for collections made before it existed).
    generation: str = ""

    def search_params(self, limit: int) -> dict:
        params = {"ef": max(limit, 64)} if self.index_type == "HNSW" else {}
        return {"metric_type": METRIC, "params": params}


def new_record(embedder: str, dimension: int, language: str, chunking: tuple[int, int] | None) -> dict:
    record = {"embedder": embedder, "dimension": dimension, "language": language, "ids": "escaped",
              "generation": uuid.uuid4().hex}
    if chunking:
        record["chunking"] = list(chunking)
    return record


def read_record(props: dict, description: str) -> dict | None:
    """The collection's record: the schema description holds all of it (v0.2); v0.1 wrote only properties.
    None for a collection Tandem did not make."""
    if description.startswith(RECORD):
        try:
            return json.loads(description[len(RECORD):])
        except ValueError:
            return None
    if EMBEDDER in props:
        return {"embedder": props[EMBEDDER], "dimension": int(props[DIMENSION]),
                "language": props.get(LANGUAGE, "standard")}
    return None


_INDEX_STATE = {"index_type", "metric_type", "field_name", "index_name", "dim", "total_rows", "indexed_rows",
                "pending_index_rows", "state"}


def meta_from(name: str, record: dict, index: dict, fields: set[str]) -> CollectionMeta:
    """A collection's metadata from its record, its dense index description and its field names."""
    return CollectionMeta(name, record["embedder"], int(record["dimension"]), record.get("language", "standard"),
                          str(index.get("index_type", "")),
                          {k: str(v) for k, v in index.items() if k not in _INDEX_STATE},
                          "present" in fields, record.get("ids") == "escaped",
                          tuple(record["chunking"]) if record.get("chunking") else None,
                          str(record.get("generation", "")))


def build_schema(record: dict, analyzer_params: dict):
    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                   description=RECORD + json.dumps(record))
    s.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_CHARS)
    s.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_CHARS, enable_analyzer=True,
                analyzer_params=analyzer_params)
    s.add_field("dense", DataType.FLOAT_VECTOR, dim=record["dimension"])
    s.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    s.add_field("metadata", DataType.JSON)
    s.add_field("present", DataType.JSON)
    if record.get("chunking"):
        s.add_field("doc_id", DataType.VARCHAR, max_length=MAX_ID_CHARS)
        s.add_field("chunk", DataType.INT32)
        s.add_field("of", DataType.INT32)
        s.add_field("start", DataType.INT64)
    s.add_function(Function(name="bm25", function_type=FunctionType.BM25,
                            input_field_names=["text"], output_field_names=["sparse"]))
    return s


def build_indexes(client: MilvusClient, dense_index: int, chunked: bool):
    index_type, params = DENSE_INDEXES[dense_index]
    ip = client.prepare_index_params()
    ip.add_index("dense", index_type=index_type, metric_type=METRIC, params=params)
    ip.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    if chunked:
        ip.add_index("doc_id", index_type="INVERTED")  # passage lookups by document
    return ip


def index_rejected(exc: MilvusException) -> bool:
    text = str(exc.message).lower()
    return "index type" in text or "only support" in text
