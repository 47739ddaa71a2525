"""Bearer-token checks with a constant-time comparison."""

from __future__ import annotations

import hmac
import os

from serve_app.schemas import AuthSettings


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class TokenAuth:
    """Checks ``Authorization: Bearer <token>`` for writes (and reads if ``protect_reads``).

    The expected token comes from the environment variable ``settings.token_env`` (read when
    the replica starts), else from ``settings.token``. With no token configured, writes are
    refused (403) unless ``allow_unauthenticated_writes``; reads then stay open.
    """

    def __init__(self, settings: AuthSettings, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        token = env.get(settings.token_env) or settings.token or None
        self._token = token.encode() if token else None
        self.settings = settings

    @property
    def configured(self) -> bool:
        return self._token is not None

    def check(self, token: str | None, write: bool) -> None:
        """Check a request's bearer token (None when absent); raise ``AuthError`` or return.

        401: no token; 403: wrong token, or writes disabled because none is configured.
        """
        if not write and not self.settings.protect_reads:
            return
        if self._token is None:
            if write and not self.settings.allow_unauthenticated_writes:
                raise AuthError(
                    403,
                    f"writes are disabled: no API token is configured (set {self.settings.token_env} "
                    "or auth.token, or auth.allow_unauthenticated_writes: true for local testing)",
                )
            return
        if not token:
            raise AuthError(401, "missing bearer token (Authorization: Bearer <token>)")
        if not hmac.compare_digest(token.strip().encode(), self._token):
            raise AuthError(403, "invalid token")
