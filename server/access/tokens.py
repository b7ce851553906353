"""Bearer tokens as the policy stores them: only a SHA-256 digest, never the token itself."""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "sha256:"


def new_token() -> str:
    """A fresh token: 256 random bits, URL-safe, with a prefix that secret scanners and people recognise."""
    return "tdm_" + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    """The form a policy file stores. A plain SHA-256 suffices: tokens are random, so there is nothing to guess
    from the digest (a password would need a slow hash)."""
    return PREFIX + hashlib.sha256(token.encode()).hexdigest()


def bearer(authorization: str | None) -> str | None:
    """The token of an `authorization: Bearer <token>` value; None when absent or in another scheme."""
    if not authorization or authorization[:7].lower() != "bearer ":
        return None
    return authorization[7:].strip() or None
