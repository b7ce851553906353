"""tandem.v1.InfoService: the models loaded and the limits enforced."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from server.config import search_rerank_defaults
from server.runtime import Runtime
from tandem.v1 import common_pb2, info_pb2, info_pb2_grpc


def _version() -> str:
    try:
        return version("tandem-search")
    except PackageNotFoundError:
        return "dev"


def model_infos(rt: Runtime) -> list[common_pb2.ModelInfo]:
    out = []
    for b in [*rt.rerankers.values(), *rt.embedders.values()]:
        m = b.backend
        out.append(common_pb2.ModelInfo(
            name=m.name, kind=m.kind, device=str(m.device), max_seq_length=m.max_length,
            source=m.source, dimension=getattr(m, "dimension", 0), dtype=m.dtype, precision=m.precision,
            backend=m.backend, parameter_bytes=getattr(m, "parameter_bytes", 0),
        ))
    return out


class InfoService(info_pb2_grpc.InfoServiceServicer):
    def __init__(self, rt: Runtime):
        self.rt = rt

    async def Info(self, request, context) -> info_pb2.InfoResponse:
        c = self.rt.config
        store = self.rt.store
        batcher = next(iter(self.rt.rerankers.values()), None)  # the effective limits, after "auto"
        depth, tokens = search_rerank_defaults(c, self.rt.device)
        return info_pb2.InfoResponse(
            version=_version(),
            models=model_infos(self.rt),
            limits=info_pb2.Limits(
                max_documents_per_request=c.max_documents_per_request,
                max_batch_size=batcher.limits.max_batch_size if batcher else c.max_batch_pairs,
                max_batch_tokens=batcher.limits.max_batch_tokens if batcher else 0,
                queue_capacity=c.queue_capacity,
                max_concurrent_requests=c.max_concurrent_requests,
                max_text_bytes=c.max_text_bytes,
                max_message_bytes=c.max_message_bytes,
                max_recall_k=c.max_recall_k,
                max_wait_ms=c.max_wait_ms,
                rerank_depth=depth,
                max_tokens_per_doc=tokens,
            ),
            default_reranker=self.rt.default_reranker,
            default_embedder=self.rt.default_embedder,
            storage=getattr(store, "kind", ""),
        )
