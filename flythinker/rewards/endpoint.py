"""One client for every API judge in the library: an OpenAI-compatible chat-completions endpoint.

OpenAI, any hosted model behind the same protocol, or a local ``vllm serve`` all speak it. The
client sends ``POST <url>`` with ``{"model", "messages", **params}`` and reads
``choices[0].message.content``. One retry policy, one cache, bounded concurrency:

* **Key** — from the environment variable ``api_key_env`` (``Authorization: Bearer``); never from
  a command line or a file. ``api_key_env=None`` sends no key (a local server).
* **Retries** — transport errors, timeouts, HTTP 408 / 409 / 429 / 5xx and replies that are not a
  chat completion are retried up to ``max_retries`` times, sleeping
  ``min(max_backoff_s, backoff_s · 2^attempt)`` (or the server's numeric ``Retry-After``).
  HTTP 400 / 401 / 403 / 404 stop the run at once (:class:`EndpointFatalError`): a wrong key,
  model or URL fails every request the same way.
* **Cache** — every completed reply is stored on disk under
  ``sha256(url, model, messages, params)`` (one JSON file per request, written atomically), so a
  resumed or repeated run never pays for the same request twice. Replies whose *content* a judge
  cannot parse are cached too: with deterministic decoding the same request gives the same reply.
* **Concurrency** — :meth:`ChatEndpoint.complete_many` keeps at most ``concurrency`` requests in
  flight and returns results in input order, an :class:`EndpointError` in place of a request
  that failed after its retries.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class EndpointError(RuntimeError):
    """A request that failed after its retries (its message says why)."""


class EndpointFatalError(EndpointError):
    """A request the server refused in a way retrying cannot fix (bad key, model, URL or body)."""


def chat_url(url: str) -> str:
    """``url`` itself when it ends in ``/chat/completions``, else ``url + "/chat/completions"``."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class ChatEndpoint:
    """Args:
    url: the server (``http://host:8000/v1``) or its full ``…/chat/completions`` address.
    model: the model name sent with every request.
    api_key_env: environment variable holding the key, or ``None`` for a server without one.
    cache_dir: folder of the response cache (``None``: no cache).
    max_retries, backoff_s, max_backoff_s: the retry policy (see the module docstring).
    concurrency: requests in flight at most in :meth:`complete_many`.
    timeout_s: per-request timeout.
    sleep: the backoff sleep (tests pass a recorder).
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        cache_dir: str | Path | None = None,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        concurrency: int = 4,
        timeout_s: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--judge-endpoint {url!r}: expected an http:// or https:// URL")
        if not model:
            raise ValueError("--judge-model: the endpoint needs a model name")
        if max_retries < 0 or concurrency < 1 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError(
                "endpoint settings: max_retries >= 0, concurrency >= 1, timeout_s > 0 and backoff_s >= 0"
            )
        self.url = chat_url(url)
        self.model = model
        self.api_key: str | None = None
        if api_key_env:
            self.api_key = os.environ.get(api_key_env)
            if not self.api_key:
                raise ValueError(
                    f"the judge endpoint's key is read from ${api_key_env}, which is not set; "
                    f"export it, or pass --judge-api-key-env none for a server without a key"
                )
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.concurrency, self.timeout_s, self.sleep = concurrency, timeout_s, sleep
        self.requests_sent = 0  # HTTP requests actually made (cache hits excluded)
        self.cache_hits = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ cache
    def cache_key(self, messages: Messages, params: Mapping[str, Any]) -> str:
        blob = json.dumps(
            {"url": self.url, "model": self.model, "messages": messages, "params": dict(params)},
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _cache_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.json"

    def _cached(self, key: str) -> str | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))["content"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise EndpointError(f"{path}: a damaged cache entry ({exc}); delete it to ask again") from exc

    # ------------------------------------------------------------------ requests
    def _post(self, body: bytes) -> str:
        request = urllib.request.Request(self.url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        with self._lock:
            self.requests_sent += 1
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            raw = response.read().decode("utf-8", errors="replace")
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise _Transient(f"not a chat completion ({type(exc).__name__}): {raw[:200]!r}") from exc
        if not isinstance(content, str):
            raise _Transient(f"choices[0].message.content is {type(content).__name__}, not a string")
        return content

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(self.max_backoff_s, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return min(self.max_backoff_s, self.backoff_s * (2**attempt))

    def complete(self, messages: Messages, **params: Any) -> str:
        """The reply text of one request (from the cache when it was asked before)."""
        key = self.cache_key(messages, params)
        cached = self._cached(key)
        if cached is not None:
            with self._lock:
                self.cache_hits += 1
            return cached
        body = json.dumps({"model": self.model, "messages": messages, **params}).encode("utf-8")
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                content = self._post(body)
                break
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", errors="replace")[:300]
                if exc.code not in RETRY_STATUS:
                    raise EndpointFatalError(
                        f"{self.url}: HTTP {exc.code} for model {self.model!r}: {detail}"
                    ) from exc
                last, retry_after = f"HTTP {exc.code}: {detail}", exc.headers.get("Retry-After")
            except (urllib.error.URLError, TimeoutError, ConnectionError, _Transient) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            if attempt < self.max_retries:
                self.sleep(self._delay(attempt, retry_after))
        else:
            raise EndpointError(f"{self.url}: gave up after {self.max_retries + 1} tries; last: {last}")
        path = self._cache_path(key)
        if path is not None:
            record = {"model": self.model, "messages": messages, "params": params, "content": content}
            _atomic_write(path, json.dumps(record, ensure_ascii=False))
        return content

    def complete_many(
        self, requests: Sequence[tuple[Messages, Mapping[str, Any]]]
    ) -> list[str | EndpointError]:
        """Replies of ``(messages, params)`` requests in input order; a failed one is its :class:`EndpointError`.

        An :class:`EndpointFatalError` is raised (the other requests are abandoned).
        """

        def one(req: tuple[Messages, Mapping[str, Any]]) -> str | EndpointError:
            try:
                return self.complete(req[0], **dict(req[1]))
            except EndpointFatalError:
                raise
            except EndpointError as exc:
                return exc

        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(one, requests))

    def describe(self) -> dict[str, Any]:
        """The settings that change replies (for a run manifest); the key is never included."""
        return {"url": self.url, "model": self.model}


class _Transient(Exception):
    """A reply that was received but is not a chat completion (retried)."""
