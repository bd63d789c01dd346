"""The cascade's reply stage: streamed LLM text -> clauses -> streamed TTS audio.

The LLM keeps generating while TTS speaks the first clause, so the time to first audio is
LLM-first-clause + TTS-first-chunk, not the whole reply. Cancelling the consumer (barge-in)
cancels the LLM producer too, and both model threads stop at their next token or chunk.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass

import numpy as np

from voxloop.voice.clauses import ClauseChunker, speakable
from voxloop.voice.llm import ChatLLM, GenerationSettings, WordsJudgment
from voxloop.voice.reply_limit import SpokenReplyLimit
from voxloop.voice.run_ahead import RunAhead
from voxloop.voice.tts import OUTPUT_RATE, SpeechSynthesizer


# Marks (VoiceSession's) of when the user began waiting for a reply: the pause a speculative reply
# started at, the confirmed end of speech, or the client's commit or response.create.
_WAITING_SINCE = ("speech_paused", "speech_stopped", "committed", "response_create")


@dataclass
class SpeechPiece:
    """A chunk of reply audio (24 kHz float32). `clause` is set on the first chunk of each clause."""

    audio: np.ndarray
    clause: str | None = None


@dataclass
class ClauseTiming:
    """When one clause of a reply reached each step (time.monotonic): what tells a reply that ran
    dry waiting for the LLM's text from one that waited for TTS."""

    ready: float  # the LLM finished its text
    synth_start: float | None = None
    first_audio: float | None = None
    synth_done: float | None = None
    audio_s: float = 0.0
    cut_early: bool = False  # cut by the first clause's rules, the listener about to wait for it

    def relative_ms(self, reference: float) -> dict[str, float | None]:
        def ms(t: float | None) -> float | None:
            return None if t is None else round(1000 * (t - reference), 1)
        return {"ready_ms": ms(self.ready), "synth_start_ms": ms(self.synth_start), "first_audio_ms": ms(self.first_audio),
                "synth_done_ms": ms(self.synth_done), "audio_ms": round(1000 * self.audio_s, 1), "cut_early": self.cut_early}


def _audio_runs_out(marks: dict) -> float | None:
    """When the reply's audio made so far will have played (time.monotonic), taking the first
    audio's time for the start of playback; None before there is any."""
    started = marks.get("tts_first_audio")
    return None if started is None else started + sum(clause.audio_s for clause in marks["clauses"])


def trim_leading_silence(audio: np.ndarray, floor: float = 10 ** (-50 / 20), keep_samples: int = 240) -> np.ndarray:
    """Drop the silence a TTS voice puts before its first word (tens of ms with Piper): the
    user is waiting for exactly that sample. Keeps 10 ms (at 24 kHz) so the onset is not clipped."""
    loud = np.nonzero(np.abs(audio) > floor)[0]
    if not loud.size:
        return audio[:0]
    return audio[max(0, loud[0] - keep_samples):]


class CascadeResponder:
    def __init__(self, llm: ChatLLM, tts: SpeechSynthesizer):
        self.llm = llm
        self.tts = tts

    @property
    def judges_in_reply(self) -> bool:
        """Whether `respond` answers a WordsJudgment from the reply's own prompt evaluation."""
        return getattr(self.llm, "judges_in_reply", False)

    async def respond(self, messages: list[dict[str, str]], settings: GenerationSettings, voice: str | None,
                      marks: dict[str, float], judgment: WordsJudgment | None = None) -> AsyncIterator[SpeechPiece]:
        """Stream the spoken reply. Records `llm_first_token`, `llm_first_clause`, `llm_done` and `tts_first_audio`
        (time.monotonic) into `marks`, each clause's ClauseTiming as `clauses`, and what the LLM
        reports of the request (ChatLLM.stream).
        `judgment` (only where `judges_in_reply`) is answered by the LLM along the way."""
        clauses: asyncio.Queue[tuple[str, ClauseTiming] | BaseException | None] = asyncio.Queue()
        # Open: the LLM may run. Closed from the first clause to the first audio if asked to.
        gate = threading.Event()
        gate.set()
        producer = asyncio.create_task(self._write_clauses(messages, settings, clauses, marks,
                                                           gate if settings.first_audio_first else None, judgment))
        speech = self._speak(clauses, settings, voice, marks, gate)
        ahead = RunAhead(speech) if settings.synthesize_ahead else None
        try:
            async with aclosing(ahead.items() if ahead else speech) as pieces:
                async for piece in pieces:
                    yield piece
        finally:
            gate.set()  # a generation waiting on it must go on to see that it was abandoned
            if ahead:
                await ahead.cancel()
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)

    async def _speak(self, clauses: asyncio.Queue, settings: GenerationSettings, voice: str | None, marks: dict,
                     gate: threading.Event) -> AsyncIterator[SpeechPiece]:
        while (clause := await clauses.get()) is not None:
            if isinstance(clause, BaseException):
                raise clause
            text, timing = clause
            timing.synth_start = time.monotonic()
            needed_by = self._needed_by(timing, marks) if settings.tts_deadlines else None
            async with aclosing(self.tts.synthesize(text, voice, needed_by=needed_by)) as chunks:
                async for audio in chunks:
                    if "tts_first_audio" not in marks:
                        audio = trim_leading_silence(audio)
                        if not audio.size:
                            continue
                        marks["tts_first_audio"] = time.monotonic()
                        gate.set()
                    first_chunk = timing.first_audio is None
                    if first_chunk:
                        timing.first_audio = time.monotonic()
                    timing.audio_s += audio.size / OUTPUT_RATE
                    yield SpeechPiece(audio, text if first_chunk else None)
            timing.synth_done = time.monotonic()
            gate.set()  # a clause that made no audible sound must not keep the LLM waiting

    async def prewarm(self, messages: list[dict[str, str]], max_new_tokens: int | None = None) -> int:
        """Let the LLM evaluate the start of the next prompt ahead of time, if it can (see
        LlamaCppLLM.prewarm); returns the tokens it holds for it (0 for an LLM that cannot)."""
        prewarm = getattr(self.llm, "prewarm", None)
        return await prewarm(messages, max_new_tokens) if prewarm is not None else 0

    async def sentence_end_probability(self, messages: list[dict[str, str]],
                                       start_within_s: float | None = None) -> float | None:
        """The LLM's probability that the last message's words end a sentence (None if it cannot
        say, or cannot start on it within `start_within_s`)."""
        score = getattr(self.llm, "sentence_end_probability", None)
        return await score(messages, start_within_s) if score is not None else None

    @staticmethod
    def _needed_by(timing: ClauseTiming, marks: dict) -> Callable[[], float]:
        """When the listener's silence began or begins: once the audio made so far has played (taking
        the first audio's time for the start of playback), or, before there is any, when they
        stopped speaking. TTS serves the earliest first, so a reply that has kept someone waiting
        longer goes first, whether it has yet to start or has run dry."""
        def needed_by() -> float:
            runs_out = _audio_runs_out(marks)
            if runs_out is None:
                return min((marks[name] for name in _WAITING_SINCE if name in marks), default=timing.ready)
            return runs_out
        return needed_by

    @staticmethod
    def _waiting_for_text(marks: dict, within_s: float) -> bool:
        """Whether the listener will be left waiting for the LLM's next words within `within_s`: the
        reply is playing, TTS has spoken every clause written, and their audio plays out by then."""
        runs_out = _audio_runs_out(marks)
        if runs_out is None or within_s <= 0 or any(clause.synth_done is None for clause in marks["clauses"]):
            return False
        return runs_out - time.monotonic() < within_s

    @staticmethod
    def _timed(text: str, marks: dict, cut_early: bool = False) -> tuple[str, ClauseTiming]:
        timing = ClauseTiming(ready=time.monotonic(), cut_early=cut_early)
        marks.setdefault("clauses", []).append(timing)
        return text, timing

    async def _write_clauses(self, messages, settings, clauses: asyncio.Queue, marks: dict[str, float],
                             gate: threading.Event | None, judgment: WordsJudgment | None) -> None:
        chunker = ClauseChunker(first_clause_max_chars=settings.first_clause_max_chars,
                                first_clause_phrases=settings.first_clause_phrases)
        limit = SpokenReplyLimit(settings.max_sentences)
        try:
            # Leaving the loop early closes the stream, which stops the LLM at its next token.
            judging = {"judgment": judgment} if judgment is not None else {}
            async with aclosing(self.llm.stream(messages, settings, stats=marks, gate=gate, **judging)) as pieces:
                async for piece in pieces:
                    marks.setdefault("llm_first_token", time.monotonic())
                    hurry = self._waiting_for_text(marks, settings.cut_early_below_s)
                    for index, clause in enumerate(chunker.push(piece, hurry=hurry)):
                        if (text := speakable(clause)) and limit.admit(text):
                            await clauses.put(self._timed(text, marks, cut_early=hurry and index == 0))
                            marks.setdefault("llm_first_clause", time.monotonic())
                            if gate is not None and "tts_first_audio" not in marks:
                                gate.clear()  # the first clause is out: let TTS have the cores for its first audio
                        if limit.ended:
                            break
                    if limit.ended:
                        break
            if not limit.ended:
                cut_by_token_cap = marks.get("llm_finish_reason") == "length"
                for clause in chunker.flush():
                    if (text := speakable(clause)) and limit.admit_tail(text, cut_by_token_cap):
                        await clauses.put(self._timed(text, marks))
            marks["reply_end"] = limit.end_reason or marks.get("llm_finish_reason")
            marks["llm_done"] = time.monotonic()
            await clauses.put(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await clauses.put(exc)
