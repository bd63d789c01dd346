"""Voice-to-voice latency as the user lives it, measured at the client.

Definition (what `voxloop talk` shows for each turn):

    from  the end of the user's speech
    to    the first audible sample of the reply leaving the speaker.

- End of speech: the capture time of the last microphone block whose level (after echo cancellation) was
  speech-like, i.e. at least `margin_db` above the tracked noise floor and above `min_speech_dbfs`, before the
  server's `speech_stopped`. When no such block lies within the server's hangover window (a noisy room, where
  the gate never closes or never opens), it falls back to the arrival of `speech_stopped` minus the server's
  `silence_duration_ms`. In push-to-talk mode it is the key press that ends the turn.
- First audible sample: the first reply sample above `AUDIBLE_DBFS`, at the moment the audio device takes it,
  plus the output latency the device reports.

So the number includes the server's silence hangover (it cannot answer before it decides the user finished),
network, ASR, LLM, TTS and the client's playback buffering.
"""

from __future__ import annotations

import numpy as np

AUDIBLE_DBFS = -50.0
_AUDIBLE_AMPLITUDE = 10 ** (AUDIBLE_DBFS / 20)
_FLOOR_RISE_DB_PER_S = 3.0  # the noise floor follows a louder room slowly, so speech does not become "floor"
# How far before the fallback estimate a mic-level end may lie and still be trusted.
_LEVEL_WINDOW_S = 1.0


def first_audible_index(samples: np.ndarray) -> int | None:
    loud = np.flatnonzero(np.abs(samples) >= _AUDIBLE_AMPLITUDE)
    return int(loud[0]) if loud.size else None


class SpeechEndTracker:
    """Remembers when the microphone last carried speech-level sound."""

    def __init__(self, margin_db: float = 12.0, min_speech_dbfs: float = -50.0):
        self.margin_db = margin_db
        self.min_speech_dbfs = min_speech_dbfs
        self.noise_floor_dbfs: float | None = None
        self.last_voiced_at: float | None = None

    def observe(self, level_dbfs: float, captured_at: float, block_s: float) -> None:
        if self.noise_floor_dbfs is None or level_dbfs < self.noise_floor_dbfs:
            self.noise_floor_dbfs = level_dbfs
        else:
            self.noise_floor_dbfs += _FLOOR_RISE_DB_PER_S * block_s
        if level_dbfs >= max(self.noise_floor_dbfs + self.margin_db, self.min_speech_dbfs):
            self.last_voiced_at = captured_at

    def speech_end(self, speech_stopped_at: float, silence_duration_ms: float) -> tuple[float, str]:
        """When the user stopped talking, and how that was found ("mic level" or "server VAD")."""
        estimate = speech_stopped_at - silence_duration_ms / 1000.0
        voiced = self.last_voiced_at
        if voiced is not None and estimate - _LEVEL_WINDOW_S <= voiced <= speech_stopped_at:
            return voiced, "mic level"
        return estimate, "server VAD"
