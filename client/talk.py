"""`voxloop talk`: one spoken turn from a WAV file, the reply written to a WAV file.

The file is streamed paced in real time, as a microphone would deliver it, then silence keeps
flowing (as from a live mic) until the assistant has finished answering.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import websockets
from rich.console import Console

from voxloop.client.realtime_client import RealtimeClient
from voxloop.codecs.audiofile import load_audio, save_audio
from voxloop.codecs.pcm import WIRE_RATE, pcm16_to_float

CHUNK_S = 0.04  # a 40 ms mic block
SETTLE_S = 0.8  # quiet time after the last reply before the turn counts as over


@dataclass
class TurnResult:
    user_transcripts: list[str] = field(default_factory=list)
    assistant_transcripts: list[str] = field(default_factory=list)
    responses: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)

    @property
    def reply_audio(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, dtype=np.float32)


class _TurnTracker:
    """Knows when the conversation has gone quiet: the user is not speaking and no turn is
    being transcribed or answered."""

    def __init__(self) -> None:
        self.speaking = False
        self.pending_transcripts = 0
        self.active_responses = 0
        self.quiet_since: float | None = None

    def observe(self, event: dict) -> None:
        kind = event["type"]
        if kind == "input_audio_buffer.speech_started":
            self.speaking = True
        elif kind == "input_audio_buffer.speech_stopped":
            self.speaking = False
        elif kind == "input_audio_buffer.committed":
            self.pending_transcripts += 1
        elif kind == "conversation.item.input_audio_transcription.completed":
            self.pending_transcripts -= 1
        elif kind == "response.created":
            self.active_responses += 1
        elif kind == "response.done":
            self.active_responses -= 1
        busy = self.speaking or self.pending_transcripts > 0 or self.active_responses > 0
        self.quiet_since = None if busy else (self.quiet_since or time.monotonic())


async def talk_file(input_path: Path, url: str, console: Console | None = None, instructions: str | None = None,
                    timeout_s: float = 60.0, trailing_silence_s: float = 1.0) -> TurnResult:
    console = console or Console()
    speech = load_audio(input_path, WIRE_RATE)
    result = TurnResult()
    tracker = _TurnTracker()
    async with RealtimeClient(url) as client:
        if instructions:
            await client.send({"type": "session.update", "session": {"type": "realtime", "instructions": instructions}})
        sent_all = asyncio.Event()
        microphone = asyncio.create_task(stream_like_a_microphone(client, speech, trailing_silence_s, sent_all))
        deadline = time.monotonic() + speech.size / WIRE_RATE + timeout_s
        try:
            async for event in _events_until_quiet(client, tracker, sent_all, deadline):
                _record(event, result, console)
        finally:
            microphone.cancel()
            await asyncio.gather(microphone, return_exceptions=True)
    return result


async def stream_like_a_microphone(client: RealtimeClient, speech: np.ndarray, trailing_silence_s: float = 1.0,
                                   sent_all: asyncio.Event | None = None) -> None:
    """Send 24 kHz audio in 40 ms blocks at real-time pace, then silence for as long as the
    task runs, the way a live microphone keeps sending after the user stops talking.
    `sent_all` is set once the speech and `trailing_silence_s` of silence are out."""
    block = int(CHUNK_S * WIRE_RATE)
    silence = np.zeros(block, dtype=np.float32)
    start = time.monotonic()
    sent = 0
    while True:
        await client.append_audio(speech[sent:sent + block] if sent < speech.size else silence)
        sent += block
        if sent_all is not None and sent >= speech.size + trailing_silence_s * WIRE_RATE:
            sent_all.set()
        await asyncio.sleep(max(0.0, start + sent / WIRE_RATE - time.monotonic()))


async def _events_until_quiet(client: RealtimeClient, tracker: _TurnTracker, sent_all: asyncio.Event, deadline: float):
    while not (sent_all.is_set() and tracker.quiet_since and time.monotonic() - tracker.quiet_since > SETTLE_S):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the server did not finish answering in time")
        try:
            event = await client.recv(timeout=min(remaining, 0.1))
        except websockets.ConnectionClosed:
            raise ConnectionError("the server closed the connection") from None
        if event is None:
            continue
        tracker.observe(event)
        yield event


def _record(event: dict, result: TurnResult, console: Console) -> None:
    kind = event["type"]
    if kind == "conversation.item.input_audio_transcription.completed":
        if event["transcript"]:
            result.user_transcripts.append(event["transcript"])
            console.print(f"[bold cyan]you[/]       {event['transcript']}")
    elif kind == "response.output_audio_transcript.done":
        result.assistant_transcripts.append(event["transcript"])
        console.print(f"[bold green]assistant[/] {event['transcript']}")
    elif kind == "response.output_audio.delta":
        result.audio.append(pcm16_to_float(base64.b64decode(event["delta"])))
    elif kind == "response.done":
        result.responses.append(event["response"])
        timings = (event["response"].get("voxloop") or {}).get("timings") or {}
        stages = ", ".join(f"{k.removesuffix('_ms')} {v:.0f} ms" for k, v in timings.items()
                           if k.endswith("_ms") and isinstance(v, (int, float)))
        console.print(f"[dim]response {event['response']['status']}; after {timings.get('reference')}: {stages}[/]")
    elif kind == "error":
        result.errors.append(event["error"])
        console.print(f"[bold red]error[/] {event['error']['message']}")


def run_talk(input_path: str, output_path: str | None, url: str, instructions: str | None = None) -> int:
    console = Console()
    try:
        result = asyncio.run(talk_file(Path(input_path), url, console, instructions))
    except (ConnectionError, TimeoutError) as exc:
        console.print(f"[bold red]{exc}[/]")
        return 1
    if output_path:
        save_audio(output_path, result.reply_audio, WIRE_RATE)
        console.print(f"wrote {result.reply_audio.size / WIRE_RATE:.2f} s of reply audio to {output_path}")
    return 0 if result.responses else 1
