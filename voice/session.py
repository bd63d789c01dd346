"""One conversation: input audio, turn-taking, replies and barge-in.

The protocol layer calls the public coroutines as client events arrive; the session answers
through `emit` with Realtime server events. Everything a reply does runs in one task, so a
barge-in or `response.cancel` is a task cancellation that every stage sees.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from voxloop.codecs.pcm import WIRE_RATE, encode_base64_pcm16
from voxloop.codecs.resample import StreamResampler
from voxloop.streaming import events as ev
from voxloop.voice.asr import Transcript
from voxloop.voice.cascade import CascadeResponder, SpeechPiece
from voxloop.voice.config import SessionConfig
from voxloop.voice.history import Conversation, ConversationItem
from voxloop.voice.llm import WordsJudgment
from voxloop.voice.models import CascadeModels
from voxloop.voice.sample_buffer import SampleBuffer
from voxloop.voice.settled_speech import SettledSpeech, agreed_prefix
from voxloop.voice.run_ahead import RunAhead
from voxloop.voice.speculation import Speculation, longest_hold, unfinished_hold, without_final_punctuation
from voxloop.voice.turns import SpeechPaused, SpeechResumed, SpeechStarted, SpeechStopped, TurnDetectionConfig, TurnDetector
from voxloop.voice.vad import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], Awaitable[None]]

DELTA_SAMPLES = 2400  # 100 ms of 24 kHz audio per output_audio.delta
# Outgoing audio may run ahead of real time by a short burst, then at most PACE x real time:
# enough to ride out a TTS hiccup, little enough that a barge-in leaves little audio queued.
PACE = 2.0
BURST_S = 0.3
# Word endings are soft and Silero calls them silence early; keep a little audio past the end.
TRAILING_CONTEXT_MS = 100
PARTIAL_INTERVAL_S = 0.6
# A partial transcript's words are pre-evaluated on the LLM only when this few tokens are left to
# evaluate (about 10 s of speech): more means the shared cache holds another session's prompt.
WORDS_PREWARM_MAX_NEW_TOKENS = 48
MIN_PARTIAL_AUDIO_S = 0.5
MAX_BUFFER_S = 120
MIN_COMMIT_MS = 100
# The least a judgment may wait for the LLM to start on it, even past silence_duration_ms: an idle
# LLM starts within a millisecond, one finishing a pre-warm batch within about 35 ms.
MIN_JUDGMENT_WAIT_MS = 50


class SessionError(Exception):
    """A client request that cannot be done; becomes a protocol `error` event."""

    def __init__(self, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param


@dataclass
class UserTurn:
    item_id: str
    start_sample: int
    settled: SettledSpeech
    partials: asyncio.Task | None = None
    partial_pass: asyncio.Task | None = None  # the partial transcription in flight
    speculation: Speculation | None = None
    speculations: int = 0  # started in this turn: more than one means the user paused and went on


@dataclass
class Playback:
    """What the client was sent of one assistant item, to estimate what it has played.

    Each chunk starts playing when it arrives or when the previous one ends, whichever is
    later; so a stall between clauses pauses the estimate just as it pauses the speaker."""

    item: ConversationItem
    chunks: list[tuple[float, float, float]] = field(default_factory=list)  # (play_start, offset_ms, duration_ms)
    play_end: float = 0.0

    @property
    def sent_ms(self) -> float:
        return self.chunks[-1][1] + self.chunks[-1][2] if self.chunks else 0.0

    def sent(self, now: float, duration_ms: float) -> None:
        start = max(now, self.play_end)
        self.chunks.append((start, self.sent_ms, duration_ms))
        self.play_end = start + duration_ms / 1000

    def heard_ms(self, now: float) -> float:
        for start, offset, duration in reversed(self.chunks):
            if start <= now:
                return offset + min(duration, (now - start) * 1000)
        return 0.0

    def playing(self, now: float) -> bool:
        return bool(self.chunks) and now < self.play_end


class VoiceSession:
    def __init__(self, models: CascadeModels, emit: Emit, config: SessionConfig | None = None):
        self.models = models
        self.responder = self._make_responder(models)
        self.emit = emit
        self.config = config or SessionConfig()
        self.conversation = Conversation(self.config.history_items, self.config.history_window)
        self._resampler = StreamResampler(WIRE_RATE, SAMPLE_RATE)
        self._audio = SampleBuffer(MAX_BUFFER_S * SAMPLE_RATE)
        self._commit_start = 0
        self._vad = models.vad.stream()
        # Always fed, even in manual mode, so its clock stays the session's audio clock.
        self._detector = TurnDetector(self.config.turn_detection or TurnDetectionConfig(), FRAME_MS)
        self._frame_carry = np.zeros(0, dtype=np.float32)
        self._ending_silence_ms = 0  # the pause that ended the last turn (what the detector required)
        self._turn: UserTurn | None = None
        self._response: asyncio.Task | None = None
        self._cancel_reason = "client_cancelled"
        self._playback: Playback | None = None
        self._background: set[asyncio.Task] = set()
        self._transcriptions: set[asyncio.Task] = set()
        self._prewarm: asyncio.Task | None = None
        self._prewarming_words = False  # whether `_prewarm` evaluates the user's words, or the history only
        self._closing = False

    def _make_responder(self, models) -> CascadeResponder | None:
        """What turns the conversation into reply audio; a path without a text LLM has none."""
        return CascadeResponder(models.llm, models.tts)

    @property
    def default_voice(self) -> str:
        """The voice replies use when the session names none."""
        return self.models.tts.default_voice

    def wire_extension(self) -> dict[str, Any]:
        """Extra facts about this session for the `voxloop` field of the session object and of
        every `response.done` (the cascade has none; the native path names its weights)."""
        return {}

    # ----------------------------------------------------------------- configuration

    def update_config(self, config: SessionConfig) -> None:
        self.config = config
        if config.turn_detection is not None:
            self._detector.config = config.turn_detection
        elif self._turn is not None:  # switching to manual mode abandons a VAD turn in progress
            self._end_turn()
            self._detector.reset()

    # ----------------------------------------------------------------- input audio

    async def append_audio(self, samples: np.ndarray) -> None:
        audio = self._resampler.process(samples)
        self._audio.append(audio)
        frames = np.concatenate([self._frame_carry, audio])
        usable = frames.size - frames.size % FRAME_SAMPLES
        self._frame_carry = frames[usable:]
        for offset in range(0, usable, FRAME_SAMPLES):
            outcome = self._detector.process(self._vad.probability(frames[offset:offset + FRAME_SAMPLES]))
            if self.config.turn_detection is None:
                continue
            if isinstance(outcome, SpeechStarted):
                await self._on_speech_started(outcome.audio_start_ms)
            elif isinstance(outcome, SpeechPaused):
                self._on_speech_paused(outcome.audio_end_ms)
            elif isinstance(outcome, SpeechResumed):
                self._on_speech_resumed(outcome)
            elif isinstance(outcome, SpeechStopped):
                self._ending_silence_ms = outcome.silence_ms
                await self._on_speech_stopped(outcome.audio_end_ms)

    async def commit_audio(self) -> None:
        end = self._audio.end
        if (end - self._commit_start) * 1000 / SAMPLE_RATE < MIN_COMMIT_MS:
            raise SessionError(f"the input audio buffer holds less than {MIN_COMMIT_MS} ms of audio", "input_audio_buffer_commit_empty")
        turn = self._end_turn()
        item_id = turn.item_id if turn else ev.new_id("item")
        audio = self._audio.slice(self._commit_start, end)
        self._detector.reset()
        turn_detection = self.config.turn_detection
        await self._commit(item_id, audio, end, {"committed": time.monotonic()},
                           respond=turn_detection is not None and turn_detection.create_response)

    async def clear_audio(self) -> None:
        self._end_turn()
        self._detector.reset()
        self._commit_start = self._audio.end
        self._audio.drop_before(self._commit_start)
        await self.emit({"type": "input_audio_buffer.cleared"})

    async def _on_speech_started(self, audio_start_ms: int) -> None:
        turn_detection = self.config.turn_detection
        start = max(self._commit_start, _ms_to_samples(audio_start_ms - turn_detection.prefix_padding_ms))
        self._turn = UserTurn(ev.new_id("item"), start, SettledSpeech(start))
        await self.emit({"type": "input_audio_buffer.speech_started", "audio_start_ms": audio_start_ms, "item_id": self._turn.item_id})
        if turn_detection.interrupt_response:
            await self._interrupt("turn_detected")
        if self._prewarm is None and not self.response_active and not self._transcriptions:
            self._prewarm_next_prompt()  # the first turn: nothing has been evaluated yet
        if self.config.partial_transcripts:
            self._turn.partials = asyncio.create_task(self._stream_partials(self._turn))

    def _on_speech_paused(self, audio_end_ms: int) -> None:
        """Start the turn's work now, in case this pause ends the turn."""
        turn = self._turn
        if turn is None:
            return
        self._drop_speculation()
        speculation = self._speculation(turn, audio_end_ms)
        speculation.marks["speech_paused"] = time.monotonic()
        # The pause's pass covers the partial one's audio and more. Run after it, the partial pass
        # shares the cores with the reply's first token; if the user goes on, the next one starts.
        in_flight = turn.partial_pass is not None and not turn.partial_pass.done()
        if in_flight and self.config.drop_partial_at_pause:
            turn.partial_pass.cancel()  # a running encoder cannot be stopped, but its decoder is then never queued
        speculation.marks["partial_at_pause"] = in_flight
        speculation.task = asyncio.create_task(self._speculate(speculation))
        turn.speculation = speculation
        turn.speculations += 1
        turn_detection = self.config.turn_detection
        if turn_detection.end_after_judgment:  # until the words are judged, the pause may be a long one
            self._detector.hold_pause(longest_hold(turn_detection))

    def _speculation(self, turn: UserTurn, audio_end_ms: int) -> Speculation:
        """The turn's audio up to `audio_end_ms` (and a little after), to transcribe from its settled start."""
        end = min(self._audio.end, _ms_to_samples(audio_end_ms + TRAILING_CONTEXT_MS))
        start, words = turn.settled.snapshot()
        return Speculation(audio_end_ms, end, self._audio.slice(start, end), settled_words=words,
                           settled_samples=start - turn.start_sample, heard_words=list(turn.settled.heard))

    def _on_speech_resumed(self, resumed: SpeechResumed) -> None:
        """The user went on: the pause's speculation is dropped, and the words before the pause may settle."""
        turn = self._turn
        if turn is None:
            return
        if self.config.settle_pauses and self.config.partial_transcripts:
            speculation = turn.speculation
            transcribed = None
            if speculation is not None and speculation.transcript is not None and speculation.audio_end_ms == resumed.audio_end_ms:
                transcribed = (speculation.end_sample, speculation.transcript)
            turn.settled.paused(_ms_to_samples(resumed.audio_end_ms),
                                _ms_to_samples(resumed.audio_end_ms + resumed.silence_ms), transcribed)
        self._drop_speculation()

    async def _speculate(self, speculation: Speculation) -> Transcript:
        turn_detection = self.config.turn_detection
        hold_ms = turn_detection.silence_duration_ms if turn_detection else 0
        try:
            transcript = speculation.whole_turn(await self.models.transcribe(speculation.audio))
            speculation.transcript = transcript
            speculation.marks.update(transcript_final=time.monotonic(), asr_started=transcript.started)
            if transcript.stop_p is not None:
                speculation.marks["heard_stop_p"] = round(transcript.stop_p, 4)
            if turn_detection is None:
                return transcript
            replying = bool(transcript.text) and turn_detection.create_response and not self.response_active
            judging = (bool(transcript.text) and turn_detection.unfinished_rule == "llm"
                       and self._still_pausing(speculation))
            judgment = None
            if judging and replying and self.config.judge_in_reply and self.responder.judges_in_reply:
                # The reply starts now, whatever the verdict (it is thrown away if the user goes on),
                # and its first decode judges the words: the verdict and the first token come together.
                judgment = WordsJudgment(self._judged_messages(transcript.text))
                self._prefetch_reply(speculation, transcript.text, judgment)
            probability = None
            if judging:
                start_within_s = None
                if turn_detection.judge_by_words_when_llm_busy:
                    left_ms = turn_detection.silence_duration_ms - self._detector.silence_ms
                    start_within_s = max(left_ms, MIN_JUDGMENT_WAIT_MS) / 1000
                if judgment is not None:
                    probability = await judgment.probability(start_within_s)
                else:
                    probability = await self._sentence_end_probability(transcript.text, start_within_s)
                speculation.sentence_end = probability
                speculation.marks["judged"] = time.monotonic()
            reason, hold_ms = unfinished_hold(transcript.text, turn_detection, probability, transcript.stop_p)
            if self._still_pausing(speculation):
                speculation.unfinished = reason
        finally:  # judged, or failed to be: the pause now ends the turn after `hold_ms`
            if turn_detection is not None and self._still_pausing(speculation):
                self._detector.hold_pause(hold_ms)
        if transcript.text and turn_detection.create_response and not self.response_active and speculation.reply is None:
            self._prefetch_reply(speculation, transcript.text)
        return transcript

    def _prefetch_reply(self, speculation: Speculation, text: str, judgment: WordsJudgment | None = None) -> None:
        messages = self.conversation.chat_messages(self.config.instructions, pending_user_text=text)
        # The RunAhead below drains the reply as it is made: the responder need not buffer it again.
        settings = replace(self.config.reply_settings(), synthesize_ahead=False)
        reply = self.responder.respond(messages, settings, self.config.voice, speculation.marks, judgment=judgment)
        # A reply that ends without having judged the words (it failed, or was cancelled first) answers None.
        speculation.reply = RunAhead(reply, on_end=(lambda: judgment.answer(None)) if judgment else None)

    def _judged_messages(self, text: str) -> list[dict[str, str]]:
        """The conversation as the LLM judges whether `text` ends a sentence: its final punctuation is no evidence."""
        return self.conversation.chat_messages(self.config.instructions, pending_user_text=without_final_punctuation(text))

    def _still_pausing(self, speculation: Speculation) -> bool:
        """The pause this speculation was made for is still running (the user neither went on
        nor was the turn ended)."""
        return self._turn is not None and self._turn.speculation is speculation

    async def _sentence_end_probability(self, text: str, start_within_s: float | None) -> float | None:
        try:
            return await self.responder.sentence_end_probability(self._judged_messages(text), start_within_s)
        except Exception:  # the turn then ends by the words alone, never not at all
            log.exception("judging whether the words end a sentence failed")
            return None

    def _drop_speculation(self) -> None:
        if self._turn is not None and self._turn.speculation is not None:
            self._spawn(self._turn.speculation.cancel())
            self._turn.speculation = None

    async def _on_speech_stopped(self, audio_end_ms: int) -> None:
        stopped_at = time.monotonic()
        turn = self._end_turn(keep_speculation=True)
        if turn is None:
            return
        await self.emit({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": audio_end_ms, "item_id": turn.item_id})
        speculation = turn.speculation
        status = "none" if speculation is None else "pending"
        if speculation is not None and speculation.audio_end_ms != audio_end_ms:  # stale: made for an earlier pause
            self._spawn(speculation.cancel())
            speculation, status = None, "stale"
        if speculation is None:
            speculation = self._speculation(turn, audio_end_ms)
        speculation.marks.update(speech_stopped=stopped_at, speculation=status, speculations=turn.speculations,
                                 end_silence_ms=self._ending_silence_ms, unfinished=speculation.unfinished,
                                 asr_settled_s=speculation.settled_samples / SAMPLE_RATE)
        if speculation.sentence_end is not None:
            speculation.marks["sentence_end_p"] = round(speculation.sentence_end, 4)
        await self._commit(turn.item_id, speculation.audio, speculation.end_sample, speculation.marks,
                           respond=self.config.turn_detection.create_response, speculation=speculation)

    def _end_turn(self, keep_speculation: bool = False) -> UserTurn | None:
        if not keep_speculation:
            self._drop_speculation()
        turn, self._turn = self._turn, None
        if turn and turn.partials:
            turn.partials.cancel()
        return turn

    async def _commit(self, item_id: str, audio: np.ndarray, end_sample: int, marks: dict[str, Any], respond: bool,
                      speculation: Speculation | None = None) -> None:
        self._commit_start = max(self._commit_start, end_sample)
        self._audio.drop_before(self._commit_start)
        item = ConversationItem(item_id, "user", status="in_progress", from_audio=True)
        previous = self.conversation.add(item)
        await self.emit({"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous})
        await self.emit({"type": "conversation.item.added", "previous_item_id": previous,
                         "item": ev.user_item(item_id, transcript=None, status="in_progress")})
        transcription = self._spawn(self._transcribe(item, audio, marks, speculation))
        self._transcriptions.add(transcription)
        transcription.add_done_callback(self._transcriptions.discard)
        if respond and not self.response_active:
            self._response = asyncio.create_task(self._respond(marks, after=transcription, speculation=speculation))
        elif speculation is not None and speculation.task is not None:
            self._spawn(self._discard_prefetched_reply(speculation))

    @staticmethod
    async def _discard_prefetched_reply(speculation: Speculation) -> None:
        """Nobody will send the reply the speculation may start: stop it once it exists."""
        await asyncio.gather(speculation.task, return_exceptions=True)
        if speculation.reply is not None:
            await speculation.reply.cancel()

    async def _transcribe(self, item: ConversationItem, audio: np.ndarray, marks: dict[str, Any],
                          speculation: Speculation | None = None) -> Transcript:
        """`audio`, the turn's audio after its settled start when a `speculation` gives one."""
        try:
            if speculation is not None and speculation.task is not None:
                transcript = await speculation.task
            else:
                transcript = await self.models.transcribe(audio)
                if speculation is not None:
                    transcript = speculation.whole_turn(transcript)
        except Exception as exc:
            log.exception("transcription failed")
            await self.emit({"type": "conversation.item.input_audio_transcription.failed", "item_id": item.id, "content_index": 0,
                             "error": {"type": "server_error", "code": "transcription_failed", "message": str(exc)}})
            transcript = Transcript("", audio.size / SAMPLE_RATE, rejected=f"transcription failed: {exc}")
        marks.setdefault("transcript_final", time.monotonic())
        marks["asr_audio_s"] = transcript.audio_seconds
        item.text, item.status = transcript.text, "completed"
        await self.emit({"type": "conversation.item.input_audio_transcription.completed", "item_id": item.id, "content_index": 0,
                         "transcript": transcript.text, "usage": {"type": "duration", "seconds": round(transcript.audio_seconds, 3)}})
        await self.emit({"type": "conversation.item.done", "item": ev.user_item(item.id, transcript=transcript.text)})
        return transcript

    async def _stream_partials(self, turn: UserTurn) -> None:
        """Transcribe the growing utterance and emit the words two passes agree on
        (local agreement), so partials never take back what they said."""
        previous: list[str] = []
        emitted = 0
        settled = turn.settled
        while True:
            await asyncio.sleep(PARTIAL_INTERVAL_S)
            # In a pause the turn may be ending; a pass now would only delay the final one.
            if self._detector.silence_ms > 0:
                continue
            if (pause_end := settled.untranscribed_pause()) is not None:  # this time, the words before a pause
                head = await self._partial_pass(turn, self._audio.slice(settled.end_sample, pause_end))
                if head is not None:
                    settled.transcribed_pause(pause_end, head)
                continue
            # The whole turn, even once its start is settled: these words give the final pass's
            # first words after the settled ones their context (settled_speech.with_context).
            audio = self._audio.slice(turn.start_sample, self._audio.end)
            if audio.size < MIN_PARTIAL_AUDIO_S * SAMPLE_RATE:
                continue
            transcript = await self._partial_pass(turn, audio)
            if transcript is None:
                continue
            words = transcript.text.split()
            settled.agree(words)
            stable = agreed_prefix(previous, words)
            previous = words
            if stable > emitted:
                delta = " ".join(words[emitted:stable])
                await self.emit({"type": "conversation.item.input_audio_transcription.delta", "item_id": turn.item_id,
                                 "content_index": 0, "delta": (" " if emitted else "") + delta})
                emitted = stable
                if self.config.llm_prewarm_words and not self.response_active:  # they will open the prompt: evaluate them now
                    self._prewarm_next_prompt(user_words=" ".join(words[:stable]))

    async def _partial_pass(self, turn: UserTurn, audio: np.ndarray) -> Transcript | None:
        """One partial transcription of `audio`; None if a pause dropped it (`_on_speech_paused`)."""
        turn.partial_pass = asyncio.create_task(self.models.transcribe(audio, urgent=False))
        try:
            return await turn.partial_pass
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # the turn ended: the loop stops
                raise
            return None
        finally:
            turn.partial_pass = None

    # ----------------------------------------------------------------- conversation

    async def add_item(self, item: ConversationItem, wire_item: dict[str, Any]) -> None:
        previous = self.conversation.add(item)
        await self.emit({"type": "conversation.item.added", "previous_item_id": previous, "item": wire_item})
        await self.emit({"type": "conversation.item.done", "previous_item_id": previous, "item": wire_item})

    async def retrieve_item(self, item_id: str) -> None:
        item = self._find(item_id)
        if item.role == "assistant":
            wire = ev.assistant_item(item.id, transcript=item.text, status=item.status)
        elif item.from_audio:
            wire = ev.user_item(item.id, transcript=item.text, status=item.status)
        else:
            wire = ev.message_item(item.id, item.role, item.text)
        await self.emit({"type": "conversation.item.retrieved", "item": wire})

    async def delete_item(self, item_id: str) -> None:
        self._find(item_id)
        self.conversation.delete(item_id)
        await self.emit({"type": "conversation.item.deleted", "item_id": item_id})

    async def truncate(self, item_id: str, content_index: int, audio_end_ms: int) -> None:
        item = self._find(item_id)
        if item.role != "assistant":
            raise SessionError(f"item {item_id} is a {item.role} item; only assistant audio can be truncated", "invalid_value", "item_id")
        if audio_end_ms > item.audio_ms + 1:
            raise SessionError(f"audio_end_ms {audio_end_ms} is past the end of the item's audio ({item.audio_ms:.0f} ms)",
                               "invalid_value", "audio_end_ms")
        item.truncate(audio_end_ms)
        await self.emit({"type": "conversation.item.truncated", "item_id": item_id, "content_index": content_index,
                         "audio_end_ms": audio_end_ms})

    def _find(self, item_id: str) -> ConversationItem:
        item = self.conversation.get(item_id)
        if item is None:
            raise SessionError(f"no conversation item with id {item_id!r}", "item_not_found", "item_id")
        return item

    # ----------------------------------------------------------------- responses

    @property
    def response_active(self) -> bool:
        return self._response is not None and not self._response.done()

    async def create_response(self, instructions: str | None = None) -> None:
        if self.response_active:
            raise SessionError("a response is already in progress; cancel it first", "conversation_already_has_active_response")
        config = self.config if instructions is None else replace(self.config, instructions=instructions)
        self._response = asyncio.create_task(self._respond({"response_create": time.monotonic()}, config=config))

    async def cancel_response(self) -> None:
        if not self.response_active:
            raise SessionError("there is no response in progress to cancel", "response_cancel_not_active")
        await self._interrupt("client_cancelled")

    async def _interrupt(self, reason: str) -> None:
        """Stop the reply in flight, or cut the history of one the client is still playing."""
        if self.response_active:
            self._cancel_reason = reason
            self._response.cancel()
            await asyncio.gather(self._response, return_exceptions=True)
            return
        now = time.monotonic()
        if self._playback and self._playback.playing(now):
            self._playback.item.truncate(self._playback.heard_ms(now))

    async def _respond(self, marks: dict[str, Any], after: asyncio.Task | None = None, config: SessionConfig | None = None,
                       speculation: Speculation | None = None) -> None:
        try:
            await self._reply(marks, after, config or self.config, speculation)
        finally:
            if speculation is not None and speculation.reply is not None:
                await speculation.reply.cancel()
            self._prewarm_next_prompt()

    def _prewarm_next_prompt(self, user_words: str | None = None) -> None:
        """Start evaluating the next turn's prompt prefix, now that the history is settled (the
        reply is in it, cut to what was heard if it was interrupted), and with `user_words`, the
        words of the turn in progress that the partial transcripts agree on. The LLM drops this
        work as soon as a real request arrives."""
        if not self.config.llm_prewarm or self.responder is None or self._closing:
            return
        history_running = self._prewarm is not None and not self._prewarm.done() and not self._prewarming_words
        if user_words and history_running:
            return  # the history first: the words are tried again at the next partial transcript
        if self._prewarm is not None:
            self._prewarm.cancel()
        self._prewarming_words = bool(user_words)
        instructions = self.config.instructions
        if user_words:
            messages = self.conversation.chat_messages(instructions, pending_user_text=user_words)
            # Only the new words: when another session has taken the cache, its whole prompt is not worth it.
            self._prewarm = self._spawn(self._run_prewarm(messages, max_new_tokens=WORDS_PREWARM_MAX_NEW_TOKENS))
        else:
            self._prewarm = self._spawn(self._run_prewarm(self.conversation.next_prompt_prefix(instructions)))

    async def _run_prewarm(self, messages: list[dict[str, str]], max_new_tokens: int | None = None) -> None:
        try:
            await self.responder.prewarm(messages, max_new_tokens)
        except Exception:  # an optimisation: a failure costs the next turn time, never the session
            log.exception("pre-evaluating the next prompt failed")

    async def _reply(self, marks: dict[str, Any], after: asyncio.Task | None, config: SessionConfig,
                     speculation: Speculation | None) -> None:
        # Shielded: a barge-in cancels this reply, never the transcript of what the user said.
        if after is not None and not (await asyncio.shield(after)).text:
            return  # nothing intelligible was said: no reply, as a person would not answer a cough
        # Read only now: the speculation may have started the reply while the transcript finished.
        prefetched = speculation.reply if speculation is not None else None
        if marks.get("speculation") == "pending":
            marks["speculation"] = "reply" if prefetched is not None else "transcript"
        if self._transcriptions:  # `commit` then `response.create` at once: answer what was said
            await asyncio.shield(asyncio.gather(*self._transcriptions, return_exceptions=True))
        messages = self.conversation.chat_messages(config.instructions)
        pieces = prefetched.items() if prefetched else self.responder.respond(messages, config.reply_settings(), config.voice, marks)
        await self._stream_response(config, marks, pieces)

    async def _stream_response(self, config: SessionConfig, marks: dict[str, Any], pieces: AsyncIterator[SpeechPiece]) -> None:
        """One response's events around the reply audio `pieces`, from `response.created` to
        `response.done`, whatever the reply path."""
        response_id = ev.new_id("resp")
        item = ConversationItem(ev.new_id("item"), "assistant", status="in_progress")
        playback = self._playback = Playback(item)
        voice = config.voice or self.default_voice
        previous = self.conversation.add(item)
        status, reason, error = "completed", None, None
        try:
            # Everything after response.created sits inside the try: whenever a cancel lands,
            # the client still gets the response's closing events.
            await self.emit({"type": "response.created", "response": ev.response_object(response_id, status="in_progress", voice=voice)})
            await self.emit({"type": "response.output_item.added", "response_id": response_id, "output_index": 0,
                             "item": ev.assistant_item(item.id)})
            await self.emit({"type": "conversation.item.added", "previous_item_id": previous, "item": ev.assistant_item(item.id)})
            await self.emit(ev.audio_part_event("response.content_part.added", response_id, item.id,
                                                part={"type": "audio", "transcript": ""}))
            async with aclosing(pieces) as stream:
                async for piece in stream:
                    if piece.clause:
                        await self.emit(ev.audio_part_event("response.output_audio_transcript.delta", response_id, item.id,
                                                            delta=(" " if item.segments else "") + piece.clause))
                        item.add_spoken(piece.clause, 0.0)
                    await self._send_audio(response_id, playback, piece.audio, marks)
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()
            status, reason = "cancelled", self._cancel_reason
        except Exception as exc:
            log.exception("response %s failed", response_id)
            status, error = "failed", {"type": "server_error", "code": "response_failed", "message": str(exc)}

        if status == "completed" and marks.get("llm_finish_reason") == "length":
            status, reason = "incomplete", "max_output_tokens"  # as the Realtime API reports a reply the cap cut
        spoken = item.text
        if status == "cancelled":
            item.truncate(playback.heard_ms(time.monotonic()))
        item.status = "completed" if status == "completed" else "incomplete"
        wire_item = ev.assistant_item(item.id, transcript=item.text, status=item.status)
        await self.emit(ev.audio_part_event("response.output_audio.done", response_id, item.id))
        await self.emit(ev.audio_part_event("response.output_audio_transcript.done", response_id, item.id, transcript=spoken))
        await self.emit(ev.audio_part_event("response.content_part.done", response_id, item.id, part={"type": "audio", "transcript": spoken}))
        await self.emit({"type": "response.output_item.done", "response_id": response_id, "output_index": 0, "item": wire_item})
        await self.emit({"type": "conversation.item.done", "previous_item_id": previous, "item": wire_item})
        done = ev.response_object(response_id, status=status, output=[wire_item], status_reason=reason, voice=voice,
                                  extension={"timings": _timings(marks), "audio_ms": round(item.audio_ms), **self.wire_extension()})
        if error:
            done["status_details"] = {"type": "failed", "error": error}
            await self.emit(ev.error(f"the response failed: {error['message']}", "response_failed", error_type="server_error"))
        await self.emit({"type": "response.done", "response": done})

    async def _send_audio(self, response_id: str, playback: Playback, audio: np.ndarray, marks: dict[str, Any]) -> None:
        for start in range(0, audio.size, DELTA_SAMPLES):
            piece = audio[start:start + DELTA_SAMPLES]
            now = time.monotonic()
            if "first_audio_sent" not in marks:
                marks["first_audio_sent"] = now
            if playback.chunks:
                ahead_s = playback.sent_ms / 1000 - (BURST_S + PACE * (now - playback.chunks[0][0]))
                if ahead_s > 0:
                    await asyncio.sleep(ahead_s / PACE)
            await self.emit(ev.audio_part_event("response.output_audio.delta", response_id, playback.item.id,
                                                delta=encode_base64_pcm16(piece)))
            duration_ms = 1000 * piece.size / WIRE_RATE
            playback.sent(time.monotonic(), duration_ms)
            if not playback.item.segments:  # audio with no words (the native path): one wordless segment
                playback.item.add_spoken("", 0.0)
            playback.item.segments[-1].end_ms += duration_ms

    # ----------------------------------------------------------------- lifecycle

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def close(self) -> None:
        """Stop everything this session started; the model threads finish their current step."""
        self._closing = True
        self._end_turn()
        tasks = [t for t in (self._response, *self._background) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _ms_to_samples(ms: float) -> int:
    return max(0, int(ms * SAMPLE_RATE / 1000))


_MONOTONIC_TO_UNIX = time.time() - time.monotonic()


def _timings(marks: dict[str, Any]) -> dict[str, float | str | None]:
    """Stage times in ms after the turn's reference point: the end of the user's speech as the
    VAD confirmed it, or the commit / response.create that started the reply."""
    reference_name = next((name for name in ("speech_stopped", "committed", "response_create") if name in marks), None)
    reference = marks.get(reference_name, 0.0)
    timings: dict[str, float | str | None] = {
        "reference": reference_name,
        "reference_unix": round(reference + _MONOTONIC_TO_UNIX, 4) if reference_name else None,
    }
    for name in ("transcript_final", "llm_first_token", "tts_first_audio", "first_audio_sent", "llm_done"):
        timings[f"{name}_ms"] = round(1000 * (marks[name] - reference), 1) if name in marks else None
    for name in ("asr_audio_s", "asr_settled_s"):  # the turn's audio, and how much of it was settled before its end
        if name in marks:
            timings[name] = round(marks[name], 3)
    # Why a turn was slow: optional, present when the path knows them.
    for name in ("speech_paused", "asr_started", "judged", "llm_start", "llm_first_clause"):
        if marks.get(name) is not None:
            timings[f"{name}_ms"] = round(1000 * (marks[name] - reference), 1)
    for name in ("speculation", "speculations", "end_silence_ms", "unfinished", "sentence_end_p", "heard_stop_p",
                 "llm_prompt_tokens", "llm_cached_tokens", "reply_end", "partial_at_pause"):
        if name in marks:
            timings[name] = marks[name]
    if "clauses" in marks:
        timings["clauses"] = [clause.relative_ms(reference) for clause in marks["clauses"]]
    return timings
