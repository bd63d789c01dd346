"""The bench's paced microphone: when was each sample spoken, even when the mic falls behind."""

import asyncio
import time

import numpy as np

from voxloop.bench.turns import PacedMicrophone
from voxloop.codecs.pcm import WIRE_RATE


class StallingClient:
    """Takes audio like a websocket; one send stalls, as on a loaded machine."""

    def __init__(self, stall_s: float, stall_at_send: int = 3):
        self.stall_s, self.stall_at_send = stall_s, stall_at_send
        self.sends: list[tuple[float, bool]] = []  # (time.time() when sent, block had speech)

    async def append_audio(self, chunk: np.ndarray) -> None:
        if len(self.sends) + 1 == self.stall_at_send:
            await asyncio.sleep(self.stall_s)
        self.sends.append((time.time(), bool(np.any(chunk))))


async def say_half_a_second(stall_s: float) -> tuple[float, float, float, float]:
    """(first sample spoken, end of speech as timed, when its last block was really sent, lag)."""
    client = StallingClient(stall_s)
    mic = PacedMicrophone(client)
    mic.start()
    try:
        await asyncio.sleep(0.1)  # the mic is stalled now, if it is to stall at all
        first_spoken = await mic.say(np.full(int(0.5 * WIRE_RATE), 0.1, dtype=np.float32))
        end_ms = mic.last_start_audio_ms + 500
        while (end_unix := mic.spoken_unix(end_ms)) is None:
            await asyncio.sleep(0.01)
    finally:
        await mic.stop()
    return first_spoken, end_unix, max(t for t, speech in client.sends if speech), mic.speech_lag_s


def test_on_schedule_the_end_of_speech_is_the_clips_length_after_its_start():
    first, end, last_sent, lag = asyncio.run(say_half_a_second(stall_s=0.0))
    assert abs((end - first) - 0.5) < 0.05
    assert abs(end - last_sent) < 0.03
    assert lag < 0.05


def test_a_mic_behind_schedule_times_the_end_of_speech_from_when_it_was_really_sent():
    first, end, last_sent, lag = asyncio.run(say_half_a_second(stall_s=0.3))
    assert lag > 0.2
    # The clip started late and went out in a burst to catch up: the server had its end well
    # before "first sample + 0.5 s", which is where the schedule alone would put it.
    assert abs(end - last_sent) < 0.03
    assert end - first < 0.5 - 0.15
