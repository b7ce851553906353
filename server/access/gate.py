"""The gate every call passes, on every transport: who is calling (a bearer token or the client certificate),
whether the policy lets them make this call on these collections, and whether they are within their quota.

A transport opens a `Call` before the request runs, checks each message it reads against the method's rule,
and closes the call when it ends. Denials and admin calls leave one audit line each (never a token);
counters go to Prometheus. The policy is swapped whole on reload, so a call in progress keeps the principal it
was admitted as.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from tandem.server import metrics
from tandem.server.access import policy as policies
from tandem.server.access.policy import Policy, PolicyError, Principal
from tandem.server.access.quotas import OverQuota, Quotas
from tandem.server.access.rules import OPEN, RULES, Rule
from tandem.server.access.tokens import bearer, digest
from tandem.server.errors import Kind, TandemError

log = logging.getLogger("tandem.access")
audit_log = logging.getLogger("tandem.audit")

HINT = ("missing or unknown credentials: send 'authorization: Bearer <token>' (gRPC metadata or an HTTP header), "
        "or a client certificate the access policy names")


class Denied(TandemError):
    """A call the gate refused: UNAUTHENTICATED, PERMISSION_DENIED or RESOURCE_EXHAUSTED (a quota)."""

    def __init__(self, message: str, kind: Kind, reason: str, retry_after: float | None = None):
        super().__init__(message, kind)
        self.reason, self.retry_after = reason, retry_after


@dataclass(eq=False)
class Call:
    method: str
    transport: str
    peer: str
    principal: Principal
    rule: Rule
    collections: list[str] = field(default_factory=list)
    admin: bool = False
    counted: bool = False  # inside the principal's quotas until closed
    scoped: bool = False  # the method's scope has been checked
    audited: bool = False


# The call being served, for what answers depend on the caller (ListCollections shows what it may read).
CALLER: contextvars.ContextVar[Call | None] = contextvars.ContextVar("tandem_caller", default=None)


def readable(names: Iterable[str]) -> list[str]:
    """The collections the current caller may read (all of them when auth is off)."""
    call = CALLER.get()
    if call is None:
        return list(names)
    return [n for n in names if call.principal.may(policies.READ, n)]


def grants() -> tuple[str, dict[str, tuple[str, ...]]]:
    """The current caller's principal and its collection globs per scope ("", every scope on "*" when auth is
    off): what InfoResponse.caller reports."""
    call = CALLER.get()
    if call is None:
        return "", {scope: ("*",) for scope in policies.SCOPES}
    return call.principal.name, {scope: tuple(call.principal.grants.get(scope, ())) for scope in policies.SCOPES}


class Gate:
    def __init__(self, path: str = "", tokens: set[str] = frozenset(), exempt_health: bool = True):
        self.path, self.tokens, self.exempt_health = path, set(tokens), exempt_health
        self.policy: Policy | None = None
        self.quotas = Quotas()
        self._stamp = _stamp(path) if path else None
        if path:
            self.policy = policies.load(path, self.tokens)  # a bad file fails start-up (PolicyError)
        elif self.tokens:
            self.policy = policies.build(policies.static(self.tokens))
        self.loaded_at = time.time()
        self._denied = {r: metrics.AUTH_DENIED.labels(r) for r in metrics.DENY_REASONS}
        _export_quotas(self.policy)

    @classmethod
    def from_config(cls, cfg) -> "Gate":
        from pathlib import Path

        tokens = {t.strip() for t in cfg.auth_tokens.split(",") if t.strip()}
        if cfg.auth_tokens_file:
            lines = Path(cfg.auth_tokens_file).read_text().splitlines()
            tokens |= {ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")}
        return cls(cfg.auth_policy, tokens, cfg.auth_exempt_health)

    @property
    def required(self) -> bool:
        return self.policy is not None

    # -- reload ---------------------------------------------------------------------------------------------

    def reload(self, why: str = "SIGHUP") -> bool:
        """Load the file again; on any error keep the policy in force and say so (with the line)."""
        if not self.path:
            log.info("%s: no access policy file to reload (--auth-policy is not set)", why)
            return False
        self._stamp = _stamp(self.path)
        try:
            new = policies.load(self.path, self.tokens)
        except PolicyError as exc:
            metrics.POLICY_RELOADS.labels("rejected").inc()
            log.error("access policy not reloaded (%s): %s; the policy loaded at %s stays in force", why, exc,
                      time.strftime("%H:%M:%S", time.localtime(self.loaded_at)))
            return False
        self.policy, self.loaded_at = new, time.time()
        _export_quotas(new)
        metrics.POLICY_RELOADS.labels("loaded").inc()
        log.info("access policy reloaded (%s) from %s: %d principals", why, self.path, len(new.principals))
        return True

    async def watch(self, every: float = 1.0) -> None:
        """Reload when the file changes (its mtime, size or inode: an editor's save or a ConfigMap's swap)."""
        while True:
            await asyncio.sleep(every)
            stamp = await asyncio.to_thread(_stamp, self.path)
            if stamp != self._stamp:
                self.reload("file changed")

    # -- calls ----------------------------------------------------------------------------------------------

    def open(self, method: str, transport: str, peer: str, authorization: list[str],
             identities: Callable[[], list[str]], rule: Rule | None = None) -> Call | None:
        """Authenticate the caller and count the call into its quotas. None when auth is off or the method is
        exempt; raises Denied otherwise. `authorization`: every value the call carried (header or metadata);
        what the call may touch is `check`ed next."""
        policy = self.policy
        if policy is None:
            return None
        rule = rule or RULES.get(method)
        if rule is None:
            if not method.startswith(("/grpc.health.v1.Health/", "/grpc.reflection.")):
                self._deny(method, transport, peer, Kind.PERMISSION_DENIED, "no_rule",
                           f"{method} has no access rule; it is served to nobody")
            if self.exempt_health:
                return None
            rule = OPEN
        if len(authorization) > 1:  # a proxy may read one and us another: never guess which is meant
            self._deny(method, transport, peer, Kind.UNAUTHENTICATED, "malformed",
                       f"{len(authorization)} authorization values: send exactly one")
        principal, reason = self._authenticate(policy, authorization[0] if authorization else None, identities)
        if principal is None:
            self._deny(method, transport, peer, Kind.UNAUTHENTICATED, reason, HINT)
        call = Call(method, transport, peer, principal, rule, admin=rule.scope == policies.ADMIN)
        try:
            call.counted = self.quotas.enter(principal)
        except OverQuota as e:
            metrics.QUOTA_REJECTED.labels(principal.name, e.quota).inc()
            raise Denied(e.message, Kind.RESOURCE_EXHAUSTED, "quota", e.retry_after) from None
        return call

    def check(self, call: Call | None, message=None) -> None:
        """The method's scope (once), then the collections `message` names against the caller's grants. A client
        stream is checked with no message first, then with each message it reads."""
        if call is None:
            return
        needs = list(call.rule.needs(message)) if message is not None and call.rule.needs is not None else []
        for _, collection in needs:
            if collection not in call.collections:
                call.collections.append(collection)
        p = call.principal
        if not call.scoped:
            call.scoped = True
            if call.rule.scope is not None and not p.holds(call.rule.scope):
                self._refuse(call, "scope", f"principal {p.name!r} lacks the {call.rule.scope!r} scope that "
                                            f"{call.method} needs")
        for scope, collection in needs:
            call.admin = call.admin or scope == policies.ADMIN
            if not p.may(scope, collection):
                self._refuse(call, "collection", f"principal {p.name!r} may not {scope} collection {collection!r}",
                             collection)

    def _refuse(self, call: Call, reason: str, message: str, collection: str | None = None):
        """A known principal without the right. The audit line names the collection refused (a stream may have
        named others before it)."""
        call.audited = True
        self._denied[reason].inc()
        _audit(call.transport, call.method, call.peer, call.principal.name,
               [collection] if collection else call.collections, Kind.PERMISSION_DENIED.name, reason)
        raise Denied(message, Kind.PERMISSION_DENIED, reason)

    def close(self, call: Call | None, outcome: str) -> None:
        if call is None:
            return
        if call.counted:
            self.quotas.leave(call.principal)
        if call.admin and not call.audited:
            _audit(call.transport, call.method, call.peer, call.principal.name, call.collections, outcome, None)

    def _authenticate(self, policy: Policy, authorization: str | None, identities) -> tuple[Principal | None, str]:
        if authorization:
            token = bearer(authorization)
            if token is None:
                return None, "malformed"
            # A dict lookup by digest: its timing depends only on the digest of what the caller sent, from which
            # no stored digest can be steered toward (SHA-256 preimages), so it leaks nothing about a token.
            p = policy.by_digest.get(digest(token))
            return (p, "") if p is not None else (None, "unknown_token")
        if policy.uses_identities:
            ids = identities()
            for i in ids:
                p = policy.by_identity.get(i)
                if p is not None:
                    return p, ""
            if ids:
                return None, "unknown_identity"
        return None, "no_credentials"

    def _deny(self, method: str, transport: str, peer: str, kind: Kind, reason: str, message: str):
        """A refusal before there is a Call (unknown caller, unknown method)."""
        self._denied[reason].inc()
        _audit(transport, method, peer, None, [], kind.name, reason)
        raise Denied(message, kind, reason)


def _export_quotas(policy: Policy | None) -> None:
    """Zeros for every quota the policy sets, so rate() and the dashboard see the series before a rejection."""
    for p in policy.principals if policy else ():
        for quota, limit in (("rps", p.quota.rps), ("max_in_flight", p.quota.max_in_flight)):
            if limit is not None:
                metrics.QUOTA_REJECTED.labels(p.name, quota)


def _audit(transport: str, method: str, peer: str, principal: str | None, collections: list[str], outcome: str,
           reason: str | None) -> None:
    """One JSON line per denied or admin call. Never a credential: the principal's name stands for it."""
    entry = {"event": "access", "transport": transport, "method": method, "principal": principal,
             "collection": collections[0] if len(collections) == 1 else (collections or None),
             "outcome": outcome, "peer": peer}
    if reason:
        entry["reason"] = reason
    audit_log.info(json.dumps(entry, ensure_ascii=False))


def _stamp(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def cert_identities(cert: dict | None) -> list[str]:
    """Identities of a client certificate as Python's ssl module gives it (getpeercert()): SAN URIs, SAN DNS
    names, then the subject's common name, in the forms the policy's `mtls` lists use."""
    if not cert:
        return []
    sans = cert.get("subjectAltName", ())
    out = [f"uri:{v}" for k, v in sans if k == "URI"] + [f"dns:{v}" for k, v in sans if k == "DNS"]
    out += [f"cn:{v}" for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    return out


def grpc_identities(context) -> list[str]:
    """The same identities from a gRPC call's auth context (empty without a client certificate)."""
    ac = context.auth_context()
    out = [f"uri:{v.decode()}" for v in ac.get("peer_uri", ())] + [f"dns:{v.decode()}" for v in ac.get("peer_dns", ())]
    return out + [f"cn:{v.decode()}" for v in ac.get("x509_common_name", ())]
