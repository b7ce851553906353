"""Bearer tokens, checked the same way on every transport (constant-time comparison)."""

from __future__ import annotations

import hmac
from pathlib import Path

from tandem.server.config import Config

HINT = "missing or invalid bearer token: send 'authorization: Bearer <token>' (gRPC metadata or an HTTP header)"


class Tokens:
    def __init__(self, tokens: frozenset[str] = frozenset()):
        self._tokens = [t.encode() for t in tokens]

    @classmethod
    def from_config(cls, cfg: Config) -> "Tokens":
        tokens = {t.strip() for t in cfg.auth_tokens.split(",") if t.strip()}
        if cfg.auth_tokens_file:
            lines = Path(cfg.auth_tokens_file).read_text().splitlines()
            tokens |= {ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")}
        return cls(frozenset(tokens))

    @property
    def required(self) -> bool:
        return bool(self._tokens)

    def accepts(self, authorization: str | None) -> bool:
        """Whether an `authorization` header value ("Bearer <token>") names an accepted token."""
        if not authorization or not authorization.startswith("Bearer "):
            return False
        presented = authorization[7:].strip().encode()
        ok = False
        for t in self._tokens:  # every token compared, so timing does not tell which one came close
            ok |= hmac.compare_digest(presented, t)
        return ok
