"""API tokens: each is scoped to one project and stored only as a sha256 hash.

A token is ``stm_`` + 43 url-safe characters (256 random bits), so a plain sha256 suffices
(no salt/slow hash needed: there is nothing to brute-force). Lookup is by the hash's unique
index; the stored hash is then compared with :func:`hmac.compare_digest` so the comparison
itself is constant-time. The first characters are kept as ``prefix`` for ``token list``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from monitor.store import models as m
from monitor.store.codec import aware, utcnow
from monitor.store.errors import NotFound

TOKEN_PREFIX = "stm_"
DISPLAY_PREFIX_LEN = 12


@dataclass(frozen=True)
class Project:
    id: int
    name: str


@dataclass(frozen=True)
class TokenInfo:
    id: int
    project: str
    prefix: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class TokensMixin:
    """Methods on :class:`monitor.store.Store` for tokens."""

    def create_token(self, project: str, label: str | None = None) -> tuple[str, TokenInfo]:
        """A new token for ``project`` (created if missing); returns (plaintext, info). The
        plaintext is not stored anywhere: this is the only time it exists."""
        token = new_token()
        now = utcnow()
        with self._write() as conn:
            pid = self._ensure_project(conn, project)
            tid = conn.execute(
                m.tokens.insert()
                .values(
                    project_id=pid,
                    token_hash=hash_token(token),
                    prefix=token[:DISPLAY_PREFIX_LEN],
                    label=label,
                    created_at=now,
                )
                .returning(m.tokens.c.id)
            ).scalar_one()
        return token, TokenInfo(tid, project, token[:DISPLAY_PREFIX_LEN], label, now, None)

    def resolve_token(self, token: str) -> Project | None:
        """The project of an active token, or None (unknown, revoked, malformed)."""
        if not token or len(token) > 256:
            return None
        digest = hash_token(token)
        with self._read() as conn:
            row = conn.execute(
                select(m.tokens.c.token_hash, m.tokens.c.revoked_at, m.projects.c.id, m.projects.c.name)
                .join(m.projects, m.projects.c.id == m.tokens.c.project_id)
                .where(m.tokens.c.token_hash == digest)
            ).one_or_none()
        if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked_at is not None:
            return None
        return Project(row.id, row.name)

    def list_tokens(self, project: str | None = None) -> list[TokenInfo]:
        q = (
            select(m.tokens, m.projects.c.name.label("project"))
            .join(m.projects, m.projects.c.id == m.tokens.c.project_id)
            .order_by(m.tokens.c.id)
        )
        if project is not None:
            q = q.where(m.projects.c.name == project)
        with self._read() as conn:
            rows = conn.execute(q).all()
        return [
            TokenInfo(r.id, r.project, r.prefix, r.label, aware(r.created_at), aware(r.revoked_at))
            for r in rows
        ]

    def revoke_token(self, id_or_prefix: str) -> TokenInfo:
        """Revoke by numeric id, display prefix, or the full token. Idempotent."""
        with self._write() as conn:
            q = select(m.tokens.c.id)
            if id_or_prefix.isdigit():
                q = q.where(m.tokens.c.id == int(id_or_prefix))
            elif len(id_or_prefix) > DISPLAY_PREFIX_LEN:
                q = q.where(m.tokens.c.token_hash == hash_token(id_or_prefix))
            else:
                q = q.where(m.tokens.c.prefix == id_or_prefix)
            ids = conn.execute(q).scalars().all()
            if not ids:
                raise NotFound(f"no token matches {id_or_prefix!r}")
            if len(ids) > 1:
                raise NotFound(f"{id_or_prefix!r} matches {len(ids)} tokens; revoke by id instead")
            conn.execute(
                m.tokens.update()
                .where(m.tokens.c.id == ids[0], m.tokens.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        return next(t for t in self.list_tokens() if t.id == ids[0])

    def has_active_tokens(self) -> bool:
        with self._read() as conn:
            return (
                conn.execute(select(m.tokens.c.id).where(m.tokens.c.revoked_at.is_(None)).limit(1)).first()
                is not None
            )
