"""In-test helpers: a scripted OpenAI-compatible server on 127.0.0.1 and a fake oracle."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from irene.oracle.base import OracleStats


def chat_reply(p_yes: float, prompt_tokens: int = 20) -> dict:
    ly, ln = float(np.log(p_yes)), float(np.log1p(-p_yes))
    return {
        "choices": [
            {
                "message": {"role": "assistant", "content": "Yes" if p_yes >= 0.5 else "No"},
                "logprobs": {
                    "content": [
                        {
                            "token": "Yes",
                            "logprob": ly,
                            "top_logprobs": [
                                {"token": "Yes", "logprob": ly},
                                {"token": "No", "logprob": ln},
                                {"token": "Maybe", "logprob": -9.0},
                            ],
                        }
                    ]
                },
            }
        ],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1},
    }


class ScriptedServer:
    """Serves POST /v1/chat/completions and /v1/completions.

    ``script`` is a list of actions consumed one per request (then ``default``):
    ``("ok", p)``, ``("status", code, retry_after|None)``, ``("sleep", seconds)`` (then ok),
    ``("raw", text)`` (a 200 with a malformed body).
    """

    def __init__(self, default: tuple = ("ok", 0.8)) -> None:
        self.script: list[tuple] = []
        self.default = default
        self.requests: list[dict] = []
        self.times: list[float] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(
                        {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
                    )
                    server.times.append(time.monotonic())
                    action = server.script.pop(0) if server.script else server.default
                kind = action[0]
                if kind == "status":
                    self.send_response(action[1])
                    if action[2] is not None:
                        self.send_header("Retry-After", str(action[2]))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if kind == "sleep":
                    time.sleep(action[1])
                    action = ("ok", 0.8)
                if kind == "raw":
                    payload = action[1].encode()
                elif self.path.endswith("/completions") and "chat" not in self.path:
                    p = action[1]
                    payload = json.dumps(
                        {
                            "choices": [
                                {
                                    "text": " Yes",
                                    "logprobs": {
                                        "top_logprobs": [
                                            {" Yes": float(np.log(p)), " No": float(np.log1p(-p))}
                                        ]
                                    },
                                }
                            ],
                            "usage": {"prompt_tokens": 10, "completion_tokens": 1},
                        }
                    ).encode()
                else:
                    payload = json.dumps(chat_reply(action[1])).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class KeywordOracle:
    """Deterministic fake oracle: relevance = share of the label's words found in the doc."""

    identity = "fake-keyword-oracle"

    def __init__(self) -> None:
        self.stats = OracleStats()

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        out = []
        for doc, label in pairs:
            words = label.split()
            out.append(sum(w in doc.split() for w in words) / max(len(words), 1))
        self.stats.add(calls=1, pairs=len(pairs), prompt_tokens=10 * len(pairs))
        return np.asarray(out, dtype=np.float32)
