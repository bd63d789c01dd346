"""The true end of speech in a clean clip: the last voiced sample, found once offline and cached.

The benchmark measures voice-to-voice latency from this moment, not from the server's
`speech_stopped`, which already includes the VAD's silence hangover.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from voxloop.bench.speech import Clip
from voxloop.codecs.audiofile import load_audio

RATE = 16000
WINDOW = RATE // 100  # 10 ms energy windows
# Energy refinement: the last 10 ms window louder than this, relative to the clip's loud windows.
RELATIVE_FLOOR_DB = -35.0


def _cache_path() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "voxloop" / "speech_ends.json"


def find_speech_end(audio: np.ndarray) -> float:
    """Seconds from the clip start to the last voiced sample.

    Silero finds the last frame of speech; the energy pass then places the end within 10 ms,
    near that frame, so breath or room noise after the last word does not count as speech."""
    from voxloop.voice.vad import FRAME_SAMPLES, SileroVAD

    stream = SileroVAD().stream()
    last_voiced = 0
    for start in range(0, audio.size - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        if stream.probability(audio[start:start + FRAME_SAMPLES]) >= 0.5:
            last_voiced = start + FRAME_SAMPLES
    windows = audio[: audio.size - audio.size % WINDOW].reshape(-1, WINDOW)
    levels = 10 * np.log10(np.mean(windows.astype(np.float64) ** 2, axis=1) + 1e-12)
    floor = np.percentile(levels, 95) + RELATIVE_FLOOR_DB
    lo = max(0, (last_voiced - RATE // 5) // WINDOW)
    hi = min(levels.size, (last_voiced + RATE // 10) // WINDOW)
    loud = np.nonzero(levels[lo:hi] > floor)[0]
    end_sample = (lo + loud[-1] + 1) * WINDOW if loud.size else last_voiced
    return min(end_sample, audio.size) / RATE


def speech_end(clip: Clip) -> float:
    cache_file = _cache_path()
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    stat = clip.path.stat()
    key = f"{clip.path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
    if key not in cache:
        cache[key] = find_speech_end(load_audio(clip.path, RATE))
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cache, indent=1))
    return cache[key]
