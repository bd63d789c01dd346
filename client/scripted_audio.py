"""An `AudioDevice` without hardware: the microphone says what it is given, the speaker records what it plays.

It keeps real time on its own thread, block by block like a sound card's callback, so the client under it
behaves as it would live. It can also model a loudspeaker: the played audio comes back into the microphone,
delayed and attenuated, as echo. Tests and benchmarks drive the live client with it.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from voxloop.client.audio_io import BLOCK_MS, WIRE_RATE, BufferedPlayback, MicCallback, PlaybackBuffer


class ScriptedAudio(BufferedPlayback):
    input_latency_ms = 0.0
    output_latency_ms = 0.0

    def __init__(self, block_ms: int = BLOCK_MS, echo_gain: float = 0.0, echo_delay_ms: float = 60.0,
                 noise_dbfs: float = -65.0, seed: int = 0):
        self.block = WIRE_RATE * block_ms // 1000
        self.echo_gain = echo_gain
        self._echo_delay = int(WIRE_RATE * echo_delay_ms / 1000)
        self._noise = 10 ** (noise_dbfs / 20)
        self._rng = np.random.default_rng(seed)
        self._playback = PlaybackBuffer(WIRE_RATE)
        self._lock = threading.Lock()
        self._to_say = np.zeros(0, dtype=np.float32)
        self._speaker_history = np.zeros(self._echo_delay + self.block, dtype=np.float32)
        self._content: list[np.ndarray] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.blocks: list[tuple[float, int]] = []  # (time of the block, samples of reply audio in it)
        self.said_until: float | None = None  # time.monotonic() of the last block that carried given speech

    # ----------------------------------------------------------------- the script

    def say(self, samples: np.ndarray) -> None:
        """Speak these (wire-rate) samples into the microphone, after whatever is still being said."""
        with self._lock:
            self._to_say = np.concatenate([self._to_say, np.asarray(samples, dtype=np.float32)])

    @property
    def saying(self) -> bool:
        with self._lock:
            return self._to_say.size > 0

    @property
    def played_audio(self) -> np.ndarray:
        """All reply audio the speaker played, gaps left out."""
        return np.concatenate(self._content) if self._content else np.zeros(0, dtype=np.float32)

    # ----------------------------------------------------------------- AudioDevice

    def start(self, on_mic_block: MicCallback) -> None:
        self._thread = threading.Thread(target=self._run, args=(on_mic_block,), name="scripted-audio", daemon=True)
        self._thread.start()

    def _run(self, on_mic_block: MicCallback) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            before = self._playback.played_ms
            out = self._playback.read(self.block)
            now = time.monotonic()
            content = round((self._playback.played_ms - before) * WIRE_RATE / 1000)
            self.blocks.append((now, content))
            if content:
                self._content.append(out[:content].copy())
            self._speaker_history = np.concatenate([self._speaker_history[self.block:], out])
            mic = self._rng.normal(0.0, self._noise, self.block).astype(np.float32)
            with self._lock:
                voice, self._to_say = self._to_say[:self.block], self._to_say[self.block:]
            if voice.size:
                mic[:voice.size] += voice
                self.said_until = now
            if self.echo_gain:
                mic += self.echo_gain * self._speaker_history[:self.block]
            on_mic_block(mic, now)
            due += self.block / WIRE_RATE
            time.sleep(max(0.0, due - time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
