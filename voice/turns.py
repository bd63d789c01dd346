"""Turn detection: a state machine over per-frame speech probabilities.

It is pure (no model, no clock), so it is tested exactly. Times are milliseconds of input
audio since the session started, the same clock as the protocol's `audio_start_ms`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TurnDetectionConfig:
    """The Realtime API's `server_vad` settings, with its defaults, plus voxloop's extensions."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    # Extension: speech must last this long before it counts, so coughs and clicks neither
    # open a turn nor interrupt the assistant.
    min_speech_ms: int = 160


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int


class TurnDetector:
    # Leaving speech needs the probability to drop clearly below the threshold (hysteresis),
    # or a voice hovering around it would flicker between states.
    HYSTERESIS = 0.15

    def __init__(self, config: TurnDetectionConfig, frame_ms: float):
        self.config = config
        self.frame_ms = frame_ms
        self.in_speech = False
        self._elapsed_ms = 0.0
        self._run_start_ms: float | None = None  # start of the current candidate speech run
        self._silence_start_ms: float | None = None

    def reset(self) -> None:
        self.in_speech = False
        self._run_start_ms = None
        self._silence_start_ms = None

    @property
    def elapsed_ms(self) -> float:
        return self._elapsed_ms

    @property
    def silence_ms(self) -> float:
        """How long the current in-turn pause has lasted (0 when the user is speaking)."""
        if not self.in_speech or self._silence_start_ms is None:
            return 0.0
        return self._elapsed_ms - self._silence_start_ms

    def process(self, probability: float) -> SpeechStarted | SpeechStopped | None:
        frame_start = self._elapsed_ms
        self._elapsed_ms += self.frame_ms
        cfg = self.config
        if not self.in_speech:
            if probability >= cfg.threshold:
                if self._run_start_ms is None:
                    self._run_start_ms = frame_start
                if self._elapsed_ms - self._run_start_ms >= cfg.min_speech_ms:
                    self.in_speech = True
                    self._silence_start_ms = None
                    return SpeechStarted(int(self._run_start_ms))
            elif probability < cfg.threshold - self.HYSTERESIS:
                self._run_start_ms = None
            return None

        if probability >= cfg.threshold - self.HYSTERESIS:
            self._silence_start_ms = None
            return None
        if self._silence_start_ms is None:
            self._silence_start_ms = frame_start
        if self._elapsed_ms - self._silence_start_ms >= cfg.silence_duration_ms:
            end = self._silence_start_ms
            self.reset()
            return SpeechStopped(int(end))
        return None
