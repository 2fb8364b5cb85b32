"""Bearer tokens and roles: ``read`` (GET routes), ``submit`` (read and ``POST /orders``),
``operate`` (everything). Tokens come from a file of ``ROLE TOKEN`` lines; they are compared in
constant time and never logged."""

from __future__ import annotations

import hmac
from pathlib import Path

from orderflow.api.errors import HTTPProblem
from orderflow.api.routing import ROLES

_RANK = {role: rank for rank, role in enumerate(ROLES)}
_CHALLENGE = [("www-authenticate", 'Bearer realm="orderflow"')]


class Auth:
    """Args:
    tokens: (role, token) pairs.
    """

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        if not tokens:
            raise ValueError("no tokens")
        self._tokens = [(role, token.encode()) for role, token in tokens]

    @classmethod
    def from_file(cls, path: Path) -> Auth:
        """Tokens from a file of ``ROLE TOKEN`` lines (``#`` starts a comment). Raises
        ValueError naming the line that is wrong (never the token)."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not UTF-8 text") from None
        tokens = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.partition("#")[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or parts[0] not in _RANK:
                raise ValueError(
                    f"{path}, line {number}: expected 'ROLE TOKEN' with ROLE one of"
                    f" {', '.join(ROLES)}"
                )
            if len(parts[1]) < 16:
                raise ValueError(f"{path}, line {number}: a token must be at least 16 characters")
            tokens.append((parts[0], parts[1]))
        if not tokens:
            raise ValueError(f"{path} holds no tokens")
        return cls(tokens)

    def check(self, authorization: str | None, needed: str) -> str:
        """The role of the bearer token in `authorization`; 401 when there is none or it is
        unknown, 403 when its role may not do what `needed` may."""
        if authorization is None or authorization[:7].lower() != "bearer ":
            raise HTTPProblem(
                "unauthorized", "send Authorization: Bearer <token>", headers=_CHALLENGE
            )
        presented = authorization[7:].strip().encode()
        role = None
        for candidate, token in self._tokens:  # every one, so the time says nothing
            if hmac.compare_digest(presented, token):
                role = candidate
        if role is None:
            raise HTTPProblem("unauthorized", "unknown token", headers=_CHALLENGE)
        if _RANK[role] < _RANK[needed]:
            raise HTTPProblem("forbidden", f"a {role} token may not do this (it needs {needed})")
        return role
