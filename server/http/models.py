"""The request and response bodies of the HTTP dialects, as their clients send and read them.

Fields a dialect defines but Tandem does not act on are accepted (a client that sends them must not fail) and
listed in the README; unknown fields are ignored, as the peers do.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- rerank ---------------------------------------------------------------------------------------------------

class TextDocument(_In):
    text: str


class CohereV2Rerank(_In):
    """Cohere v2 (`cohere.ClientV2.rerank`; LangChain, LlamaIndex and Haystack Cohere rankers)."""

    model: str = ""
    query: str
    documents: list[str]
    top_n: int | None = Field(default=None, ge=0)
    max_tokens_per_doc: int | None = Field(default=None, ge=0)
    priority: int | None = None  # accepted, no effect: Tandem's queue is first come, first served
    relevant_spans: object | None = None  # accepted, no effect


class DocumentsRerank(_In):
    """Cohere v1 and Jina at /v1/rerank; vLLM, Infinity and RAGFlow at /rerank (documents: text or {text})."""

    model: str = ""
    query: str
    documents: list[Union[str, TextDocument]]
    top_n: int | None = Field(default=None, ge=0)
    return_documents: bool = False
    raw_scores: bool = False  # Infinity's switch for logits
    max_tokens_per_doc: int | None = Field(default=None, ge=0)
    max_chunks_per_doc: int | None = None  # Cohere v1: accepted, no effect (see long_documents)
    rank_fields: list[str] | None = None  # Cohere v1: accepted, no effect (documents are text)


class TeiRerank(_In):
    """text-embeddings-inference's /rerank (Dify, LlamaIndex and Haystack TEI classes, LiteLLM huggingface)."""

    query: str
    texts: list[str]
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
    inputs: Union[str, list[str]]
    normalize: bool = True  # accepted: vectors are always unit length
    truncate: bool = False  # accepted: a long text is read up to the model's window
    prompt_name: str | None = None  # accepted, no effect


class OpenAIEmbeddings(_In):
    """OpenAI /v1/embeddings (the `openai` SDK sends base64 unless told otherwise; LangChain OpenAIEmbeddings)."""

    input: Union[str, list[str], list[int], list[list[int]]]
    model: str = ""
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
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
