"""The access policy: who the principals are, how each one authenticates, and what each may do.

A TOML file (`--auth-policy`, parsed by the standard library's tomllib) of principals:

    [principals.writer]
    tokens = ["sha256:..."]                 # digests from `tandem auth new-token writer`
    mtls = ["uri:spiffe://mesh/ns/a/sa/b"]  # or "dns:name" / "cn:name" from the client certificate
    read = ["team_*"]                       # collection globs per scope: read, write, admin
    write = ["team_*"]
    rps = 50                                # optional quotas: requests per second (burst defaults to rps)
    max_in_flight = 8                       # and calls in progress at once

Validation is strict (an unknown key is a typo that would silently widen or narrow access), and every error
names the line it is about, so a rejected reload can be fixed from the log alone.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tandem.server.access.tokens import PREFIX, digest

READ, WRITE, ADMIN = "read", "write", "admin"
SCOPES = (READ, WRITE, ADMIN)
IDENTITY_KINDS = ("uri", "dns", "cn")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A collection name holds letters, digits and '_' (the store's rule); a glob adds * ? and [...].
GLOB = re.compile(r"[A-Za-z0-9_*?\[\]!]+")
DIGEST = re.compile(re.escape(PREFIX) + r"[0-9a-f]{64}")
KEYS = {"tokens", "mtls", *SCOPES, "rps", "burst", "max_in_flight"}
# The principal that `--auth-tokens` / `--auth-tokens-file` tokens authenticate as: every scope everywhere.
STATIC = "auth-tokens"


class PolicyError(ValueError):
    """A policy that cannot be used; the message names the file's line where it can."""


@dataclass(frozen=True)
class Quota:
    rps: float | None = None  # None: no rate limit
    burst: int = 1
    max_in_flight: int | None = None


@dataclass(frozen=True, eq=False)
class Principal:
    name: str
    grants: dict[str, tuple[str, ...]]  # scope -> collection globs
    quota: Quota = Quota()
    _match: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        for scope, globs in self.grants.items():
            self._match[scope] = re.compile("|".join(fnmatch.translate(g) for g in globs)).match if globs else None

    def holds(self, scope: str) -> bool:
        """Whether the scope is granted on any collection (calls that name none, like Rerank, need only this)."""
        return self._match.get(scope) is not None

    def may(self, scope: str, collection: str) -> bool:
        m = self._match.get(scope)
        return m is not None and m(collection) is not None


@dataclass(frozen=True)
class Policy:
    principals: tuple[Principal, ...]
    by_digest: dict[str, Principal]
    by_identity: dict[str, Principal]  # "uri:spiffe://...", "dns:...", "cn:..."

    @property
    def uses_identities(self) -> bool:
        return bool(self.by_identity)


def static(tokens: set[str]) -> list[tuple[Principal, list[str], list[str]]]:
    everything = {s: ("*",) for s in SCOPES}
    return [(Principal(STATIC, everything), [digest(t) for t in sorted(tokens)], [])] if tokens else []


def build(entries: list[tuple[Principal, list[str], list[str]]]) -> Policy:
    by_digest, by_identity = {}, {}
    for p, digests, identities in entries:
        by_digest.update((d, p) for d in digests)
        by_identity.update((i, p) for i in identities)
    return Policy(tuple(p for p, _, _ in entries), by_digest, by_identity)


def load(path: str | Path, tokens: set[str] = frozenset()) -> Policy:
    """The policy in `path` (plus a principal for static tokens, if any); PolicyError naming the line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"cannot read {path}: {exc.strerror}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML: {exc}") from None
    return build(static(set(tokens)) + _principals(doc, text, path))


def _principals(doc: dict, text: str, path: Path) -> list:
    def fail(message: str, name: str | None = None, key: str | None = None):
        raise PolicyError(f"{path}, line {_line(text, name, key)}: {message}")

    extra = set(doc) - {"principals"}
    if extra:
        fail(f"unknown top-level key {sorted(extra)[0]!r}; the policy holds only [principals.NAME] tables",
             key=sorted(extra)[0])
    table = doc.get("principals")
    if not isinstance(table, dict) or not table:
        fail("the policy names no principal: add a [principals.NAME] table")
    out, seen_digest, seen_identity = [], {}, {}
    for name, spec in table.items():
        if not NAME.fullmatch(name) or name == STATIC:
            fail(f"principal name {name!r}: use letters, digits, '.', '_' and '-' (up to 64), not {STATIC!r}", name)
        if not isinstance(spec, dict):
            fail(f"principals.{name} must be a table", name)
        unknown = set(spec) - KEYS
        if unknown:
            key = sorted(unknown)[0]
            fail(f"principals.{name}: unknown key {key!r}; known: {', '.join(sorted(KEYS))}", name, key)
        grants = {}
        for scope in SCOPES:
            globs = spec.get(scope, [])
            if not isinstance(globs, list) or not all(isinstance(g, str) and g for g in globs):
                fail(f"principals.{name}.{scope} must be a list of collection names or globs, like [\"team_*\"]",
                     name, scope)
            for g in globs:
                if not GLOB.fullmatch(g):
                    fail(f"principals.{name}.{scope}: {g!r} can match no collection: names hold only letters, "
                         "digits and '_' (globs add *, ? and [...])", name, scope)
            grants[scope] = tuple(globs)
        digests = _strings(spec, "tokens", name, fail)
        for d in digests:
            if not DIGEST.fullmatch(d):
                fail(f"principals.{name}.tokens: each entry is {PREFIX}<64 hex digits>, as `tandem auth new-token` "
                     "prints it; a token itself never goes in the policy", name, "tokens")
            if d in seen_digest:
                fail(f"principals.{name}.tokens: a digest also listed under {seen_digest[d]!r}", name, "tokens")
            seen_digest[d] = name
        identities = _strings(spec, "mtls", name, fail)
        for i in identities:
            kind, _, value = i.partition(":")
            if kind not in IDENTITY_KINDS or not value:
                fail(f"principals.{name}.mtls: {i!r} must be uri:<SAN URI>, dns:<SAN DNS name> or cn:<common name>",
                     name, "mtls")
            if i in seen_identity:
                fail(f"principals.{name}.mtls: {i!r} is also listed under {seen_identity[i]!r}", name, "mtls")
            seen_identity[i] = name
        if not digests and not identities:
            fail(f"principals.{name} can never authenticate: give it tokens or mtls identities", name)
        out.append((Principal(name, grants, _quota(spec, name, fail)), digests, identities))
    return out


def _strings(spec: dict, key: str, name: str, fail) -> list[str]:
    v = spec.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        fail(f"principals.{name}.{key} must be a list of strings", name, key)
    return v


def _quota(spec: dict, name: str, fail) -> Quota:
    rps, burst, in_flight = spec.get("rps"), spec.get("burst"), spec.get("max_in_flight")
    if rps is not None and (isinstance(rps, bool) or not isinstance(rps, (int, float)) or not 0 < rps < 1e9):
        fail(f"principals.{name}.rps must be a number of requests per second above 0", name, "rps")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1 or rps is None):
        fail(f"principals.{name}.burst must be a whole number of requests, at least 1, beside an rps", name, "burst")
    if in_flight is not None and (isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 1):
        fail(f"principals.{name}.max_in_flight must be a whole number of calls, at least 1", name, "max_in_flight")
    return Quota(float(rps) if rps is not None else None, burst or max(1, int(rps or 1)), in_flight)


def _line(text: str, name: str | None, key: str | None) -> int:
    """The 1-based line a validation error is about: the key inside [principals.NAME], else the table's header
    (tomllib gives no positions for values, only for syntax errors)."""
    lines = text.splitlines()
    start = 0
    if name is not None:
        header = re.compile(r"\s*\[\s*principals\s*\.\s*(\"?)" + re.escape(name) + r"\1\s*\]")
        start = next((i for i, ln in enumerate(lines) if header.match(ln)), None)
        if start is None:  # an inline table: the line that names it
            return next((i + 1 for i, ln in enumerate(lines) if re.search(rf"\b{re.escape(name)}\b", ln)), 1)
    if key is None:
        return start + 1
    key_line = re.compile(r"\s*\"?" + re.escape(key) + r"\"?\s*=")
    for i in range(start + (1 if name is not None else 0), len(lines)):
        if name is not None and i > start and lines[i].lstrip().startswith("["):
            break
        if key_line.match(lines[i]):
            return i + 1
    return start + 1
