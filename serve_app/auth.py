"""Bearer tokens: who a request is (:class:`Principal`), and what it may do (scopes, tenant).

Tokens are stored hashed: an entry is ``{"name", "sha256", "scopes", "tenant"}`` where
``sha256`` is the hex SHA-256 of the token's UTF-8 bytes (``irene token new`` makes a token and
its entry). Sources, merged (see :class:`serve_app.schemas.AuthSettings`):

- the environment variable ``auth.tokens_env`` (default ``IRENE_API_TOKENS``): a JSON list of
  entries, read when the replica starts;
- the file ``auth.tokens_file``: a JSON (``*.json``) or YAML list of entries, e.g. a mounted
  Kubernetes Secret, re-read when its mtime / size / inode changes (checked at most every
  ``auth.reload_s`` seconds), so tokens are added and revoked without a restart;
- the legacy single token (``auth.token_env``, else ``auth.token``): all scopes, no tenant.

Scopes are ``read``, ``write`` and ``admin``, and none implies another: an entry lists every
scope it grants (``["read", "write"]`` for a client that reads and writes). The legacy single
token gets all three. When reads are not protected (``protect_reads: false``) everyone may
read: a request without a token is :data:`ANONYMOUS` (read, no tenant), and every token's
principal gets ``read`` added.

A token presented with a request is always checked, also on an open read: an unknown token is
403 rather than a silent downgrade to anonymous, so a tenant's client with a revoked token
learns it instead of reading outside its tenant. (With no token configured at all there is
nothing to check against: a presented token is ignored, as before.)

No token value is ever stored, logged or put in an error message: the object keeps digests
only, and errors name entries by their ``name`` and position.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from irene.tokens import (
    SCOPES,
    AuthConfigError,
    TokenEntry,
    hash_token,
    parse_entries,
)
from serve_app.schemas import AuthSettings

log = logging.getLogger(__name__)

MISSING_TOKEN = "missing bearer token (Authorization: Bearer <token>)"
LEGACY_NAME = "legacy"


class AuthError(Exception):
    """A refused request: ``status`` 401 (no token) or 403 (unknown token, missing scope)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Principal:
    """Who a request is. ``scopes`` ⊆ {"read", "write", "admin"}, listed explicitly (admin
    does not imply write, write does not imply read; only the legacy single token gets all
    three). ``tenant``: the only tenant it may see and write (None: every tenant).
    ``authenticated``: False for the principal of a request without a token. Holds no secret."""

    name: str
    scopes: frozenset[str]
    tenant: str | None = None
    authenticated: bool = True

    def __post_init__(self) -> None:
        scopes = frozenset(self.scopes)
        unknown = scopes - set(SCOPES)
        if unknown:
            raise ValueError(f"unknown scopes {sorted(unknown)}: {', '.join(SCOPES)}")
        object.__setattr__(self, "scopes", scopes)

    def has(self, scope: str) -> bool:
        return scope in self.scopes


ANONYMOUS = Principal("anonymous", frozenset({"read"}), None, authenticated=False)


class _Token(NamedTuple):
    digest: str
    principal: Principal


def _load_env(environ: Mapping[str, str], var: str) -> list[TokenEntry]:
    text = environ.get(var, "")
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:  # the message has a position, never the text
        raise AuthConfigError(f"{var}: not valid JSON ({e.msg} at char {e.pos})") from None
    return parse_entries(data, var)


def _load_file(path: str) -> list[TokenEntry]:
    """Entries of ``tokens_file``; the error names the file and the problem, not its text."""
    where = f"tokens_file {path}"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise AuthConfigError(
            f"{where}: cannot read it ({e.strerror or type(e).__name__})"
        ) from None
    except UnicodeDecodeError:
        raise AuthConfigError(f"{where}: not UTF-8 text") from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise AuthConfigError(
                f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
            ) from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            # problem and position only: str(e) quotes the offending line, which may hold a secret
            problem = getattr(e, "problem", None) or type(e).__name__
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
            raise AuthConfigError(f"{where}: not valid YAML ({problem}{at})") from None
        if data is None:  # an empty file: no tokens
            data = []
    return parse_entries(data, where)


# --------------------------------------------------------------------------- TokenAuth
class TokenAuth:
    """Authenticates ``Authorization: Bearer <token>`` and checks scopes.

    ``authenticate(token)`` -> the :class:`Principal` (401 without a token when one is
    needed, 403 for an unknown one); ``require(principal, scope)`` -> 403 when it lacks the
    scope; ``check(token, write)`` does both for the routes. Bad entries at startup raise
    :class:`AuthConfigError`; a ``tokens_file`` that later fails to load keeps the previous
    set and logs an error (a file that disappears too: revoke tokens by rewriting it).

    With no token configured at all (no legacy token, no entries in ``tokens_env``, no
    ``tokens_file``) every request is anonymous: reads stay open (even with
    ``protect_reads``), and writes are refused (403) unless ``allow_unauthenticated_writes``.
    """

    def __init__(
        self,
        settings: AuthSettings,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        legacy = env.get(settings.token_env) or settings.token or None
        static = _load_env(env, settings.tokens_env)
        n_env = len(static)
        if legacy and legacy.strip():
            static.append(
                TokenEntry(
                    LEGACY_NAME,
                    hash_token(legacy),
                    frozenset(SCOPES),
                    None,
                    f"{settings.token_env} / auth.token",
                )
            )
        del legacy
        # the plaintext legacy token is not kept (its digest is): a redacted copy of the settings
        self.settings = settings.model_copy(update={"token": None})
        self._static = tuple(static)
        self._clock = clock
        self._lock = threading.Lock()
        self._file = settings.tokens_file
        self._file_sig: tuple | None = None
        self._file_entries: tuple[TokenEntry, ...] = ()
        self._next_check = 0.0
        if self._file is not None:
            self._file_sig = _signature(self._file)
            self._file_entries = tuple(_load_file(self._file))
        self._table = self._build(self._static + self._file_entries)
        self._next_check = clock() + settings.reload_s
        if not settings.allow_unauthenticated_writes or self.configured:
            self._anonymous = ANONYMOUS
        else:
            self._anonymous = Principal("anonymous", frozenset({"read", "write"}), None, False)
        if self.configured:
            log.info(
                "auth: %d token(s): %d from %s%s%s",
                len(self._table),
                n_env,
                settings.tokens_env,
                f", {len(self._file_entries)} from {self._file}" if self._file else "",
                ", the legacy single token" if len(static) > n_env else "",
            )
        if any(t.principal.tenant for t in self._table.values()) and not settings.protect_reads:
            log.warning(
                "auth: tokens have tenants but reads are not protected: a request without a "
                "token reads every tenant's items (set auth.protect_reads: true)"
            )

    # ----------------------------------------------------------------- public
    @property
    def configured(self) -> bool:
        """Whether tokens are in use: a legacy token, env entries, or a ``tokens_file`` (even
        an empty one: then every token is refused, nothing is open)."""
        return bool(self._static) or self._file is not None

    def authenticate(self, token: str | None) -> Principal:
        """The principal of a request's bearer token (None / empty: no token).

        No token: :data:`ANONYMOUS` when reads are open, else 401. A token: its principal,
        or 403 when no entry has its digest (also on open reads: see the module doc)."""
        self._maybe_reload()
        token = token.strip() if token else None
        if not self.configured:
            return self._anonymous  # nothing to check a token against
        if not token:
            if self.settings.protect_reads:
                raise AuthError(401, MISSING_TOKEN)
            return self._anonymous
        digest = hash_token(token)
        found = self._table.get(digest)
        if found is None or not hmac.compare_digest(found.digest, digest):
            log.debug("auth: refused an unknown bearer token")
            raise AuthError(403, "invalid token")
        return found.principal

    def require(self, principal: Principal, scope: str) -> Principal:
        """``principal`` if it has ``scope``; else 401 (no token was given), or 403."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}: {', '.join(SCOPES)}")
        if scope in principal.scopes:
            return principal
        if not principal.authenticated:
            if not self.configured:
                what = "writes are" if scope == "write" else f"{scope} requests are"
                raise AuthError(
                    403,
                    f"{what} disabled: no API token is configured (set "
                    f"{self.settings.token_env} or auth.token, {self.settings.tokens_env} or "
                    "auth.tokens_file, or auth.allow_unauthenticated_writes: true for local "
                    "testing)",
                )
            raise AuthError(401, MISSING_TOKEN)
        raise AuthError(403, f"token '{principal.name}' lacks the '{scope}' scope")

    def check(self, token: str | None, write: bool) -> Principal:
        """``require(authenticate(token), "write" if write else "read")``: the principal, or
        ``AuthError`` (401 no token, 403 unknown token / missing scope / writes disabled)."""
        return self.require(self.authenticate(token), "write" if write else "read")

    def reload(self) -> bool:
        """Re-read ``tokens_file`` now; True if its entries were applied. A file that fails
        to load (or is gone) keeps the current set and logs an error."""
        if self._file is None:
            return False
        with self._lock:
            return self._reload_locked()

    def __repr__(self) -> str:
        return (
            f"TokenAuth(tokens={len(self._table)}, tokens_file={self._file!r}, "
            f"protect_reads={self.settings.protect_reads})"
        )

    # ----------------------------------------------------------------- internals
    def _maybe_reload(self) -> None:
        if self._file is None or self._clock() < self._next_check:
            return
        if not self._lock.acquire(blocking=False):
            return  # another thread is checking: use the current set
        try:
            self._next_check = self._clock() + self.settings.reload_s
            sig = _signature(self._file)
            if sig != self._file_sig:
                self._reload_locked(sig)
        finally:
            self._lock.release()

    def _reload_locked(self, sig: tuple | None = None) -> bool:
        path = self._file
        assert path is not None
        # recorded before loading: a bad version is reported once, not at every check
        self._file_sig = _signature(path) if sig is None else sig
        try:
            if self._file_sig is None:
                raise AuthConfigError(f"tokens_file {path}: missing")
            entries = tuple(_load_file(path))
            table = self._build(self._static + entries)
        except AuthConfigError as e:
            log.error("auth: %s; keeping the previous %d token(s)", e, len(self._table))
            return False
        old = {t.principal.name for t in self._table.values()}
        self._file_entries, self._table = entries, table
        new = {t.principal.name for t in table.values()}
        log.info(
            "auth: reloaded tokens_file %s: %d token(s) (added %s, removed %s)",
            path,
            len(table),
            sorted(new - old) or "none",
            sorted(old - new) or "none",
        )
        return True

    def _build(self, entries: Iterable[TokenEntry]) -> dict[str, _Token]:
        open_reads = not self.settings.protect_reads
        table: dict[str, _Token] = {}
        sources: dict[str, TokenEntry] = {}
        for e in entries:
            if e.tenant is not None and self.settings.tenant_field is None:
                raise AuthConfigError(
                    f"{e.source} ('{e.name}'): tenant: set, but auth.tenant_field (the metadata "
                    "key holding an item's tenant) is not"
                )
            if e.sha256 in sources:
                first = sources[e.sha256]
                raise AuthConfigError(
                    f"{e.source} ('{e.name}'): sha256: duplicate of {first.source} "
                    f"('{first.name}'): one token, two entries"
                )
            sources[e.sha256] = e
            scopes = e.scopes | {"read"} if open_reads else e.scopes
            table[e.sha256] = _Token(e.sha256, Principal(e.name, scopes, e.tenant))
        return table


def _signature(path: str) -> tuple | None:
    """What changes when the file does (None: it is missing); follows symlinks, so a mounted
    Secret's ``..data`` swap changes the inode."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
