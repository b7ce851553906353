"""The store's failures. Each is a TandemError with its kind, so a transport maps it like any other."""

from __future__ import annotations

from tandem.server.errors import Kind, TandemError


class StoreError(TandemError):
    kind = Kind.INTERNAL


class CollectionMissing(StoreError):
    kind = Kind.NOT_FOUND

    def __init__(self, name: str):
        super().__init__(f"collection {name!r} does not exist; create it with IndexService/CreateCollection")
        self.collection = name


class CollectionExists(StoreError):
    kind = Kind.ALREADY_EXISTS

    def __init__(self, name: str):
        super().__init__(f"collection {name!r} already exists")
        self.collection = name


class StoreUnavailable(StoreError):
    """Milvus cannot be reached (or the embedded engine is restarting); the call may be retried."""

    kind = Kind.UNAVAILABLE

    def __init__(self, exc: BaseException):
        msg = getattr(exc, "message", None) or str(exc)
        super().__init__(f"Milvus is unreachable: {str(msg).splitlines()[0][:300]}")


class StoreFailed(StoreError):
    """Milvus answered with an error Tandem has no better words for."""

    def __init__(self, message: str):
        super().__init__(f"Milvus error: {message}")


class CollectionRecreated(StoreError):
    """Another server dropped the collection and created it again under the same name while this call ran."""

    kind = Kind.FAILED_PRECONDITION

    def __init__(self, name: str, embedder: str, chunked: bool):
        super().__init__(f"collection {name!r} was dropped and created again by another server while this call "
                         f"ran (it now holds {'passages' if chunked else 'whole documents'} embedded by {embedder!r}); "
                         "send the call again")
        self.collection = name
