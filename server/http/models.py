"""The request and response bodies of the HTTP dialects, as their clients send and read them.

Fields a dialect defines but Tandem does not act on are accepted (a client that sends them must not fail) and
listed in the README; unknown fields are ignored, as the peers do.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# Schema markers for limits that are flags; the OpenAPI document fills them in (server/http/openapi.py).
Text = Annotated[str, Field(json_schema_extra={"x-tandem-text": True})]  # not blank, within max_text_bytes
Passage = Annotated[str, Field(json_schema_extra={"x-tandem-passage": True})]  # may be empty, within max_text_bytes
_MANY = {"x-tandem-many": True}  # 1 to max_documents_per_request entries
_TOP_N = {"x-tandem-top-n": True}  # at most max_documents_per_request
# A whole number, also when written 3.0 (JSON has one number type); strict otherwise: never a string or a boolean.
# (A bound goes before the validator, or pydantic documents it as an unknown keyword instead of `minimum`.)
_WHOLE = BeforeValidator(lambda v: int(v) if isinstance(v, float) and v.is_integer() else v)
Int = Annotated[int, _WHOLE]
Count = Annotated[int, Field(ge=0), _WHOLE]


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # as serde (TEI) and the hosted APIs: 0 is not false


# -- rerank ---------------------------------------------------------------------------------------------------

class TextDocument(_In):
    text: Passage


class CohereV2Rerank(_In):
    """Cohere v2 (`cohere.ClientV2.rerank`; LangChain, LlamaIndex and Haystack Cohere rankers)."""

    model: str = ""
    query: Text
    documents: list[Passage] = Field(json_schema_extra=_MANY)
    top_n: Count | None = Field(default=None, json_schema_extra=_TOP_N)
    max_tokens_per_doc: Count | None = None
    priority: Int | None = None  # accepted, no effect: Tandem's queue is first come, first served
    relevant_spans: object | None = None  # accepted, no effect


class DocumentsRerank(_In):
    """Cohere v1 and Jina at /v1/rerank; vLLM, Infinity and RAGFlow at /rerank (documents: text or {text})."""

    model: str = ""
    query: Text
    documents: list[Union[Passage, TextDocument]] = Field(json_schema_extra=_MANY)
    top_n: Count | None = Field(default=None, json_schema_extra=_TOP_N)
    return_documents: bool = False
    raw_scores: bool = False  # Infinity's switch for logits
    max_tokens_per_doc: Count | None = None
    max_chunks_per_doc: Int | None = None  # Cohere v1: accepted, no effect (see long_documents)
    rank_fields: list[str] | None = None  # Cohere v1: accepted, no effect (documents are text)


class TeiRerank(_In):
    """text-embeddings-inference's /rerank (Dify, LlamaIndex and Haystack TEI classes, LiteLLM huggingface)."""

    query: Text
    texts: list[Passage] = Field(json_schema_extra=_MANY)
    truncate: bool = False  # accepted: Tandem always reads a long text up to the model's window
    truncation_direction: Literal["right", "left", "Right", "Left"] = "right"  # accepted, right only
    raw_scores: bool = False
    return_text: bool = False


class RankedDocument(BaseModel):
    index: int
    relevance_score: float
    document: TextDocument | None = None  # only when asked for; never null


class Usage(BaseModel):
    total_tokens: int


class DocumentsRerankResponse(BaseModel):
    id: str
    model: str
    usage: Usage
    results: list[RankedDocument]


class CohereV2Result(BaseModel):
    index: int
    relevance_score: float


class CohereV2RerankResponse(BaseModel):
    id: str
    results: list[CohereV2Result]
    meta: dict


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None  # only with return_text


# -- embed ----------------------------------------------------------------------------------------------------

class TeiEmbed(_In):
    inputs: Union[Text, Annotated[list[Text], Field(json_schema_extra=_MANY)]]
    normalize: bool = True  # accepted: vectors are always unit length
    truncate: bool = False  # accepted: a long text is read up to the model's window
    prompt_name: str | None = None  # accepted, no effect


class OpenAIEmbeddings(_In):
    """OpenAI /v1/embeddings (the `openai` SDK sends base64 unless told otherwise; LangChain OpenAIEmbeddings)."""

    input: Union[Text, Annotated[list[Text], Field(json_schema_extra=_MANY)], list[Int], list[list[Int]]]
    model: str = ""
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1), _WHOLE] | None = None
    user: str | None = None


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: Union[list[float], str]
    index: int


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage
