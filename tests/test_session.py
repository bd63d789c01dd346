"""The voice session on the real models, in-process: eager end of turn and its undoing."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from voxloop.bench.speech import clip
from voxloop.bench.wer import word_error_rate
from voxloop.codecs.audiofile import load_audio
from voxloop.voice.config import SessionConfig
from voxloop.voice.models import ModelOptions, load_cascade
from voxloop.voice.session import VoiceSession
from voxloop.voice.turns import TurnDetectionConfig

pytestmark = pytest.mark.models
RATE = 24000


@pytest.fixture(scope="module")
def models():
    return load_cascade(ModelOptions())


def run_session(models, audio: np.ndarray, turn_detection: TurnDetectionConfig, settle_s: float = 8.0) -> list[dict]:
    events: list[dict] = []

    async def emit(event: dict) -> None:
        events.append(event)

    async def run():
        session = VoiceSession(models, emit, SessionConfig(turn_detection=turn_detection))
        block = RATE // 50
        for start in range(0, audio.size, block):
            await session.append_audio(audio[start:start + block])
            await asyncio.sleep(0.02)  # real time, so speculative work races the pause as it would live
        deadline = asyncio.get_running_loop().time() + settle_s
        while asyncio.get_running_loop().time() < deadline and not any(e["type"] == "response.done" for e in events):
            await session.append_audio(np.zeros(block, np.float32))
            await asyncio.sleep(0.02)
        await session.close()

    asyncio.run(run())
    return events


def test_a_mid_turn_pause_shorter_than_the_hangover_keeps_one_turn_and_its_speculation_is_dropped(models):
    # Both clips are silence-trimmed, so the pause between them is exactly the one inserted.
    first = load_audio(clip("arctic_a0039_1592747680").path, RATE)
    second = load_audio(clip("arctic_a0024_1592747999").path, RATE)
    pause = np.zeros(int(0.4 * RATE), np.float32)  # past eager_after_ms, short of the 700 ms hangover
    audio = np.concatenate([first, pause, second, np.zeros(RATE, np.float32)])
    events = run_session(models, audio, TurnDetectionConfig(silence_duration_ms=700, eager_after_ms=160))
    kinds = [e["type"] for e in events]
    assert kinds.count("input_audio_buffer.committed") == 1, kinds
    transcript = next(e["transcript"] for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    # Both halves are in the one transcript: the speculation made at the pause was not used.
    assert word_error_rate("the ship should be in within a week or ten days it was my reports from the north which "
                           "chiefly induced people to buy", transcript) < 0.25, transcript
    assert kinds.count("response.created") == 1


def test_eager_end_of_turn_has_the_transcript_and_reply_ready_when_the_turn_ends(models):
    speech = load_audio(clip("arctic_a0039_1592747680").path, RATE)
    audio = np.concatenate([speech, np.zeros(RATE, np.float32)])
    # A long hangover, so that even a loaded machine finishes the speculative transcript and
    # first clause inside it: this checks the mechanism, not the machine's speed.
    audio = np.concatenate([speech, np.zeros(3 * RATE, np.float32)])
    eager = run_session(models, audio, TurnDetectionConfig(silence_duration_ms=2500, eager_after_ms=160))
    timings = next(e for e in eager if e["type"] == "response.done")["response"]["voxloop"]["timings"]
    assert timings["transcript_final_ms"] < 0
    assert timings["llm_first_token_ms"] < 0 and timings["tts_first_audio_ms"] < 0
    assert timings["first_audio_sent_ms"] < 200  # only the send is left once the turn is confirmed

    lazy = run_session(models, audio, TurnDetectionConfig(silence_duration_ms=2500, eager_after_ms=0))
    timings = next(e for e in lazy if e["type"] == "response.done")["response"]["voxloop"]["timings"]
    assert timings["transcript_final_ms"] > 0
