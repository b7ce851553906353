"""Tandem's Python client: `Client` (blocking) and `AsyncClient` (asyncio), filters built with `F`.

The generated gRPC/protobuf code for the tandem.v1 contract is in `tandem.v1` (see proto/; regenerate with
`make proto`, never edit it). The `tandem` command is `tandem.cli`. Names load on first use, so the server,
which imports only `tandem.v1`, never loads the client.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"AsyncClient": "tandem.aio", "Client": "tandem.client", "Retry": "tandem.channel",
            "TandemError": "tandem.errors", "F": "tandem.filters", "Filter": "tandem.filters",
            "Document": "tandem.messages", "Hit": "tandem.messages", "RerankResult": "tandem.messages",
            "SearchResults": "tandem.messages"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tandem' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
