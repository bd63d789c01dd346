"""Acoustic echo cancellation: WebRTC's audio processing module (AEC3), as the `livekit` package ships it.

The far end is what the speaker played; the near end is the microphone. The module works on 10 ms frames of
int16, so both sides are cut into frames here and the remainders carried to the next call. AEC3 finds the
echo path's delay itself; the delay we report is only its starting estimate.

AEC3's suppressor also removes the user's voice wherever it cannot rule out echo, which before it has
converged, and always on headphones, is wherever the speaker plays. So frames that `DoubleTalkDetector`
gives to the user skip it: they go through a second module with the same noise suppression and high-pass
filter but no echo cancellation.
"""

from __future__ import annotations

import numpy as np

from voxloop.client.double_talk import DoubleTalkDetector
from voxloop.codecs.pcm import float_to_pcm16, pcm16_to_float

SUPPORTED_RATES = (8000, 16000, 24000, 32000, 48000)


class EchoCanceller:
    """AEC3, with its suppressor bypassed in frames the double-talk detector gives to the user.

    Both modules see every frame, so each stays adapted and a switch between them is seamless: a frame that
    changes hands is cross-faded."""

    def __init__(self, sample_rate: int = 24000, *, noise_suppression: bool = True, high_pass_filter: bool = True,
                 auto_gain_control: bool = False, delay_ms: int = 0, double_talk: bool = True):
        if sample_rate not in SUPPORTED_RATES:
            raise ValueError(f"the echo canceller runs at {SUPPORTED_RATES} Hz, not {sample_rate}")
        from livekit import rtc

        self._rtc = rtc
        processing = dict(noise_suppression=noise_suppression, high_pass_filter=high_pass_filter,
                          auto_gain_control=auto_gain_control)
        self._apm = rtc.AudioProcessingModule(echo_cancellation=True, **processing)
        self._user_apm = rtc.AudioProcessingModule(echo_cancellation=False, **processing) if double_talk else None
        self._detector = DoubleTalkDetector(sample_rate) if double_talk else None
        self._user_frame = False
        self.bypassed_frames = 0  # frames that could hold echo, given to the user around AEC3's suppressor
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
            if self._detector is not None:
                self._detector.far_frame(frame)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """The microphone signal with the echo removed. Works in whole 10 ms frames, so the output may lag
        the input by up to one frame minus a sample (none when blocks are multiples of 10 ms)."""
        frames, self._near_carry = self._frames(self._near_carry, samples)
        cleaned = []
        for frame in frames:
            cancelled = self._run(self._apm, frame, delay=True)
            if self._detector is None:
                cleaned.append(cancelled)
                continue
            user_frame = self._detector.near_end(frame)
            kept = self._run(self._user_apm, frame)  # every frame, so that its noise estimate stays current
            if user_frame != self._user_frame:
                fade_in = np.linspace(0.0, 1.0, frame.size, dtype=np.float32)
                start, end = (cancelled, kept) if user_frame else (kept, cancelled)
                cleaned.append(start * (1.0 - fade_in) + end * fade_in)
            else:
                cleaned.append(kept if user_frame else cancelled)
            self._user_frame = user_frame
            self.bypassed_frames += user_frame and self._detector.speaker_audible
        return np.concatenate(cleaned) if cleaned else np.zeros(0, dtype=np.float32)

    @property
    def echo_path_db(self) -> float | None:
        """How loud the speaker comes back into the mic, in dB below its own level: None until measured."""
        return None if self._detector is None else self._detector.echo_path_db

    def _run(self, apm, frame: np.ndarray, delay: bool = False) -> np.ndarray:
        audio_frame = self._audio_frame(frame)
        if delay:
            apm.set_stream_delay_ms(self.delay_ms)  # required before each capture frame when AEC is on
        apm.process_stream(audio_frame)
        return pcm16_to_float(bytes(audio_frame.data.cast("B")))

    def _frames(self, carry: np.ndarray, samples: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        joined = np.concatenate([carry, np.asarray(samples, dtype=np.float32)])
        whole = joined.size - joined.size % self.frame
        return [joined[i:i + self.frame] for i in range(0, whole, self.frame)], joined[whole:]

    def _audio_frame(self, samples: np.ndarray):
        return self._rtc.AudioFrame(bytearray(float_to_pcm16(samples)), self.sample_rate, 1, self.frame)
