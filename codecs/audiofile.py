"""Reading and writing audio files: any rate and channel count in, mono float32 at the rate asked for out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from voxloop.codecs.resample import resample


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    return resample(mono, file_rate, sample_rate)


def save_audio(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    sf.write(str(path), np.asarray(samples, dtype=np.float32), sample_rate, subtype="PCM_16")
