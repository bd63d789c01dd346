"""The embedded LLM serving every session at once: one llama.cpp context, a KV sequence (a
*slot*) per conversation, and one decode step for all the requests in flight.

`LlamaCppLLM` (voice/llm.py) runs one request at a time. A session's turn then waited for
another session's whole reply, including the time that reply sat held for its first audio, and
each request overwrote the KV cache that held another session's conversation. Here a request
joins the running batch at the next step: its prompt is evaluated in chunks beside the tokens
other replies are generating, a reply held by its gate sits out without holding anyone up, and
each conversation keeps its slot between turns, so its next prompt starts from its own cache.

The interface is `LlamaCppLLM`'s: `stream`, `sentence_end_probability`, `prewarm`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxloop.voice.chat_prompt import ChatPrompt, sentence_end_mass
from voxloop.voice.errors import ModelNotFoundError
from voxloop.voice.kv_snapshots import common_prefix_length
from voxloop.voice.llm import GATE_MAX_WAIT_S, PREWARM_BATCH_TOKENS, GenerationSettings, WordsJudgment, bundled_gguf_path

log = logging.getLogger(__name__)

# Prompt tokens one request evaluates per step. Other requests' next tokens wait for the step,
# so this bounds how long a new prompt holds up replies already speaking.
PROMPT_CHUNK_TOKENS = 32
# How often the scheduler looks again at gates while every request in flight is held by one.
GATE_POLL_S = 0.005
# llama-cpp-python's defaults for what GenerationSettings does not set, as LlamaCppLLM samples.
TOP_K, MIN_P, PENALTY_LAST_N = 40, 0.05, 64


@dataclass
class _Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what its KV sequence holds, in position order
    owner: _Request | None = None
    last_used: float = 0.0


@dataclass(eq=False)
class _Request:
    kind: str  # "generate", "score" or "prewarm"
    prompt: list[int]
    # What any conversation with the same first message shares with this prompt: a slot that
    # shares no more holds another conversation (with the same system prompt), not this one.
    common_start: int
    deliver: Callable[[tuple], None]  # ("text", str), ("done", finish_reason), ("score", p), ("held", n), ("error", exc)
    settings: GenerationSettings | None = None
    gate: threading.Event | None = None
    max_new_tokens: int | None = None  # prewarm: do nothing if more than this is new
    started: Callable[[], None] | None = None  # called once, when the request first gets a slot
    # A reply's judgment of the user's words, read from the logits at prompt position `score_at`.
    judgment: WordsJudgment | None = None
    score_at: int | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    slot: _Slot | None = None
    cached: int = 0  # prompt tokens its slot already held
    sampler: object = None
    next_token: int | None = None  # sampled, not yet evaluated
    generated: int = 0
    held_since: float | None = None
    pending_bytes: bytes = b""


class BatchedLlamaLLM:
    """An embedded GGUF model that decodes every session's request in one batch per step."""

    judges_in_reply = True  # `stream` takes a WordsJudgment

    def __init__(self, gguf_path: str | None = None, slots: int = 4, slot_ctx: int = 4096, n_threads: int = 0,
                 n_gpu_layers: int = 0):
        """`slots`: conversations whose caches are kept at once (and requests decoded at once);
        `slot_ctx`: the tokens each may hold."""
        from llama_cpp import Llama
        from llama_cpp._internals import LlamaBatch, LlamaContext

        path = Path(gguf_path or bundled_gguf_path()).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF model file {path} does not exist")
        threads = n_threads or (os.cpu_count() or 2)
        # The Llama object is the model, its tokenizer and its chat template; its own context is
        # left tiny and unused. The slots live in a context of their own.
        self.llama = Llama(model_path=str(path), n_ctx=64, n_threads=threads, n_gpu_layers=n_gpu_layers, verbose=False)
        self.chat = ChatPrompt(self.llama)
        # LlamaCppLLM's settings (flash attention off: llama.cpp's default, on, made a judgment
        # 40 ms slower on this CPU), with room for every slot.
        params = type(self.llama.context_params).from_buffer_copy(self.llama.context_params)
        params.n_ctx = slot_ctx * slots
        params.n_batch = params.n_ubatch = 512
        params.n_seq_max = slots
        params.kv_unified = False  # each slot attends over its own cache only
        params.n_threads = params.n_threads_batch = threads
        self._ctx = LlamaContext(model=self.llama._model, params=params, verbose=False)
        self._batch = LlamaBatch(n_tokens=params.n_batch, embd=0, n_seq_max=1, verbose=False)
        self.slot_ctx = slot_ctx
        self._slots = [_Slot(seq_id) for seq_id in range(slots)]
        self._n_vocab = self.llama.n_vocab()
        self.name = path.stem
        self._queue: list[_Request] = []  # waiting for a slot
        self._active: list[_Request] = []
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="llm-batch", daemon=True)
        self._thread.start()

    # -- the async side ------------------------------------------------------------------

    def prompt_prefix_tokens(self, messages: list[dict[str, str]]) -> list[int] | None:
        return self.chat.prefix_tokens(messages)

    def _common_start(self, messages: list[dict[str, str]]) -> int:
        """The prompt's tokens up to the second message's words (the first message's, if it is
        the only one)."""
        if len(messages) < 2:
            return len(self.chat.prefix_tokens(messages[:1]) or ())
        without_words = self.chat.prefix_tokens([messages[0], {**messages[1], "content": ""}]) or []
        return common_prefix_length(without_words, self.chat.prefix_tokens(messages[:2]) or [])

    async def stream(self, messages: list[dict[str, str]], settings: GenerationSettings,
                     stats: dict | None = None, gate: threading.Event | None = None,
                     judgment: WordsJudgment | None = None) -> AsyncIterator[str]:
        """As `ChatLLM.stream`; closing the iterator drops the request at the next step.
        `judgment` is answered from the decode that gives the first token, where the reply's
        prompt starts with the judged words' tokens; otherwise by a request of its own first."""
        prompt = self.chat.reply_tokens(messages)
        if prompt is None:
            raise RuntimeError(f"{self.name}: only models with their own chat template can be batched")
        if len(prompt) >= self.slot_ctx:
            raise ValueError(f"the prompt ({len(prompt)} tokens) does not fit the LLM's context ({self.slot_ctx})")
        score_at = None
        if judgment is not None:
            words = self.chat.words_tokens(judgment.messages)
            if words and len(words) < len(prompt) and prompt[:len(words)] == words:
                score_at = len(words) - 1  # the logits there predict the token after the last word
            else:
                await self._judge_alone(judgment)
        items: asyncio.Queue = asyncio.Queue()

        def started() -> None:
            if stats is not None:
                stats.update(llm_start=time.monotonic(), llm_prompt_tokens=len(prompt), llm_cached_tokens=request.cached)
            if score_at is not None:
                judgment.begin()

        request = _Request("generate", prompt, self._common_start(messages), _deliverer(items), settings=settings,
                           gate=gate, started=started, judgment=judgment if score_at is not None else None,
                           score_at=score_at)
        self._submit(request)
        try:
            while True:
                kind, value = await items.get()
                if kind == "text":
                    yield value
                elif kind == "done":
                    if stats is not None:
                        stats["llm_finish_reason"] = value
                    return
                elif kind == "error":
                    raise value
        finally:
            self._drop(request)

    async def sentence_end_probability(self, messages: list[dict[str, str]],
                                       start_within_s: float | None = None) -> float | None:
        """As `LlamaCppLLM.sentence_end_probability`: the words stay in the conversation's slot
        for its reply. None when it cannot start within `start_within_s` (every slot busy)."""
        judgment = WordsJudgment(messages)
        scoring = asyncio.create_task(self._judge_alone(judgment))
        try:
            return await judgment.probability(start_within_s)
        finally:
            scoring.cancel()  # drops the request if it has not started in time
            await asyncio.gather(scoring, return_exceptions=True)

    async def _judge_alone(self, judgment: WordsJudgment) -> None:
        """Answer `judgment` with a request of its own (a failure answers None, and is logged)."""
        try:
            tokens = self.chat.words_tokens(judgment.messages)
            if not tokens or len(tokens) >= self.slot_ctx:
                return
            items: asyncio.Queue = asyncio.Queue()
            request = _Request("score", tokens, self._common_start(judgment.messages), _deliverer(items),
                               started=judgment.begin)
            self._submit(request)
            try:
                judgment.answer(await _answer(items))
            finally:
                self._drop(request)
        except Exception:
            log.exception("judging whether the words end a sentence failed")
        finally:
            judgment.answer(None)  # only if nothing answered it

    async def prewarm(self, messages: list[dict[str, str]], max_new_tokens: int | None = None) -> int:
        """As `LlamaCppLLM.prewarm`: evaluate the prefix into the conversation's slot while no
        real request has work; returns how many of its tokens the slot holds afterwards."""
        prefix = self.chat.prefix_tokens(messages)
        if not prefix:
            return 0
        items: asyncio.Queue = asyncio.Queue()
        request = _Request("prewarm", prefix[: self.slot_ctx - PREWARM_BATCH_TOKENS], self._common_start(messages),
                           _deliverer(items), max_new_tokens=max_new_tokens)
        self._submit(request)
        try:
            return await _answer(items)
        finally:
            self._drop(request)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    def _submit(self, request: _Request) -> None:
        with self._wake:
            if self._closed:
                raise RuntimeError("the LLM is closed")
            self._queue.append(request)
            self._wake.notify()

    def _drop(self, request: _Request) -> None:
        with self._wake:
            request.stop.set()
            self._wake.notify()
        if request.judgment is not None:  # every stream ends here: a judgment its decode never reached answers None
            request.judgment.answer(None)

    # -- the scheduler thread ------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._has_work():
                    self._wake.wait(GATE_POLL_S if self._active else None)
                if self._closed:
                    break
                self._retire_stopped()
                self._admit()
            try:
                self._step()
            except Exception as exc:  # a failed decode fails the requests in it, never the thread
                with self._wake:
                    for request in list(self._active):
                        request.deliver(("error", exc))
                        self._finish(request, forget_cache=True)
        with self._wake:
            for request in self._queue + self._active:
                request.deliver(("error", RuntimeError("the LLM was closed")))
            self._queue.clear()
            self._active.clear()
        self._ctx.close()

    def _has_work(self) -> bool:
        if any(request.stop.is_set() for request in self._queue + self._active):
            return True
        if self._queue and (any(slot.owner is None or slot.owner.kind == "prewarm" for slot in self._slots)):
            return True
        return any(self._ready(request) for request in self._active)

    def _ready(self, request: _Request) -> bool:
        if request.kind != "generate" or request.next_token is None or request.gate is None or request.gate.is_set():
            return True
        # Held by its gate: sit out, but never longer than the gate's safety net.
        request.held_since = request.held_since or time.monotonic()
        return time.monotonic() - request.held_since >= GATE_MAX_WAIT_S

    def _retire_stopped(self) -> None:
        for request in [r for r in self._queue if r.stop.is_set()]:
            self._queue.remove(request)
        for request in [r for r in self._active if r.stop.is_set()]:
            self._finish(request)

    def _admit(self) -> None:
        """Give waiting requests their slots, oldest first."""
        for request in list(self._queue):
            slot = self._choose_slot(request.prompt, request.common_start, real=request.kind != "prewarm")
            if slot is None:
                if request.kind == "prewarm":  # its conversation's slot is in use, or all are: not worth waiting
                    self._queue.remove(request)
                    request.deliver(("held", 0))
                continue
            if slot.owner is not None:  # a pre-warm gives way to a real request
                slot.owner.deliver(("held", len(slot.tokens)))
                self._finish(slot.owner)
            self._queue.remove(request)
            kept = common_prefix_length(slot.tokens, request.prompt)
            if request.kind == "prewarm":
                new = len(request.prompt) - kept
                if new == 0 or (request.max_new_tokens is not None and new > request.max_new_tokens):
                    request.deliver(("held", kept))
                    continue
            else:  # its last prompt token is evaluated again, for fresh logits to score or sample
                kept = min(kept, len(request.prompt) - 1)
                if request.score_at is not None:  # and the last judged word, for the judgment's
                    kept = min(kept, request.score_at)
            self._ctx.kv_cache_seq_rm(slot.seq_id, kept, -1)
            del slot.tokens[kept:]
            slot.owner, slot.last_used = request, time.monotonic()
            request.slot, request.cached = slot, kept
            if request.kind == "generate":
                request.sampler = self._sampler(request.settings)
            self._active.append(request)
            if request.started is not None:
                request.started()

    def _choose_slot(self, prompt: list[int], common_start: int, real: bool) -> _Slot | None:
        """The slot whose conversation `prompt` continues, if it is free (or, for a real request,
        only pre-warming); otherwise the least recently used free one. None when none can be had now."""
        shared = {slot.seq_id: common_prefix_length(slot.tokens, prompt) for slot in self._slots}
        # A slot holding only what the prompt starts with (the system prompt a session pre-warmed)
        # has nothing of another conversation's to lose.
        continued = [slot for slot in self._slots if shared[slot.seq_id] > common_start
                     or (slot.tokens and shared[slot.seq_id] == len(slot.tokens))]
        if continued:
            best = max(continued, key=lambda slot: shared[slot.seq_id])
            if best.owner is None or (real and best.owner.kind == "prewarm"):
                return best
            if not real:
                return None  # its own conversation's request has the slot: nothing to pre-warm
        free = [slot for slot in self._slots if slot.owner is None]
        if not free and real:
            free = [slot for slot in self._slots if slot.owner.kind == "prewarm"]
        return min(free, key=lambda slot: slot.last_used) if free else None

    def _sampler(self, settings: GenerationSettings):
        from llama_cpp._internals import LlamaSampler

        sampler = LlamaSampler()
        sampler.add_penalties(self._n_vocab, PENALTY_LAST_N, settings.repeat_penalty, 0.0, 0.0)
        if settings.temperature <= 0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(TOP_K)
            sampler.add_top_p(settings.top_p, 1)
            sampler.add_min_p(MIN_P, 1)
            sampler.add_temp(settings.temperature)
            sampler.add_dist(random.getrandbits(32))
        return sampler

    def _finish(self, request: _Request, forget_cache: bool = False) -> None:
        if request in self._active:
            self._active.remove(request)
        slot = request.slot
        if slot is not None and slot.owner is request:
            slot.owner = None
            slot.last_used = time.monotonic()
            if forget_cache:
                self._ctx.kv_cache_seq_rm(slot.seq_id, 0, -1)
                slot.tokens.clear()
        if request.sampler is not None:
            request.sampler.close()
            request.sampler = None

    def _step(self) -> None:
        """One decode: the next token of every generating request whose gate is open, and a
        chunk of every prompt being evaluated (pre-warms only when no real request has work)."""
        with self._wake:
            real = [r for r in self._active if r.kind != "prewarm" and self._ready(r)]
            work = real or [r for r in self._active if r.kind == "prewarm"]
        batch = self._batch.batch
        batch.n_tokens = 0
        outputs: list[tuple[_Request, int]] = []
        judged: list[tuple[_Request, int]] = []  # (request, batch index of its score_at position)
        for request in work:
            slot = request.slot
            if request.next_token is not None:
                tokens, wants_logits = [request.next_token], True
            else:
                remaining = request.prompt[len(slot.tokens):]
                if request.kind == "prewarm":
                    size = PREWARM_BATCH_TOKENS
                else:  # a prompt alone goes in whole: one call costs less than several
                    size = PROMPT_CHUNK_TOKENS if len(work) > 1 else self._batch._n_tokens
                tokens = remaining[:size]
                wants_logits = request.kind != "prewarm" and len(tokens) == len(remaining)
            if batch.n_tokens + len(tokens) > self._batch._n_tokens:
                break
            for offset, token in enumerate(tokens):
                index, position = batch.n_tokens, len(slot.tokens) + offset
                batch.token[index], batch.pos[index] = token, position
                batch.seq_id[index][0], batch.n_seq_id[index] = slot.seq_id, 1
                batch.logits[index] = wants_logits and offset == len(tokens) - 1
                if position == request.score_at:
                    batch.logits[index] = True
                    judged.append((request, index))
                batch.n_tokens += 1
            slot.tokens.extend(tokens)
            request.next_token = None
            if wants_logits:
                outputs.append((request, batch.n_tokens - 1))
        if not batch.n_tokens:
            return
        self._ctx.decode(self._batch)
        with self._wake:
            for request in work:
                if request.kind == "prewarm" and len(request.slot.tokens) == len(request.prompt):
                    request.deliver(("held", len(request.slot.tokens)))
                    self._finish(request)
            for request, index in judged:
                request.judgment.answer(self._sentence_end_mass(index))
            for request, index in outputs:
                if request.stop.is_set():
                    continue
                if request.kind == "score":
                    request.deliver(("score", self._sentence_end_mass(index)))
                    self._finish(request)
                else:
                    self._sample(request, index)

    def _sentence_end_mass(self, batch_index: int) -> float:
        logits = np.ctypeslib.as_array(self._ctx.get_logits_ith(batch_index), shape=(self._n_vocab,))
        return sentence_end_mass(logits, self.chat.sentence_end_tokens())

    def ends_reply(self, token: int) -> bool:
        """An end-of-generation token, or any other control token: SmolLM2 sometimes opens the
        next chat message (`<|im_start|>`) instead of closing its own, and the reply went on to
        say "assistant" and a second answer."""
        from llama_cpp import llama_vocab_is_control, llama_vocab_is_eog

        vocab = self.llama._model.vocab
        return llama_vocab_is_eog(vocab, token) or llama_vocab_is_control(vocab, token)

    def _sample(self, request: _Request, index: int) -> None:
        token = request.sampler.sample(self._ctx, index)
        request.held_since = None
        if self.ends_reply(token):
            return self._end(request, "stop")
        request.generated += 1
        request.pending_bytes += self.llama._model.detokenize([token])
        text = _complete_utf8(request)
        if text:
            request.deliver(("text", text))
        if request.generated >= request.settings.max_tokens or len(request.slot.tokens) + 1 >= self.slot_ctx:
            return self._end(request, "length")
        request.next_token = token

    def _end(self, request: _Request, reason: str) -> None:
        if request.pending_bytes:
            request.deliver(("text", request.pending_bytes.decode("utf-8", "replace")))
        request.deliver(("done", reason))
        self._finish(request)


def _complete_utf8(request: _Request) -> str:
    """The text of the bytes so far, holding back a multi-byte character still being spelled."""
    data = request.pending_bytes
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            text = data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        request.pending_bytes = data[cut:]
        return text
    request.pending_bytes = b""
    return data.decode("utf-8", "replace")


async def _answer(items: asyncio.Queue):
    """The one answer a score or pre-warm request delivers (the error it delivers is raised)."""
    kind, value = await items.get()
    if kind == "error":
        raise value
    return value


def _deliverer(items: asyncio.Queue) -> Callable[[tuple], None]:
    loop = asyncio.get_running_loop()

    def deliver(item: tuple) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the loop closed under us (server shutting down); nobody is listening
            pass

    return deliver
