"""OpenAI-compatible HTTP oracle (OpenAI, vLLM, llama.cpp server, Ollama, TGI, ...).

One request per pair with ``max_tokens: 1`` and top-5 logprobs; P(Yes) is renormalised over
the Yes/No alternatives (:func:`irene.oracle.base.p_yes_from_logprobs`). ``endpoint="chat"``
posts to ``{base_url}/chat/completions``; ``endpoint="completions"`` posts the chat-formatted
prompt text to ``{base_url}/completions`` (``logprobs: 5``) for servers without chat logprobs.

Transient failures (HTTP 429/5xx, timeouts, connection errors, malformed replies) are retried
with exponential backoff and jitter, honouring ``Retry-After``; after ``max_retries`` retries
an :class:`OracleError` is raised. Other 4xx fail at once. Every request counts against the
``max_calls`` budget (:class:`BudgetExceeded`). Requests run on a thread pool of
``concurrency`` workers.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np

from irene.oracle.base import (
    BudgetExceeded,
    OracleConfig,
    OracleError,
    OracleStats,
    Timed,
    chat_messages,
    format_prompt,
    p_yes_from_logprobs,
)

log = logging.getLogger(__name__)

API_KEY_ENVS = ("IRENE_ORACLE_API_KEY", "OPENAI_API_KEY")


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def api_key(cfg: OracleConfig, environ: dict[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    for name in (cfg.api_key_env, *API_KEY_ENVS):
        if name and env.get(name):
            return env[name]
    return None


def _retry_after(resp: httpx.Response) -> float | None:
    raw = resp.headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None  # HTTP-date form: fall back to our own backoff


def parse_reply(body: Any, endpoint: str, text_fallback: bool) -> tuple[float, int, int]:
    """(relevance, prompt_tokens, completion_tokens) from a reply body; ValueError if malformed."""
    try:
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        logprobs = choice.get("logprobs")
        if endpoint == "chat":
            top = {}
            if logprobs and logprobs.get("content"):
                top = {
                    t["token"]: float(t["logprob"]) for t in logprobs["content"][0]["top_logprobs"]
                }
            text = (choice.get("message") or {}).get("content") or ""
        else:
            tops = (logprobs or {}).get("top_logprobs") or [{}]
            top = {k: float(v) for k, v in tops[0].items()}
            text = choice.get("text") or ""
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"malformed reply: {type(e).__name__}: {e}") from None
    p = p_yes_from_logprobs(top) if top else None
    if p is None and text_fallback:
        word = text.strip().lower().rstrip(".!")
        p = 1.0 if word in ("yes",) else 0.0 if word in ("no",) else None
    if p is None:
        raise ValueError(
            f"reply has no Yes/No answer (text {text[:40]!r}, logprobs {list(top)[:5]})"
        )
    return p, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


class HttpOracle:
    """Relevance oracle backed by an OpenAI-compatible endpoint."""

    def __init__(
        self,
        cfg: OracleConfig,
        client: httpx.Client | None = None,
        sleep=time.sleep,
        environ: dict[str, str] | None = None,
    ) -> None:
        if cfg.endpoint not in ("chat", "completions"):
            raise ValueError(f"endpoint must be 'chat' or 'completions', got {cfg.endpoint!r}")
        self.cfg = cfg
        self.stats = OracleStats()
        self._sleep = sleep
        self._budget_lock = threading.Lock()
        key = api_key(cfg, environ)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = client or httpx.Client(
            base_url=cfg.base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(cfg.timeout_s),
            limits=httpx.Limits(max_connections=max(1, cfg.concurrency)),
        )
        self._pool = ThreadPoolExecutor(max_workers=max(1, cfg.concurrency))

    @property
    def identity(self) -> str:
        return self.cfg.cache_identity() + f"|{self.cfg.endpoint}"

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.client.close()

    def _payload(self, document: str, label: str) -> tuple[str, dict]:
        cfg = self.cfg
        if cfg.endpoint == "chat":
            return "/chat/completions", {
                "model": cfg.model,
                "messages": chat_messages(cfg, document, label),
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": 5,
            }
        sys = f"{cfg.system_prompt}\n\n" if cfg.system_prompt else ""
        prompt = sys + format_prompt(cfg.prompt, document, label, cfg.max_chars) + "\nAnswer:"
        return "/completions", {
            "model": cfg.model,
            "prompt": prompt,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": 5,
        }

    def _take_call(self) -> None:
        with self._budget_lock:
            if self.cfg.max_calls and self.stats.calls >= self.cfg.max_calls:
                raise BudgetExceeded(
                    f"oracle call budget of {self.cfg.max_calls} requests exhausted "
                    f"({self.stats.pairs} pairs scored); raise oracle.max_calls to continue "
                    "(cached answers are kept)"
                )
            self.stats.add(calls=1)

    def _once(self, url: str, payload: dict) -> tuple[float, int, int]:
        self._take_call()
        try:
            resp = self.client.post(url, json=payload)
        except httpx.TimeoutException as e:
            raise _Retryable(f"timeout: {e}") from None
        except httpx.TransportError as e:
            raise _Retryable(f"connection error: {e}") from None
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Retryable(f"HTTP {resp.status_code}", _retry_after(resp))
        if resp.status_code >= 400:
            raise OracleError(f"HTTP {resp.status_code} from {url}: {resp.text[:200]}")
        try:
            return parse_reply(resp.json(), self.cfg.endpoint, self.cfg.text_fallback)
        except ValueError as e:  # includes JSON decode errors
            raise _Retryable(str(e)) from None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cfg = self.cfg
        if retry_after is not None:
            return min(retry_after, cfg.backoff_max_s)
        base = min(cfg.backoff_max_s, cfg.backoff_base_s * 2**attempt)
        return base * (1.0 + 0.5 * random.random())  # noqa: S311 (jitter)

    def score_one(self, document: str, label: str) -> float:
        url, payload = self._payload(document, label)
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            try:
                p, pt, ct = self._once(url, payload)
            except _Retryable as e:
                last = str(e)
                if attempt == self.cfg.max_retries:
                    break
                delay = self._delay(attempt, e.retry_after)
                log.warning(
                    "oracle request failed (%s); retry %d in %.2fs", last, attempt + 1, delay
                )
                self._sleep(delay)
                continue
            cost = (
                pt * self.cfg.usd_per_1k_prompt_tokens + ct * self.cfg.usd_per_1k_completion_tokens
            ) / 1000.0
            self.stats.add(pairs=1, prompt_tokens=pt, completion_tokens=ct, cost_usd=cost)
            return p
        raise OracleError(
            f"oracle request to {self.cfg.base_url}{url} failed after "
            f"{self.cfg.max_retries + 1} attempts: {last}"
        )

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        with Timed(self.stats):
            futures = [self._pool.submit(self.score_one, d, lab) for d, lab in pairs]
            try:
                return np.asarray([f.result() for f in futures], dtype=np.float32)  # (n,)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
