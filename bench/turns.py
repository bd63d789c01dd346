"""Driving a server through spoken turns, over the same websocket protocol a real client uses,
and timing each turn from the true end of speech to the first audible sample of the reply."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from voxloop.bench.speech import Clip
from voxloop.bench.speech_end import speech_end
from voxloop.bench.wer import word_error_rate
from voxloop.client.realtime_client import RealtimeClient
from voxloop.codecs.audiofile import load_audio
from voxloop.codecs.pcm import WIRE_RATE, pcm16_to_float

BLOCK_S = 0.02  # a 20 ms microphone block
AUDIBLE_WINDOW = WIRE_RATE // 100  # 10 ms
AUDIBLE_FLOOR = 10 ** (-45 / 20)  # -45 dBFS RMS over 10 ms
TURN_TIMEOUT_S = 45.0
# A turn the server ends this far before the true end of speech ended inside the utterance:
# more than VAD and energy disagree on where a soft last word stops, less than any word.
FALSE_END_MARGIN_MS = 250
# A wait for the reply's next audio, once it has begun, that a listener hears as a break.
STALL_S = 0.02


@dataclass
class TurnMeasurement:
    clip: str
    variant: str
    session: int
    clip_s: float
    speech_end_s: float
    voice_to_voice_ms: float | None = None
    # stages, in ms, adding up to voice_to_voice_ms
    end_of_turn_ms: float | None = None
    asr_ms: float | None = None
    llm_ms: float | None = None
    tts_ms: float | None = None
    send_ms: float | None = None
    transport_ms: float | None = None
    lead_in_ms: float | None = None
    transcript: str = ""
    reference: str = ""
    wer: float | None = None
    reply: str = ""
    reply_status: str | None = None  # response.done's: "completed" heard out, "incomplete" cut by the token cap
    reply_audio_ms: float | None = None
    # How long a client playing the deltas on arrival sat silent mid-reply, waiting for audio the
    # server had not sent yet (stalls of STALL_S or more, added up): breaks the user hears.
    playback_stall_ms: float | None = None
    # Each of those waits, and what it waited for (stall_waits).
    playback_stalls: list[dict] = field(default_factory=list)
    error: str | None = None
    server_timings: dict = field(default_factory=dict)
    # Turn ends (speech_stopped) the server reported while the clip was spoken, and how many of
    # them came before its true end of speech: a reply to half a sentence.
    turn_ends: int = 0
    false_ends: int = 0
    # How far the bench's mic fell behind real time while speaking the clip (a loaded machine);
    # the true end of speech is timed from when its audio was really sent, so this is a note.
    mic_lag_ms: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class PacedMicrophone:
    """Sends 20 ms blocks at real-time pace, silence when there is nothing to say, and records
    when each sample was spoken (a real mic sends a block once it is captured)."""

    def __init__(self, client: RealtimeClient):
        self.client = client
        self._pending: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None
        # Where the speech `say` last started on the audio clock the server counts (ms of audio
        # sent since the session's first block), to place the server's audio_end_ms.
        self.last_start_audio_ms = 0.0
        # When each block since the last `say` began was sent (block index on the audio clock ->
        # time.time()), and how far behind its real-time schedule the mic fell since then.
        self._sent_unix: dict[int, float] = {}
        self.speech_lag_s = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def say(self, audio: np.ndarray) -> float:
        """Queue speech; returns the wall-clock time (time.time()) its first sample is spoken."""
        spoken = asyncio.get_running_loop().create_future()
        await self._pending.put((audio, spoken))
        return await spoken

    def spoken_unix(self, audio_ms: float) -> float | None:
        """When the sample at `audio_ms` on the audio clock was spoken, from the time its block was
        really sent (None until then). A mic that fell behind its schedule sends late and then
        catches up in a burst, so the schedule alone would place the end of speech too late, and a
        reply could seem to come before it."""
        block = int(audio_ms // (BLOCK_S * 1000))
        sent = self._sent_unix.get(block)
        return None if sent is None else sent - BLOCK_S + (audio_ms / 1000 - block * BLOCK_S)

    async def _run(self) -> None:
        block = int(BLOCK_S * WIRE_RATE)
        silence = np.zeros(block, dtype=np.float32)
        start = time.monotonic()
        sent_blocks = 0
        audio, offset = None, 0
        while True:
            if audio is None and not self._pending.empty():
                audio, spoken = self._pending.get_nowait()
                offset = 0
                self.last_start_audio_ms = sent_blocks * BLOCK_S * 1000
                self._sent_unix.clear()
                self.speech_lag_s = 0.0
                # Sent at the end of its capture: the first sample was spoken one block earlier.
                spoken.set_result(time.time() + max(0.0, start + sent_blocks * BLOCK_S - time.monotonic()) - BLOCK_S)
            if audio is not None:
                chunk = audio[offset:offset + block]
                if chunk.size < block:
                    chunk = np.concatenate([chunk, silence[: block - chunk.size]])
                offset += block
                if offset >= audio.size:
                    audio = None
            else:
                chunk = silence
            await asyncio.sleep(max(0.0, start + sent_blocks * BLOCK_S - time.monotonic()))
            await self.client.append_audio(chunk)
            self._sent_unix[sent_blocks] = time.time()
            self.speech_lag_s = max(self.speech_lag_s, time.monotonic() - (start + sent_blocks * BLOCK_S))
            sent_blocks += 1


def play_schedule(deltas: list[tuple[float, np.ndarray]]) -> Iterator[tuple[float, float, np.ndarray]]:
    """(play start, arrival, audio) of each delta, for a client that plays each delta on arrival
    or right after the previous one, whichever is later."""
    play_end = 0.0
    for arrival, audio in deltas:
        play_start = max(arrival, play_end)
        yield play_start, arrival, audio
        play_end = play_start + audio.size / WIRE_RATE


def playback_end(deltas: list[tuple[float, np.ndarray]]) -> float:
    """When that client finishes playing the deltas."""
    return max((start + audio.size / WIRE_RATE for start, _, audio in play_schedule(deltas)), default=0.0)


@dataclass
class PlaybackBreak:
    """A wait of STALL_S or more for that client between one delta's end and the next one's start."""

    ran_dry: float  # when the audio ran out (the client's clock)
    at_audio_s: float  # how far into the reply's audio
    wait_s: float


def playback_breaks(deltas: list[tuple[float, np.ndarray]]) -> list[PlaybackBreak]:
    """Where the reply ran dry while that client played it."""
    breaks, previous_end, played_s = [], None, 0.0
    for play_start, _, audio in play_schedule(deltas):
        if previous_end is not None and play_start - previous_end >= STALL_S:
            breaks.append(PlaybackBreak(previous_end, played_s, play_start - previous_end))
        previous_end = play_start + audio.size / WIRE_RATE
        played_s += audio.size / WIRE_RATE
    return breaks


def stall_waits(gap: PlaybackBreak, clauses: list[dict], reference_unix: float) -> dict[str, float]:
    """What a break waited for, in seconds, from the server's ClauseTimings (ms after
    `reference_unix`): "text" while the LLM had not finished the clause that comes next (a break
    between clauses only), "speech" while TTS had not made its audio, "unknown" without the
    server's clause timings. Where the text came during the break, the break counts both."""
    if not clauses:
        return {"unknown": gap.wait_s}
    start_ms = 0.0
    for clause in clauses:
        if start_ms > 0 and abs(start_ms - 1000 * gap.at_audio_s) < 1.0:
            ready = reference_unix + clause["ready_ms"] / 1000
            text_s = min(gap.wait_s, max(0.0, ready - gap.ran_dry))
            return {"text": text_s, "speech": gap.wait_s - text_s}
        start_ms += clause["audio_ms"]
    return {"speech": gap.wait_s}


def first_audible_play_time(deltas: list[tuple[float, np.ndarray]]) -> tuple[float, float] | None:
    """(time the first audible sample plays, its arrival time), for that client."""
    for play_start, arrival, audio in play_schedule(deltas):
        usable = audio.size - audio.size % AUDIBLE_WINDOW
        if usable:
            rms = np.sqrt(np.mean(audio[:usable].reshape(-1, AUDIBLE_WINDOW) ** 2, axis=1))
            loud = np.nonzero(rms > AUDIBLE_FLOOR)[0]
            if loud.size:
                return play_start + loud[0] * AUDIBLE_WINDOW / WIRE_RATE, arrival
    return None


async def run_session(url: str, clips: list[Clip], variant: str, session_index: int,
                      session_update: dict | None = None, on_turn=None) -> list[TurnMeasurement]:
    """One conversation: the clips are spoken one after another, each after the previous reply."""
    results = []
    async with RealtimeClient(url) as client:
        if session_update:
            await client.send({"type": "session.update", "session": session_update})
        mic = PacedMicrophone(client)
        mic.start()
        try:
            for clip in clips:
                measurement = await speak_turn(client, mic, clip, variant, session_index)
                results.append(measurement)
                if on_turn:
                    on_turn(measurement)
        finally:
            await mic.stop()
    return results


async def speak_turn(client: RealtimeClient, mic: PacedMicrophone, clip: Clip, variant: str, session_index: int) -> TurnMeasurement:
    """Say `clip`, then listen to the whole reply before returning, as a person would: the next
    turn starts after the reply has played. (Cutting replies off at their first sound would save
    time, but the server keeps only the heard words, and a history of one-word replies teaches
    the LLM to answer in one word: every later turn would be measured on a degenerate
    conversation.)"""
    audio = load_audio(clip.path, WIRE_RATE)
    end_s = speech_end(clip)
    turn = TurnMeasurement(clip.name, variant, session_index, clip.duration_s, end_s, reference=clip.transcript)
    spoken_at = asyncio.create_task(mic.say(audio))
    transcripts: list[str] = []
    deltas: dict[str, list[tuple[float, np.ndarray]]] = {}
    answering: str | None = None
    said: dict[str, str] = {}
    true_end_unix = None
    true_end_audio_ms = None
    # The reply to this turn is created after its final transcript, so after the true end of
    # speech; replies to earlier pieces of the clip (cut off by its own pauses) are older.
    replies_after_end: set[str] = set()
    created: list[str] = []  # every response seen, for the report of a turn that got no answer
    finished: dict[str, str] = {}  # how those that ended without being the answer ended
    try:
        async with asyncio.timeout(TURN_TIMEOUT_S + clip.duration_s):
            while True:
                event = await client.recv(timeout=0.5)
                if true_end_audio_ms is None and spoken_at.done():
                    true_end_audio_ms = mic.last_start_audio_ms + 1000 * end_s
                if true_end_unix is None and true_end_audio_ms is not None:
                    true_end_unix = mic.spoken_unix(true_end_audio_ms)
                if event is None:
                    continue
                kind = event["type"]
                now = time.time()
                if kind == "conversation.item.input_audio_transcription.completed" and event["transcript"]:
                    transcripts.append(event["transcript"])
                elif kind == "input_audio_buffer.speech_stopped" and true_end_audio_ms is not None:
                    turn.turn_ends += 1
                    if is_false_end(event["audio_end_ms"], true_end_audio_ms):
                        turn.false_ends += 1
                elif kind == "response.created":
                    created.append(event["response"]["id"])
                    if true_end_unix is not None and now > true_end_unix:
                        replies_after_end.add(event["response"]["id"])
                elif kind == "response.output_audio.delta":
                    response_id = event["response_id"]
                    deltas.setdefault(response_id, []).append((now, pcm16_to_float(base64.b64decode(event["delta"]))))
                    if answering is None and response_id in replies_after_end and first_audible_play_time(deltas[response_id]):
                        answering = response_id
                elif kind == "response.output_audio_transcript.delta":
                    # A clause's words arrive just before its audio, so before the reply is known to be the answer.
                    said[event["response_id"]] = said.get(event["response_id"], "") + event["delta"]
                elif kind == "response.done" and event["response"]["id"] == answering:
                    turn.reply = said.get(answering, "")
                    _fill(turn, event["response"], deltas[answering], true_end_unix)
                    break
                elif kind == "response.done":
                    finished[event["response"]["id"]] = event["response"].get("status", "?")
                elif kind == "error" and event["error"]["code"] != "response_cancel_not_active":
                    turn.error = event["error"]["message"]
    except TimeoutError:
        seen = [f"{rid} {finished.get(rid, 'not done')}, said {said.get(rid, '')!r}" for rid in created]
        turn.error = (f"no audible reply before the timeout (mic up to {1000 * mic.speech_lag_s:.0f} ms behind); responses: "
                      + ("; ".join(seen) or "none"))
    turn.mic_lag_ms = round(1000 * mic.speech_lag_s, 1)
    if turn.error is None and answering is not None:
        await asyncio.sleep(max(0.0, playback_end(deltas[answering]) - time.time()))  # listening to the rest
    turn.transcript = " ".join(transcripts)
    turn.wer = word_error_rate(clip.transcript, turn.transcript)
    await asyncio.sleep(0.3)  # let the conversation settle before the next turn
    return turn


def is_false_end(audio_end_ms: float, true_end_audio_ms: float) -> bool:
    """Whether a turn end the server placed at `audio_end_ms` cut the utterance short."""
    return audio_end_ms < true_end_audio_ms - FALSE_END_MARGIN_MS


def _fill(turn: TurnMeasurement, response: dict, deltas: list[tuple[float, np.ndarray]], true_end_unix: float) -> None:
    extension = response.get("voxloop") or {}
    timings = extension.get("timings") or {}
    turn.server_timings = timings
    turn.reply_status, turn.reply_audio_ms = response.get("status"), extension.get("audio_ms")
    breaks = playback_breaks(deltas)
    turn.playback_stall_ms = round(1000 * sum(gap.wait_s for gap in breaks), 1)
    if timings.get("reference_unix") is not None:
        turn.playback_stalls = [{"at_audio_ms": round(1000 * gap.at_audio_s, 1), "wait_ms": round(1000 * gap.wait_s, 1),
                                 "waited_for_ms": {cause: round(1000 * seconds, 1) for cause, seconds
                                                   in stall_waits(gap, timings.get("clauses") or [], timings["reference_unix"]).items()}}
                                for gap in breaks]
    played, first_arrival = first_audible_play_time(deltas)
    turn.voice_to_voice_ms = 1000 * (played - true_end_unix)
    reference = timings.get("reference_unix")
    if reference is None or timings.get("first_audio_sent_ms") is None:
        return
    marks = [reference - true_end_unix]
    # A stage the path does not have (the native path has no ASR, LLM or TTS) takes no time.
    for name in ("transcript_final_ms", "llm_first_token_ms", "tts_first_audio_ms", "first_audio_sent_ms"):
        value = timings.get(name)
        marks.append(marks[-1] if value is None else reference - true_end_unix + value / 1000)
    marks += [first_arrival - true_end_unix, played - true_end_unix]
    # Speculative work can finish before the turn is confirmed; on the critical path a stage
    # that was already done costs nothing, so stages are measured between running maxima.
    stages = np.diff(np.maximum.accumulate([0.0, *marks])) * 1000
    (turn.end_of_turn_ms, turn.asr_ms, turn.llm_ms, turn.tts_ms, turn.send_ms, turn.transport_ms, turn.lead_in_ms) = \
        (round(float(s), 1) for s in stages)
