"""The optimiser's chat backends: one call, `complete(requests) -> results` in request order.

`OpenAIBackend` is any server speaking the OpenAI chat-completions protocol (with retries and an on-disk cache);
`LocalBackend` is an sq-jax model through the raw engine loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from sq_jax.data.dataset import atomic_open
from sq_jax.models.tokenizer import encode_prompt
from sq_jax.sampling.generate_job import cut_at_stop, request_seed
from sq_jax.sampling.loop import Request, run_loop
from sq_jax.sampling.sampling import SamplingParams
from sq_jax.sampling.engine_factory import EngineSettings, build_engine

__all__ = ["ChatBackend", "ChatRequest", "ChatResult", "LocalBackend", "OpenAIBackend"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    id: str
    messages: list[dict[str, str]]


@dataclasses.dataclass(frozen=True)
class ChatResult:
    id: str
    text: str | None
    error: str | None
    cached: bool = False
    # "stop", or "length" when the reply hit max_tokens (never a chosen question: its final section may be cut).
    finish_reason: str | None = None


class ChatBackend(Protocol):
    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]: ...


def _reply_text(body: str) -> tuple[str | None, str | None, str | None]:
    """(content, finish_reason, None) from a chat-completions response body, or (None, None, why it is unusable)."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        return None, None, f"malformed JSON in the response ({e.msg} at char {e.pos}): {body[:80]!r}"
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        return None, None, f"response has no choices: {body[:120]!r}"
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str) or not content.strip():
        return None, None, "response has empty content"
    finish = choices[0].get("finish_reason")
    return content, finish if isinstance(finish, str) else None, None


class OpenAIBackend:
    """An OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, `sq-jax serve`, ...) with a thread pool and an
    on-disk cache.

    Retries are the `openai` client's own (`max_retries`, `timeout`): it retries 408/409/429/5xx, timeouts and
    dropped connections with exponential backoff and jitter, and honours `Retry-After`. Successful replies are
    cached as one JSON file per request, keyed by everything that determines the reply, so a rerun never pays
    twice; errors are not cached, so a rerun retries them.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60,
        max_retries: int = 5,
        concurrency: int = 8,
        cache_dir: str | Path | None = None,
        temperature: float = 0.0,
        max_tokens: int = 4096,
        seed: int | None = 0,
    ):
        key = os.environ.get(api_key_env, "")
        if not key:
            raise ValueError(
                f"optimise: the API key environment variable {api_key_env} is not set; export it "
                "(any non-empty value for a local server that needs no key) or pass api_key_env=..."
            )
        if max_retries < 0 or concurrency < 1 or timeout_s <= 0:
            raise ValueError("optimise: need max_retries >= 0, concurrency >= 1 and timeout_s > 0")
        import openai  # here, so the rest of sq-jax never needs the client installed

        self._openai = openai
        self._client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=max_retries, timeout=timeout_s)
        self.model, self.timeout_s, self.max_retries, self.concurrency = model, timeout_s, max_retries, concurrency
        self.temperature, self.max_tokens, self.seed = temperature, max_tokens, seed
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    def cache_key(self, messages: list[dict[str, str]]) -> str:
        fields = {"model": self.model, "messages": messages, "temperature": self.temperature,
                  "max_tokens": self.max_tokens, "seed": self.seed}
        return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _cache_get(self, key: str) -> tuple[str, str | None] | None:
        path = self.cache_dir / f"{key}.json" if self.cache_dir else None
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            log.warning("optimise: ignoring unreadable cache file %s (%s)", path, e)
            return None
        text = entry.get("text") if isinstance(entry, dict) and entry.get("key") == key else None
        return (text, entry.get("finish_reason")) if isinstance(text, str) and text else None

    def _cache_put(self, key: str, messages: list[dict[str, str]], text: str, finish: str | None) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        entry = {"key": key, "model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
                 "seed": self.seed, "messages": messages, "text": text, "finish_reason": finish}
        with atomic_open(self.cache_dir / f"{key}.json") as f:  # a killed run never leaves a half-written entry
            f.write(json.dumps(entry, ensure_ascii=False, indent=1))

    def _call(self, messages: list[dict[str, str]]) -> tuple[str | None, str | None, str | None]:
        """(text, finish_reason, None) or (None, None, error) once the client's retries are spent; never raises
        for the service."""
        oa = self._openai
        kwargs: dict[str, Any] = dict(model=self.model, messages=messages, temperature=self.temperature,
                                      max_tokens=self.max_tokens)
        if self.seed is not None:
            kwargs["seed"] = self.seed
        attempts = f"after {self.max_retries + 1} attempts"
        try:
            raw = self._client.chat.completions.with_raw_response.create(**kwargs)
        except oa.APIStatusError as e:  # a 4xx the client does not retry, or a retryable status to the end
            return None, None, f"HTTP {e.status_code} ({attempts} at most): {str(e)[:200]}"
        except oa.APITimeoutError:
            return None, None, f"timed out after {self.timeout_s} s, {attempts}"
        except oa.APIConnectionError as e:
            return None, None, f"connection error {attempts}: {e.__cause__ or e}"
        # Parsed by hand: a malformed body becomes an error result instead of a client exception.
        return _reply_text(raw.text)

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """One result per request, in request order; identical requests are sent (and paid for) once."""
        results: list[ChatResult | None] = [None] * len(requests)
        todo: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            key = self.cache_key(request.messages)
            hit = self._cache_get(key)
            if hit is not None:
                results[i] = ChatResult(request.id, hit[0], None, cached=True, finish_reason=hit[1])
            else:
                todo.setdefault(key, []).append(i)

        def work(key: str) -> tuple[str, str | None, str | None, str | None]:
            messages = requests[todo[key][0]].messages
            text, finish, error = self._call(messages)
            if text is not None:
                self._cache_put(key, messages, text, finish)
            return key, text, finish, error

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool, \
                tqdm(total=len(todo), desc="optimise", unit="req", disable=None) as bar:
            for key, text, finish, error in pool.map(work, list(todo)):
                for i in todo[key]:
                    results[i] = ChatResult(requests[i].id, text, error, cached=False, finish_reason=finish)
                bar.update(1)
        return [r for r in results if r is not None]


class LocalBackend:
    """An sq-jax model as the optimiser: chat-rendered prompts through the raw engine loop, seeded per request id."""

    def __init__(self, model_path: str, *, engine: EngineSettings | None = None, temperature: float = 0.7, top_p: float = 1.0,
                 max_tokens: int = 1024, seed: int = 0):
        self.sampling = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
        self.seed = seed
        loaded = build_engine(model_path, engine or EngineSettings(), self.sampling, jetstream_api=False)
        self.engine, self.tokenizer, self.prompt_format = loaded.engine, loaded.tokenizer, loaded.prompt_format

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        tokenizer, fmt = self.tokenizer, self.prompt_format
        results: list[ChatResult | None] = [None] * len(requests)
        batch = []
        for i, request in enumerate(requests):
            try:
                prompt = fmt.chat(request.messages, add_generation_prompt=True)
            except ValueError as e:  # a malformed message fails its own request, not the batch
                results[i] = ChatResult(request.id, None, f"bad messages: {e}")
                continue
            # Seeded by id, so a reply does not depend on batching, order or resumption.
            sampling = dataclasses.replace(self.sampling, seed=request_seed(self.seed, request.id))
            batch.append(Request(encode_prompt(tokenizer, prompt), sampling, id=i))
        for done in run_loop(self.engine, batch):
            rid = requests[done.id].id
            if done.finish_reason == "error":
                results[done.id] = ChatResult(rid, None, done.error or "engine error")
                continue
            text, _ = cut_at_stop(tokenizer.decode(done.token_ids), list(fmt.stop_strings))
            results[done.id] = (ChatResult(rid, text, None, finish_reason=done.finish_reason) if text.strip()
                                else ChatResult(rid, None, "empty reply"))
        return [r for r in results if r is not None]
