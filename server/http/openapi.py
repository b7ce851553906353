"""The OpenAPI document at /openapi.json, built once from the route table.

It says what a client (or a fuzzer reading it) can rely on: every status a route can answer, each error in its
dialect's envelope; the bodies of the routes that parse their own; and the Connect routes' bodies, which are
the contract's messages in proto3's JSON form, derived from the descriptors so they cannot drift from proto/.
Limits set by flags (documents per request, text length) are filled in from this server's config.
"""

from __future__ import annotations

from http import HTTPStatus

from tandem.server import validation
from tandem.server.engine.transfer import MAX_PAGE
from tandem.server.errors import Kind
from tandem.server.http import errors, protojson
from tandem.server.http.errors import STATUS, Failure
from tandem.server.storage.schema import ANALYZERS

_STR = {"type": "string"}
ENVELOPES = {
    "cohere": {"type": "object", "required": ["message"], "properties": {"message": _STR}},
    "openai": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": _STR, "type": _STR, "param": {"type": "null"}, "code": _STR}}}},
    "tei": {"type": "object", "required": ["error", "error_type"], "properties": {"error": _STR, "error_type": _STR}},
    "connect": {"type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string", "enum": [k.value for k in Kind] + ["unimplemented"]},
                               "message": _STR}},
}
RETRY_AFTER = {"retry-after": {"description": "seconds to wait before trying again",
                               "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
# A text the engine accepts (server/validation.py `text`): no NUL, and for most not blank (what str.strip()
# removes, spelt out: regex engines disagree on `\s`); patterns that match in linear time. The limit is in UTF-8
# bytes, which JSON Schema cannot say: documented as maxLength, exact for ASCII (other scripts fit fewer).
_SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NO_NUL = r"^[^\x00]*$"
NOT_BLANK = f"[^{_SPACE}\\x00]"  # unanchored: somewhere, a character that is neither blank nor NUL


def text_schema(max_bytes: int, blank: bool = False) -> dict:
    return {"type": "string", "maxLength": max_bytes, "pattern": NO_NUL,
            **({} if blank else {"allOf": [{"pattern": NOT_BLANK}]})}


def failures(route, exempt_public: bool) -> dict[int, list[str]]:
    """Each HTTP status the route can answer with an error, and the kinds behind it, from the same tables the
    Guard, the routes and the dialects use."""
    seen: list[tuple[int, str]] = []
    if not route.static and not (route.public and exempt_public):
        seen += [(401, Kind.UNAUTHENTICATED.value), (403, Kind.PERMISSION_DENIED.value),
                 (429, Kind.RESOURCE_EXHAUSTED.value)]
    if route.method == "POST":
        seen += [(400, Kind.INVALID_ARGUMENT.value), (413, Kind.RESOURCE_EXHAUSTED.value),
                 (415, Kind.INVALID_ARGUMENT.value)]
        if route.dialect is not errors.CONNECT:  # the dialects' bodies are checked against their models
            seen.append((422, Kind.INVALID_ARGUMENT.value))
    seen += [(STATUS[k], k.value) for k in route.fails]
    out: dict[int, list[str]] = {}
    for status, kind in seen:
        kinds = out.setdefault(route.dialect.status(Failure(status, kind, "")), [])
        if kind not in kinds:
            kinds.append(kind)
    return dict(sorted(out.items()))


def responses(route, exempt_public: bool, ok: dict | None) -> dict:
    """The operation's `responses`: 200 as the route documents it, then every error status."""
    out = {"200": {"description": "OK", "content": ok or {t: {} for t in route.answers}}}
    for status, schema in route.also.items():
        out[str(status)] = {"description": HTTPStatus(status).phrase,
                            "content": {"application/json": {"schema": schema}}}
    for status, kinds in failures(route, exempt_public).items():
        if str(status) in out:
            continue
        dialects = (route.dialect, *route.also_dialects)
        refs = [{"$ref": f"#/components/schemas/{d.name.capitalize()}Error"} for d in dialects]
        entry = {"description": f"{HTTPStatus(status).phrase} ({', '.join(kinds)}), in the "
                                f"{' or '.join(d.name for d in dialects)} error envelope",
                 "content": {"application/json": {"schema": refs[0] if len(refs) == 1 else {"anyOf": refs}}}}
        if status in (429, 503):
            entry["headers"] = RETRY_AFTER
        out[str(status)] = entry
    return out


def contract_rules(max_documents: int, max_text_bytes: int, max_recall_k: int) -> dict[str, dict]:
    """What the engine checks of the contract's request fields (server/validation.py and the engine's own
    checks) that JSON Schema can say, with this server's limits. Rules across fields (top_n within recall_k, a
    filter's grammar, chunking against the embedder's window, a cascade's stages) stay the engine's: their
    answers are 400 with the field named, as documented."""
    required = {"required": True}
    text, maybe_text = text_schema(max_text_bytes), text_schema(max_text_bytes, blank=True)
    collection = {"pattern": validation.COLLECTION_RE.pattern, **required}
    doc_id = {"pattern": r"^[^\x00]+$", "maxLength": validation.MAX_ID_BYTES}
    many = {"minItems": 1, "maxItems": max_documents, **required}
    rules = {f"tandem.v1.{m}.collection": collection for m in (
        "CreateCollectionRequest", "DropCollectionRequest", "DescribeCollectionRequest", "UpsertRequest",
        "DeleteRequest", "ExportRequest", "SearchRequest")}
    rules.update({
        "tandem.v1.RerankRequest.query": {**text, **required},
        "tandem.v1.RerankRequest.documents": {**many, **maybe_text},
        "tandem.v1.RerankRequest.top_n": {"maximum": max_documents},
        "tandem.v1.SearchRequest.query": {**text, **required},
        "tandem.v1.SearchRequest.filter_text": maybe_text,
        "tandem.v1.SearchRequest.top_n": {"maximum": max_recall_k},
        "tandem.v1.SearchRequest.recall_k": {"maximum": max_recall_k},
        "tandem.v1.EmbedRequest.texts": {**many, **text},
        "tandem.v1.UpsertRequest.documents": many,
        "tandem.v1.DeleteRequest.ids": {**many, **doc_id},
        "tandem.v1.Document.id": {**doc_id, **required},
        "tandem.v1.Document.text": {**text, **required},
        "tandem.v1.ExportRequest.page_size": {"maximum": MAX_PAGE},
        "tandem.v1.CreateCollectionRequest.language": {"enum": ["", *sorted(ANALYZERS)]},
    })
    return rules


def fill_limits(node, limits: dict[str, dict]) -> None:
    """Replace the markers in the dialect models' schemas with this server's limits, in place."""
    if isinstance(node, dict):
        for marker, keywords in limits.items():
            if node.pop(marker, None):
                node.update(keywords)
        for v in node.values():
            fill_limits(v, limits)
    elif isinstance(node, list):
        for v in node:
            fill_limits(v, limits)


def document(app, table: dict, exempt_public: bool, limits: tuple[int, int, int], secured: bool) -> None:
    """Make app.openapi() return the full document (built on first call, then kept). secured: the server has an
    access policy, so every route but health (when exempt) and the console's files asks for a bearer token."""
    plain = app.openapi
    max_documents, max_text_bytes, _ = limits

    def openapi():
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = plain()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422, which Tandem never sends
            components.pop(name, None)
        for m in {m for r in table.values() for m in r.body}:
            s = m.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(s.pop("$defs", {}))
            components[m.__name__] = s
        components.update({f"{n.capitalize()}Error": e for n, e in ENVELOPES.items()})
        if secured:
            schema["components"]["securitySchemes"] = {"bearer": {
                "type": "http", "scheme": "bearer", "description": "a token of the access policy (--auth-policy); "
                "its scopes decide which calls and collections it reaches (README, Access control)"}}
        contract = [r.contract for r in table.values() if r.contract]
        components.update(protojson.schemas([d for pair in contract for d in pair], contract_rules(*limits)))
        for route in table.values():
            operation = schema["paths"].get(route.path, {}).get(route.method.lower())
            if operation is None:  # not documented (the console's files)
                continue
            ok = None
            if route.contract:
                ref = {"$ref": f"#/components/schemas/{route.contract[1].full_name}"}
                # A binary answer, or a stream of Connect envelopes, has no JSON Schema.
                ok = {t: ({"schema": ref} if t == "application/json" else {}) for t in route.answers}
                body = {"$ref": f"#/components/schemas/{route.contract[0].full_name}"}
                if route.answers[0] != "application/json":  # a stream: the message in a Connect envelope
                    body = {"type": "string", "format": "binary", "description": f"one enveloped "
                            f"{route.contract[0].full_name} (a 5-byte prefix, then the message)"}
                operation["requestBody"] = {"required": True, "content": {route.content_types[0]: {"schema": body}}}
            elif "200" in operation.get("responses", {}) and route.answers == ("application/json",):
                ok = operation["responses"]["200"].get("content")
            operation["responses"] = responses(route, exempt_public, ok)
            if secured and not (route.public and exempt_public):
                operation["security"] = [{"bearer": []}]
        # The markers the dialect models put on fields whose limits are flags (server/http/models.py).
        fill_limits(schema, {"x-tandem-text": text_schema(max_text_bytes),
                             "x-tandem-passage": text_schema(max_text_bytes, blank=True),
                             "x-tandem-many": {"minItems": 1, "maxItems": max_documents},
                             "x-tandem-top-n": {"maximum": max_documents}})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
