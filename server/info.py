"""tandem.v1.InfoService over gRPC: the engine's description as an InfoResponse."""

from __future__ import annotations

import dataclasses

from tandem.server.access import grants
from tandem.server.engine import Engine
from tandem.v1 import common_pb2, info_pb2, info_pb2_grpc


def _caller() -> info_pb2.Caller:
    principal, by_scope = grants()
    return info_pb2.Caller(principal=principal, **{scope: list(globs) for scope, globs in by_scope.items()})


class InfoService(info_pb2_grpc.InfoServiceServicer):
    def __init__(self, engine: Engine):
        self.engine = engine

    async def Info(self, request, context) -> info_pb2.InfoResponse:
        i = self.engine.info()
        return info_pb2.InfoResponse(
            version=i.version,
            models=[common_pb2.ModelInfo(**{**dataclasses.asdict(m), "trials": [
                common_pb2.BackendTrial(**dataclasses.asdict(t)) for t in m.trials]}) for m in i.models],
            limits=info_pb2.Limits(**dataclasses.asdict(i.limits)),
            default_reranker=i.default_reranker, default_embedder=i.default_embedder, storage=i.storage,
            caller=_caller(),
        )
