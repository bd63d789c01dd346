"""One native-path conversation: the Realtime protocol over a full-duplex speech LM.

Everything that is not the reply is `VoiceSession`'s: input audio, Silero VAD and turn
detection, user items, history and its truncation, barge-in, the pacing of outgoing audio
and the response events. What differs is where reply audio comes from. The model runs all
the time (`duplex_runtime`): every input frame is encoded and stepped through the speech
LM, and every frame it says is decoded, whether anyone listens or not. This session decides
which of that audio becomes a response.

Response policy:

- A response window opens when a user turn ends (server VAD's `speech_stopped`, or
  `input_audio_buffer.commit`, with `create_response`), or on `response.create`.
- After a turn: the response opens (`response.created`, output item, content part) at the
  first audible frame the model says after the end of the user's speech. What the model
  said while the VAD waited out its silence hangover is kept (`LOOKBACK_FRAMES`) and sent
  first, so the reply starts where the model started it. If the model stays silent for
  `ResponsePolicy.reply_wait_s`, there is no response, as the cascade does not answer a cough.
- On `response.create`: the response opens at once, its audio starts at the first audible
  frame the model says after the request.
- A response completes after `end_silence_ms` of silent output (that silence is sent), or
  after `max_reply_s`. Barge-in ends it `cancelled` / `turn_detected` and `response.cancel`
  `cancelled` / `client_cancelled`, exactly as in the cascade, with the item truncated to
  what the client played.
- Outside a response the model's output is not sent, in particular while the user speaks:
  that is the server's half of barge-in. The model's own half is that it hears the user
  throughout and, trained as `train_native` trains it, falls silent while the user talks.
- The model's clock is the input audio. While a response is open and the client sends no
  audio (manual mode after a commit), the model hears a silent microphone in real time,
  or it could never say anything.
- There is no text channel: user transcripts and assistant transcripts are empty strings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from voxloop.codecs.encodec_stream import FRAME_SAMPLES, SAMPLE_RATE
from voxloop.streaming import events as ev
from voxloop.voice.cascade import SpeechPiece
from voxloop.voice.config import SessionConfig
from voxloop.voice.duplex_runtime import FRAME_MS, DuplexOutput
from voxloop.voice.native_models import NativeModels
from voxloop.voice.session import Emit, UserTurn, VoiceSession

log = logging.getLogger(__name__)

MAX_CALL_SAMPLES = 24 * FRAME_SAMPLES  # bounds one model call (320 ms), so sessions sharing the worker take turns
LOOKBACK_FRAMES = 225  # 3 s of the model's most recent output, for a response that opens late
INPUT_GAP_S = 0.3  # no client audio for this long during a response: feed the model silence
IDLE_TICK_S = 0.04
STALL_S = 5.0  # a response whose model output stops coming for this long ends
BACKLOG_WARN_S = 2.0


@dataclass
class ResponsePolicy:
    reply_wait_s: float = 3.0  # after a turn, how long the model may stay silent before there is no response
    end_silence_ms: float = 800.0  # silent output that completes a response
    max_reply_s: float = 30.0


@dataclass(frozen=True)
class OutputFrame:
    index: int  # on the conversation's frame clock (13.3 ms per frame since the session began)
    audio: np.ndarray
    audible: bool


class _Window:
    """The model's output frames from `start_frame` on, for one response."""

    def __init__(self, start_frame: int):
        self.start_frame = start_frame
        self._frames: asyncio.Queue[OutputFrame] = asyncio.Queue()

    def offer(self, frame: OutputFrame) -> None:
        if frame.index >= self.start_frame:
            self._frames.put_nowait(frame)

    async def take(self, timeout: float) -> list[OutputFrame]:
        """Every frame waiting, at least one; TimeoutError if none comes in `timeout` seconds."""
        batch = [await asyncio.wait_for(self._frames.get(), timeout)]
        while not self._frames.empty():
            batch.append(self._frames.get_nowait())
        return batch


class NativeSession(VoiceSession):
    def __init__(self, models: NativeModels, emit: Emit, config: SessionConfig | None = None,
                 policy: ResponsePolicy | None = None):
        super().__init__(models, emit, config or SessionConfig(partial_transcripts=False))
        self.policy = policy or ResponsePolicy()
        self._duplex = None  # made on the worker thread: building the codec and LM state takes ~50 ms
        self._pending = np.zeros(0, dtype=np.float32)
        self._input_arrived = asyncio.Event()
        self._client_samples = 0
        self._padded_samples = 0  # silence fed to the model while the client sent nothing
        self._last_input_at = time.monotonic()
        self._fill_clock = 0.0
        self._lookback: deque[OutputFrame] = deque(maxlen=LOOKBACK_FRAMES)
        self._window: _Window | None = None
        self._turn_end_frame = 0
        self._warned_behind = False
        # Audio goes to the model in chunks of several frames: a codec call costs milliseconds whatever its length.
        self._chunk_samples = models.chunk_frames * FRAME_SAMPLES
        self.compute_s = 0.0  # worker time this session has used
        self._spawn(self._run_model())

    def _make_responder(self, models) -> None:
        return None  # replies come from the speech LM's output, not from text

    @property
    def default_voice(self) -> str:
        return "speech-lm"  # the voice is whatever the speech LM was trained to speak in

    def wire_extension(self) -> dict:
        return {"path": "native", "weights": self.models.weights_note}

    # ----------------------------------------------------------------- input

    async def append_audio(self, samples: np.ndarray) -> None:
        # The model hears everything at once, before turn detection reacts to it.
        self._pending = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        self._client_samples += samples.size
        self._last_input_at = time.monotonic()
        self._input_arrived.set()
        await super().append_audio(samples)

    async def commit_audio(self) -> None:
        self._turn_end_frame = self._now_frame()
        await super().commit_audio()

    async def _on_speech_stopped(self, audio_end_ms: int) -> None:
        self._turn_end_frame = (audio_end_ms * SAMPLE_RATE // 1000 + self._padded_samples) // FRAME_SAMPLES
        await super()._on_speech_stopped(audio_end_ms)

    def _on_speech_paused(self, audio_end_ms: int) -> None:
        pass  # nothing to prepare early: the model is already listening

    async def _stream_partials(self, turn: UserTurn) -> None:
        pass  # no text channel

    def _now_frame(self) -> int:
        """The frame the latest input belongs to, on the model's frame clock."""
        return (self._client_samples + self._padded_samples) // FRAME_SAMPLES

    # ----------------------------------------------------------------- the model loop

    async def _run_model(self) -> None:
        try:
            self._duplex = await self.models.run(self.models.new_stream)
            while True:
                pcm = self._next_input()
                if pcm is None:
                    self._input_arrived.clear()
                    # While a response is open the clock must run on even without input (see _silence_fill).
                    try:
                        await asyncio.wait_for(self._input_arrived.wait(), IDLE_TICK_S if self.response_active else None)
                    except TimeoutError:
                        pass
                    continue
                output = await self.models.run(self._duplex.process, pcm)
                self.compute_s += output.compute_s
                self._route(output)
        except Exception as exc:
            log.exception("the native model failed")
            await self.emit(ev.error(f"the native model failed: {exc}; the assistant is silent for the rest of this session",
                                     "model_failed", error_type="server_error"))

    def _next_input(self) -> np.ndarray | None:
        if self._pending.size >= self._chunk_samples:
            if self._pending.size > BACKLOG_WARN_S * SAMPLE_RATE and not self._warned_behind:
                self._warned_behind = True
                log.warning("the native model runs slower than real time here: %.1f s of input is waiting "
                            "(a smaller speech LM, or a GPU with --native-device cuda, keeps up)", self._pending.size / SAMPLE_RATE)
            take = max(MAX_CALL_SAMPLES, self._chunk_samples)
            pcm, self._pending = self._pending[:take], self._pending[take:]
            return pcm
        return self._silence_fill()

    def _silence_fill(self) -> np.ndarray | None:
        """While a response is open and the client sends nothing, the model hears a silent
        microphone, in real time."""
        now = time.monotonic()
        if not self.response_active or now - self._last_input_at < INPUT_GAP_S:
            return None
        start = max(self._fill_clock, self._last_input_at)
        fill = min(int((now - start) * SAMPLE_RATE), max(MAX_CALL_SAMPLES, self._chunk_samples) - self._pending.size)
        if self._pending.size + fill < self._chunk_samples:
            return None
        self._fill_clock = start + fill / SAMPLE_RATE
        self._padded_samples += fill
        pcm = np.concatenate([self._pending, np.zeros(fill, dtype=np.float32)])
        self._pending = np.zeros(0, dtype=np.float32)
        return pcm

    def _route(self, output: DuplexOutput) -> None:
        for i in range(output.frames):
            frame = OutputFrame(output.first_frame + i, output.frame_audio(i), bool(output.audible[i]))
            self._lookback.append(frame)
            if self._window is not None:
                self._window.offer(frame)

    # ----------------------------------------------------------------- responses

    async def _reply(self, marks: dict[str, float], after: asyncio.Task | None, config: SessionConfig, speculation) -> None:
        after_turn = after is not None
        if after_turn:
            await asyncio.shield(after)  # the (empty) user transcript goes out before the response
        window = _Window(self._turn_end_frame if after_turn else self._now_frame())
        for frame in self._lookback:
            window.offer(frame)
        self._window = window
        self._input_arrived.set()  # wake the model loop: from now on it keeps the clock running without input
        try:
            first = None
            if after_turn:
                first = await self._first_audible(window, marks)
                if first is None:
                    return  # the model chose to stay silent: no response
            await self._stream_response(config, marks, self._model_speech(window, first, marks))
        finally:
            if self._window is window:
                self._window = None

    async def _first_audible(self, window: _Window, marks: dict[str, float]) -> list[OutputFrame] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.reply_wait_s
        while (remaining := deadline - loop.time()) > 0:
            try:
                batch = await window.take(remaining)
            except TimeoutError:
                break
            for i, frame in enumerate(batch):
                if frame.audible:
                    marks["model_first_audible"] = time.monotonic()
                    return batch[i:]
        return None

    async def _model_speech(self, window: _Window, first: list[OutputFrame] | None,
                            marks: dict[str, float]) -> AsyncIterator[SpeechPiece]:
        batch = first if first is not None else await self._first_audible(window, marks)
        if batch is None:
            return  # asked to speak, the model said nothing audible: the response completes empty
        quiet_ms = spoken_ms = 0.0
        while True:
            yield SpeechPiece(np.concatenate([frame.audio for frame in batch]))
            for frame in batch:
                quiet_ms = 0.0 if frame.audible else quiet_ms + FRAME_MS
            spoken_ms += len(batch) * FRAME_MS
            if quiet_ms >= self.policy.end_silence_ms or spoken_ms >= 1000 * self.policy.max_reply_s:
                return
            try:
                batch = await window.take(STALL_S)
            except TimeoutError:
                log.warning("the native model produced no output for %.0f s; ending the response", STALL_S)
                return
