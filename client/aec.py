"""Acoustic echo cancellation: WebRTC's audio processing module (AEC3), as the `livekit` package ships it.

The far end is what the speaker played; the near end is the microphone. The module works on 10 ms frames of
int16, so both sides are cut into frames here and the remainders carried to the next call. AEC3 finds the
echo path's delay itself; the delay we report is only its starting estimate.
"""

from __future__ import annotations

import numpy as np

from voxloop.codecs.pcm import float_to_pcm16, pcm16_to_float

SUPPORTED_RATES = (8000, 16000, 24000, 32000, 48000)


class EchoCanceller:
    def __init__(self, sample_rate: int = 24000, *, noise_suppression: bool = True, high_pass_filter: bool = True,
                 auto_gain_control: bool = False, delay_ms: int = 0):
        if sample_rate not in SUPPORTED_RATES:
            raise ValueError(f"the echo canceller runs at {SUPPORTED_RATES} Hz, not {sample_rate}")
        from livekit import rtc

        self._rtc = rtc
        self._apm = rtc.AudioProcessingModule(echo_cancellation=True, noise_suppression=noise_suppression,
                                              high_pass_filter=high_pass_filter, auto_gain_control=auto_gain_control)
        self.sample_rate = sample_rate
        self.frame = sample_rate // 100
        self.delay_ms = int(delay_ms)
        self._far_carry = np.zeros(0, dtype=np.float32)
        self._near_carry = np.zeros(0, dtype=np.float32)

    def far_end(self, samples: np.ndarray) -> None:
        """Tell the canceller what the speaker played (before the microphone blocks that may echo it)."""
        frames, self._far_carry = self._frames(self._far_carry, samples)
        for frame in frames:
            self._apm.process_reverse_stream(self._audio_frame(frame))

    def process(self, samples: np.ndarray) -> np.ndarray:
        """The microphone signal with the echo removed. Works in whole 10 ms frames, so the output may lag
        the input by up to one frame minus a sample (none when blocks are multiples of 10 ms)."""
        frames, self._near_carry = self._frames(self._near_carry, samples)
        cleaned = []
        for frame in frames:
            audio_frame = self._audio_frame(frame)
            self._apm.set_stream_delay_ms(self.delay_ms)  # required before each capture frame when AEC is on
            self._apm.process_stream(audio_frame)
            cleaned.append(pcm16_to_float(bytes(audio_frame.data.cast("B"))))
        return np.concatenate(cleaned) if cleaned else np.zeros(0, dtype=np.float32)

    def _frames(self, carry: np.ndarray, samples: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        joined = np.concatenate([carry, np.asarray(samples, dtype=np.float32)])
        whole = joined.size - joined.size % self.frame
        return [joined[i:i + self.frame] for i in range(0, whole, self.frame)], joined[whole:]

    def _audio_frame(self, samples: np.ndarray):
        return self._rtc.AudioFrame(bytearray(float_to_pcm16(samples)), self.sample_rate, 1, self.frame)
