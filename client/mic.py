"""A live spoken conversation: microphone blocks to the server, reply audio to the speaker.

`LiveTalk` is the client's logic, independent of the terminal and of the sound card: it talks to a connected
`RealtimeClient` and to any `AudioDevice`. It

- streams the (echo-cancelled) microphone as `input_audio_buffer.append`, or silence while muted / while the
  assistant speaks in half-duplex mode, or only while the talk key is on in push-to-talk mode;
- queues reply audio on the device, and on the user cutting in (`speech_started`, or the talk key) drops the
  queued audio at once and tells the server with `conversation.item.truncate` how much of the reply was heard;
- keeps `TalkState` up to date (transcripts, level, latency per turn; see `voice_latency` for the definition).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import websockets

from voxloop.client.aec import EchoCanceller
from voxloop.client.audio_io import WIRE_RATE, AudioDevice
from voxloop.client.realtime_client import RealtimeClient
from voxloop.client.talk_state import TalkState, Turn
from voxloop.client.voice_latency import SpeechEndTracker, first_audible_index
from voxloop.codecs.pcm import pcm16_to_float, rms_dbfs

log = logging.getLogger(__name__)

HALF_DUPLEX_HANGOVER_S = 0.3  # the room still rings a little after the speaker stops
MIN_COMMIT_S = 0.1  # the server refuses to commit less
DEFAULT_SILENCE_MS = 500


@dataclass
class LiveOptions:
    aec: bool = True
    noise_suppression: bool = True
    half_duplex: bool = False
    push_to_talk: bool = False
    instructions: str | None = None
    max_output_tokens: int | None = None


@dataclass
class _ReplyAudio:
    """One assistant item's audio on the playback timeline."""

    item_id: str
    turn: Turn
    start_ms: float | None = None
    received_ms: float = 0.0
    audible_at_ms: float | None = None  # timeline position of its first audible sample

    def played_ms(self, timeline_ms: float) -> float:
        if self.start_ms is None:
            return 0.0
        return min(max(timeline_ms - self.start_ms, 0.0), self.received_ms)

    def played_out(self, timeline_ms: float) -> bool:
        return self.start_ms is None or timeline_ms >= self.start_ms + self.received_ms - 0.5


@dataclass(frozen=True)
class BargeIn:
    at: float  # time.monotonic() when the speaker was silenced
    item_id: str | None
    heard_ms: int | None  # what was sent in conversation.item.truncate (None: nothing to truncate)
    dropped_ms: float  # queued reply audio thrown away


class LiveTalk:
    def __init__(self, client: RealtimeClient, device: AudioDevice, options: LiveOptions | None = None,
                 state: TalkState | None = None, echo_canceller: EchoCanceller | None = None,
                 on_turn_finished: Callable[[Turn], None] | None = None):
        self.client = client
        self.device = device
        self.options = options or LiveOptions()
        self.state = state or TalkState()
        self.state.aec = self.options.aec
        self.state.push_to_talk = self.options.push_to_talk
        self.state.mic = "idle" if self.options.push_to_talk else "live"
        if echo_canceller is None and self.options.aec:
            echo_canceller = EchoCanceller(WIRE_RATE, noise_suppression=self.options.noise_suppression)
        self._aec = echo_canceller if self.options.aec else None
        self._on_turn_finished = on_turn_finished or (lambda turn: None)
        self.barge_ins: list[BargeIn] = []
        self.event_log: list[tuple[float, str]] = []  # (arrival time, type) of every server event
        self.exit_reason: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mic_blocks: asyncio.Queue | None = None
        self._stop: asyncio.Event | None = None
        self._speech_end = SpeechEndTracker()
        self._silence_ms = DEFAULT_SILENCE_MS
        self._replies: dict[str, _ReplyAudio] = {}
        self._playing: _ReplyAudio | None = None  # the reply whose audio was queued last
        self._active_response: str | None = None
        self._dropped_responses: set[str] = set()
        self._last_playing_at = float("-inf")
        self._muted = False
        self._talking = False
        self._talk_samples = 0
        self._reply_after_transcript: str | None = None  # push-to-talk: the committed item awaiting its transcript

    # ----------------------------------------------------------------- running

    async def run(self) -> None:
        """Converse until `stop()` or until the server goes away (then `exit_reason` says why)."""
        self._loop = asyncio.get_running_loop()
        self._mic_blocks = asyncio.Queue()
        self._stop = asyncio.Event()
        if self.exit_reason is not None:  # stopped (Ctrl-C) before it got going
            self._stop.set()
        await self._configure_session()
        self.device.start(self._on_mic_block)
        if self._aec is not None:
            self._aec.delay_ms = int(self.device.input_latency_ms + self.device.output_latency_ms)
        self.state.connection = "connected"
        workers = [asyncio.create_task(self._receive()), asyncio.create_task(self._pump_microphone())]
        stopped = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait([*workers, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*workers, stopped):
                task.cancel()
            await asyncio.gather(*workers, stopped, return_exceptions=True)
        for task in done:
            if task is not stopped and not task.cancelled() and task.exception() is not None:
                raise task.exception()

    def stop(self, reason: str = "quit") -> None:
        self.exit_reason = self.exit_reason or reason
        if self._stop is not None:
            self._stop.set()

    async def _configure_session(self) -> None:
        session: dict = {"type": "realtime"}
        if self.options.instructions:
            session["instructions"] = self.options.instructions
        if self.options.push_to_talk:
            session["audio"] = {"input": {"turn_detection": None}}
        if self.options.max_output_tokens:
            session["max_output_tokens"] = self.options.max_output_tokens
        if len(session) > 1:
            await self.client.send({"type": "session.update", "session": session})

    def _on_mic_block(self, samples: np.ndarray, captured_at: float) -> None:
        """Runs on the audio thread: hand the block to the event loop."""
        try:
            self._loop.call_soon_threadsafe(self._mic_blocks.put_nowait, (samples, captured_at))
        except RuntimeError:  # the loop is closing; the block has nowhere to go
            pass

    # ----------------------------------------------------------------- microphone

    async def _pump_microphone(self) -> None:
        while True:
            samples, captured_at = await self._mic_blocks.get()
            if self._aec is not None:
                self._aec.far_end(self.device.take_played())
                samples = self._aec.process(samples)
                self.state.echo_path_db = self._aec.echo_path_db
                if not samples.size:
                    continue
            level = rms_dbfs(samples)
            self.state.level_dbfs = level
            self._speech_end.observe(level, captured_at, samples.size / WIRE_RATE)
            self.update_playback()
            outgoing = self._gate(samples)
            if outgoing is not None:
                try:
                    await self.client.append_audio(outgoing)
                except websockets.ConnectionClosed:
                    self._disconnected("the server closed the connection")
                    return

    def _gate(self, samples: np.ndarray) -> np.ndarray | None:
        """What the server gets for this block: the mic, silence (so its clock keeps running), or nothing."""
        silence = np.zeros_like(samples)
        if self.options.push_to_talk:
            if not self._talking:
                self.state.mic = "muted" if self._muted else "idle"
                return None
            self._talk_samples += samples.size
            self.state.mic = "muted" if self._muted else "talking"
            return silence if self._muted else samples
        if self._muted:
            self.state.mic = "muted"
            return silence
        if self.options.half_duplex and time.monotonic() - self._last_playing_at < HALF_DUPLEX_HANGOVER_S:
            self.state.mic = "held"
            return silence
        self.state.mic = "live"
        return samples

    def toggle_mute(self) -> None:
        self._muted = not self._muted
        if self._muted:
            self.state.mic = "muted"
        elif self.options.push_to_talk:
            self.state.mic = "talking" if self._talking else "idle"
        else:
            self.state.mic = "live"

    async def toggle_talk(self) -> None:
        """Push-to-talk: the first press opens the user's turn (cutting the assistant off), the second sends it."""
        if not self.options.push_to_talk:
            return
        if not self._talking:
            if self._assistant_pending():
                await self._barge_in(cancel_response=True)
            await self.client.send({"type": "input_audio_buffer.clear"})
            self._talking, self._talk_samples = True, 0
            self.state.user_speaking = True
            self.state.turns.append(Turn())
            return
        self._talking = False
        self.state.user_speaking = False
        turn = self._open_turn()
        turn.speech_end_at, turn.speech_end_source = time.monotonic(), "push-to-talk key"
        if self._talk_samples < MIN_COMMIT_S * WIRE_RATE:
            self.state.notify("too short to send: hold the turn open a little longer")
            await self.client.send({"type": "input_audio_buffer.clear"})
            self._finish(turn)
            return
        # The reply is asked for once the transcript is in, so the model answers what was actually said.
        self._reply_after_transcript = ""
        await self.client.send({"type": "input_audio_buffer.commit"})

    def handle_key(self, key: str) -> None:
        if key in ("q", "Q"):
            self.stop("quit")
        elif key in ("m", "M"):
            self.toggle_mute()
        elif key == " " and self.options.push_to_talk:
            self._loop.create_task(self.toggle_talk()).add_done_callback(self._report_key_failure)

    def _report_key_failure(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is None:
            return
        if isinstance(task.exception(), websockets.ConnectionClosed):
            self._disconnected("the server closed the connection")
        else:
            self.state.notify(f"push-to-talk failed: {task.exception()}")

    # ----------------------------------------------------------------- playback

    def update_playback(self) -> None:
        """Latency of turns whose first audible sample has now been played, and turns that have finished."""
        now = time.monotonic()
        played, queued = self.device.played_ms, self.device.queued_ms
        if queued > 0:
            self._last_playing_at = now
        self.state.assistant_speaking = queued > 0
        for reply in self._replies.values():
            turn = reply.turn
            if turn.latency_ms is None and reply.audible_at_ms is not None and played >= reply.audible_at_ms \
                    and turn.speech_end_at is not None:
                audible_at = now - (played - reply.audible_at_ms) / 1000.0 + self.device.output_latency_ms / 1000.0
                turn.latency_ms = (audible_at - turn.speech_end_at) * 1000.0
        for turn in self.state.turns:
            if not turn.finished and turn.status is not None:
                reply = self._replies.get(turn.assistant_item_id or "")
                if reply is None or reply.played_out(played) or turn.heard_ms is not None:
                    self._finish(turn)

    def _finish(self, turn: Turn) -> None:
        if not turn.finished:
            turn.finished = True
            self._replies.pop(turn.assistant_item_id or "", None)
            self._on_turn_finished(turn)

    def _assistant_pending(self) -> bool:
        return self.device.queued_ms > 0 or self._active_response is not None

    async def _barge_in(self, cancel_response: bool = False) -> None:
        """The user cut in: silence the speaker now, then tell the server how much of the reply was heard."""
        dropped = self.device.queued_ms
        self.device.flush()
        at = time.monotonic()
        active = self._active_response
        if active is not None:
            self._dropped_responses.add(active)
        reply, heard = self._playing, None
        if reply is not None and reply.start_ms is not None and (dropped > 0 or active is not None):
            heard = int(reply.played_ms(self.device.played_ms))
            reply.turn.heard_ms = float(heard)
            await self.client.send({"type": "conversation.item.truncate", "item_id": reply.item_id, "content_index": 0,
                                    "audio_end_ms": heard})
        if cancel_response and active is not None:
            await self.client.send({"type": "response.cancel"})
        self.barge_ins.append(BargeIn(at, reply.item_id if reply else None, heard, dropped))
        self.state.assistant_speaking = False

    # ----------------------------------------------------------------- server events

    async def _receive(self) -> None:
        try:
            async for event in self.client.events():
                self.event_log.append((time.monotonic(), event.get("type", "?")))
                await self._handle(event)
        except websockets.ConnectionClosedOK:
            pass
        except websockets.ConnectionClosed as exc:
            self._disconnected(f"the connection broke ({exc})")
            return
        self._disconnected("the server closed the connection")

    def _disconnected(self, why: str) -> None:
        self.state.connection = f"disconnected: {why}"
        self.stop(why)

    async def _handle(self, event: dict) -> None:
        kind = event.get("type")
        if kind in ("session.created", "session.updated"):
            turn_detection = ((event.get("session") or {}).get("audio") or {}).get("input", {}).get("turn_detection")
            if turn_detection:
                self._silence_ms = turn_detection.get("silence_duration_ms", DEFAULT_SILENCE_MS)
        elif kind == "input_audio_buffer.speech_started":
            self.state.user_speaking = True
            self.state.turns.append(Turn(user_item_id=event.get("item_id")))
            if self._assistant_pending():
                await self._barge_in()
        elif kind == "input_audio_buffer.speech_stopped":
            self.state.user_speaking = False
            turn = self._turn_for_item(event.get("item_id"))
            turn.speech_end_at, turn.speech_end_source = self._speech_end.speech_end(time.monotonic(), self._silence_ms)
        elif kind == "input_audio_buffer.committed":
            turn = self._turn_for_item(event.get("item_id"))
            if self._reply_after_transcript == "":
                self._reply_after_transcript = turn.user_item_id
        elif kind == "conversation.item.input_audio_transcription.delta":
            turn = self._turn_for_item(event.get("item_id"))
            if not turn.user_final:
                turn.user_text += event.get("delta", "")
        elif kind == "conversation.item.input_audio_transcription.completed":
            await self._on_transcript(event)
        elif kind == "response.created":
            self._on_response_created(event["response"]["id"])
        elif kind == "response.output_item.added":
            turn = self._turn_for_response(event.get("response_id"))
            turn.assistant_item_id = event["item"]["id"]
            self._replies[turn.assistant_item_id] = _ReplyAudio(turn.assistant_item_id, turn)
        elif kind == "response.output_audio_transcript.delta":
            if event.get("response_id") not in self._dropped_responses:
                self._turn_for_response(event.get("response_id")).assistant_text += event.get("delta", "")
        elif kind == "response.output_audio.delta":
            self._on_audio(event)
        elif kind == "response.output_audio.done":
            self.device.end_of_audio()
        elif kind == "response.done":
            self._on_response_done(event["response"])
        elif kind == "error":
            error = event.get("error") or {}
            if error.get("code") != "response_cancel_not_active":  # a cancel that crossed the reply's end
                self.state.notify(f"server error: {error.get('message')}")

    async def _on_transcript(self, event: dict) -> None:
        turn = self._turn_for_item(event.get("item_id"))
        turn.user_text, turn.user_final = event.get("transcript", ""), True
        if self._reply_after_transcript is not None and self._reply_after_transcript == event.get("item_id"):
            self._reply_after_transcript = None
            if turn.user_text.strip():
                await self.client.send({"type": "response.create"})
        if not turn.user_text.strip():
            self._finish(turn)  # nothing intelligible: the server does not answer it

    def _on_response_created(self, response_id: str) -> None:
        self._active_response = response_id
        waiting = [turn for turn in self.state.turns if turn.response_id is None and turn.user_text.strip()]
        turn = waiting[-1] if waiting else None
        if turn is None:  # a reply nobody spoke for (response.create from elsewhere)
            turn = Turn(user_final=True)
            self.state.turns.append(turn)
        turn.response_id = response_id

    def _on_audio(self, event: dict) -> None:
        if event.get("response_id") in self._dropped_responses:
            return
        samples = pcm16_to_float(base64.b64decode(event["delta"]))
        turn = self._turn_for_response(event.get("response_id"))
        item_id = event.get("item_id") or turn.assistant_item_id
        reply = self._replies.setdefault(item_id, _ReplyAudio(item_id, turn))
        start = self.device.play(samples)
        if reply.start_ms is None:
            reply.start_ms = start
        if reply.audible_at_ms is None and (index := first_audible_index(samples)) is not None:
            reply.audible_at_ms = start + index * 1000.0 / WIRE_RATE
        reply.received_ms += samples.size * 1000.0 / WIRE_RATE
        self._playing = reply
        self._last_playing_at = time.monotonic()
        self.state.assistant_speaking = True

    def _on_response_done(self, response: dict) -> None:
        response_id = response.get("id")
        if self._active_response == response_id:
            self._active_response = None
        turn = self._turn_for_response(response_id)
        turn.status = response.get("status")
        turn.server_timings = (response.get("voxloop") or {}).get("timings") or {}
        self.update_playback()

    def _turn_for_item(self, item_id: str | None) -> Turn:
        for turn in reversed(self.state.turns):
            if item_id is not None and turn.user_item_id == item_id:
                return turn
        # Push-to-talk turns learn their item id at commit; anything else unknown starts a turn.
        current = self.state.current
        if current is not None and current.user_item_id is None and not current.finished:
            current.user_item_id = item_id
            return current
        turn = Turn(user_item_id=item_id)
        self.state.turns.append(turn)
        return turn

    def _turn_for_response(self, response_id: str | None) -> Turn:
        for turn in reversed(self.state.turns):
            if turn.response_id == response_id:
                return turn
        turn = Turn(response_id=response_id, user_final=True)
        self.state.turns.append(turn)
        return turn

    def _open_turn(self) -> Turn:
        if self.state.current is None or self.state.current.finished:
            self.state.turns.append(Turn())
        return self.state.current
