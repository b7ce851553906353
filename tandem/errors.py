"""The one exception the client raises: a failed call, with its gRPC status and the server's message."""

from __future__ import annotations

import grpc


class TandemError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, method: str = ""):
        self.code, self.message, self.method = code, message, method
        super().__init__(f"{method + ': ' if method else ''}{code.name}: {message}")

    @classmethod
    def from_rpc(cls, exc: grpc.RpcError, method: str = "") -> "TandemError":
        return cls(exc.code(), exc.details() or "", method)
