"""Which scope each call of the contract needs, and on which collection.

Keyed by the full method name, which is also the Connect route's path, so gRPC and HTTP read one table.
`scope` is checked before the request is read (on any collection); `needs` then names the collections the
request's message touches (every message of a client stream).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from tandem.server.access.policy import ADMIN, READ, WRITE

Needs = Callable[[object], Iterable[tuple[str, str]]]


@dataclass(frozen=True)
class Rule:
    scope: str | None  # None: any authenticated principal
    needs: Needs | None = None


def _named(scope: str) -> Needs:
    return lambda m: ((scope, m.collection),)


def _stream(m) -> Iterable[tuple[str, str]]:
    # Later messages of an UpsertStream may leave the collection out (it is the first one's).
    return ((WRITE, m.collection),) if m.collection else ()


def _import(m) -> Iterable[tuple[str, str]]:
    if not m.HasField("record"):
        return ()  # only the first message names the target
    target = m.collection or m.record.collection
    return ((WRITE, target),) if m.into_existing else ((WRITE, target), (ADMIN, target))  # it creates it


RULES: dict[str, Rule] = {
    "/tandem.v1.RerankService/Rerank": Rule(READ),
    "/tandem.v1.EmbedService/Embed": Rule(READ),
    "/tandem.v1.InfoService/Info": Rule(READ),
    "/tandem.v1.SearchService/Search": Rule(READ, _named(READ)),
    "/tandem.v1.IndexService/ListCollections": Rule(READ),  # answered with what the caller may read
    "/tandem.v1.IndexService/DescribeCollection": Rule(READ, _named(READ)),
    "/tandem.v1.IndexService/Export": Rule(READ, _named(READ)),
    "/tandem.v1.IndexService/Upsert": Rule(WRITE, _named(WRITE)),
    "/tandem.v1.IndexService/UpsertStream": Rule(WRITE, _stream),
    "/tandem.v1.IndexService/Delete": Rule(WRITE, _named(WRITE)),
    "/tandem.v1.IndexService/Import": Rule(WRITE, _import),
    "/tandem.v1.IndexService/CreateCollection": Rule(ADMIN, _named(ADMIN)),
    "/tandem.v1.IndexService/DropCollection": Rule(ADMIN, _named(ADMIN)),
}
# Health and reflection: open when auth_exempt_health (the default), else any authenticated principal.
OPEN = Rule(None)
