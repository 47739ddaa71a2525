"""API token entries: how a token is stored (hashed), made and validated.

An entry is ``{"name", "sha256", "scopes", "tenant"}``: ``sha256`` is the hex SHA-256 of the
token's UTF-8 bytes, never the token. ``irene token new`` makes a token and its entry; the
Serve app's ``serve_app.auth`` checks requests against the entries.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SCOPES = ("read", "write", "admin")
ENTRY_FIELDS = ("name", "sha256", "scopes", "tenant")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:/-]{0,63}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_SHOWABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,19}")  # short words: never a token


class AuthConfigError(ValueError):
    """Bad token entries or auth settings; the message names the source, entry and field."""


@dataclass(frozen=True)
class TokenEntry:
    """One hashed token: ``source`` says where it came from (for messages), e.g.
    ``tokens_file /etc/irene/tokens.yaml entry 2`` (entries are numbered from 1)."""

    name: str
    sha256: str
    scopes: frozenset[str]
    tenant: str | None
    source: str = field(default="", compare=False)

    def as_json(self) -> dict[str, Any]:
        """The entry as stored in ``tokens_env`` / ``tokens_file``."""
        scopes = [s for s in SCOPES if s in self.scopes]
        return {"name": self.name, "sha256": self.sha256, "scopes": scopes, "tenant": self.tenant}


# --------------------------------------------------------------------------- entries
def hash_token(token: str) -> str:
    """Hex SHA-256 of the token's UTF-8 bytes (surrounding whitespace stripped)."""
    return hashlib.sha256(token.strip().encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    """A fresh random token (32 random bytes, URL-safe base64: 43 characters)."""
    return secrets.token_urlsafe(32)


def show(value: Any) -> str:
    """``value`` for an error message when it cannot be a secret (a short word), else its type."""
    if isinstance(value, str):
        return repr(value) if _SHOWABLE.fullmatch(value) else "a string"
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    return f"a {type(value).__name__}"


def parse_scopes(scopes: str | Iterable[Any]) -> frozenset[str]:
    """``"read,write"`` or ``["read", "write"]`` -> the scopes; ``ValueError`` names a bad one."""
    if isinstance(scopes, str):
        items: list[Any] = [s.strip() for s in scopes.split(",") if s.strip()]
    elif isinstance(scopes, list | tuple | set | frozenset):
        items = list(scopes)
    else:
        raise ValueError(f"must be a list of {', '.join(SCOPES)} (got {show(scopes)})")
    if not items:
        raise ValueError(f"must list at least one of {', '.join(SCOPES)}")
    for s in items:
        if s not in SCOPES:
            raise ValueError(f"{show(s)} is not one of {', '.join(SCOPES)}")
    return frozenset(items)


def check_entry(raw: Any, where: str = "") -> TokenEntry:
    """Validate one entry (a mapping); ``AuthConfigError`` names ``where`` and the field."""
    prefix = f"{where}: " if where else ""
    if not isinstance(raw, Mapping):
        raise AuthConfigError(f"{prefix}must be an object with {', '.join(ENTRY_FIELDS)}")
    unknown = [k for k in raw if k not in ENTRY_FIELDS]
    if unknown:
        shown = ", ".join(show(k) for k in unknown)
        hint = ""
        if "token" in unknown:
            hint = " (store the token's sha256, never the token: irene token new / token hash)"
        raise AuthConfigError(
            f"{prefix}unknown field {shown}; an entry has {', '.join(ENTRY_FIELDS)}{hint}"
        )
    for key in ("name", "sha256", "scopes"):
        if key not in raw:
            raise AuthConfigError(f"{prefix}{key}: missing")
    name = raw["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise AuthConfigError(
            f"{prefix}name: must be 1-64 letters, digits or _ . @ : / -, starting with a letter "
            "or digit"
        )
    digest = raw["sha256"]
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        got = f"{len(digest)} characters" if isinstance(digest, str) else show(digest)
        raise AuthConfigError(
            f"{prefix}sha256: must be the 64 hex characters of the token's SHA-256 (got {got})"
        )
    if isinstance(raw["scopes"], str):
        raise AuthConfigError(f"{prefix}scopes: must be a list, e.g. [read, write]")
    try:
        scopes = parse_scopes(raw["scopes"])
    except ValueError as e:
        raise AuthConfigError(f"{prefix}scopes: {e}") from None
    tenant = raw.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or not tenant.strip()):
        raise AuthConfigError(f"{prefix}tenant: must be a non-empty string or null")
    if tenant is not None and len(tenant) > 256:
        raise AuthConfigError(f"{prefix}tenant: longer than 256 characters")
    return TokenEntry(name, digest.lower(), scopes, tenant, where)


def parse_entries(data: Any, where: str) -> list[TokenEntry]:
    """A list of raw entries -> entries (``where``: the source, for messages)."""
    if not isinstance(data, list):
        raise AuthConfigError(f"{where}: must be a list of token entries (got {show(data)})")
    return [check_entry(raw, f"{where} entry {i}") for i, raw in enumerate(data, 1)]


def token_entry(
    token: str, name: str, scopes: str | Iterable[str], tenant: str | None = None
) -> dict[str, Any]:
    """The stored entry of ``token`` (its sha256, never the token); ``AuthConfigError``
    names a bad field."""
    try:
        scope_set = parse_scopes(scopes)
    except ValueError as e:
        raise AuthConfigError(f"scopes: {e}") from None
    raw = {"name": name, "sha256": hash_token(token), "scopes": sorted(scope_set), "tenant": tenant}
    return check_entry(raw).as_json()
