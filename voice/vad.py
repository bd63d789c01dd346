"""Silero VAD (the ONNX model the `silero-vad` package ships), one recurrent state per stream.

The ONNX session is loaded once and shared; each audio stream carries its own LSTM state and
the 64-sample context that Silero v5 expects in front of every 512-sample frame.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from voxloop.voice.errors import ModelNotFoundError

SAMPLE_RATE = 16000
FRAME_SAMPLES = 512  # 32 ms at 16 kHz: the frame size Silero v5 is trained on
FRAME_MS = 1000 * FRAME_SAMPLES / SAMPLE_RATE
_CONTEXT_SAMPLES = 64


class SileroVAD:
    def __init__(self, onnx_path: str | None = None):
        import onnxruntime

        path = onnx_path or bundled_silero_onnx()
        options = onnxruntime.SessionOptions()
        # A frame is tiny: thread fan-out costs more than it saves, and leaves cores to the models.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])

    def stream(self) -> VADStream:
        return VADStream(self)


def bundled_silero_onnx() -> str:
    """The ONNX model inside the `silero-vad` package, found without importing the package.

    Importing it imports torch, and torch loads its own libgomp under the name llama.cpp's CPU
    backend links against, so llama.cpp ran on torch's OpenMP runtime. Once Whisper had run
    (CTranslate2 has a third OpenMP runtime), SmolLM2's tokens took 45-95 ms instead of 13 on
    this project's 2-core Xeon (bench/RESULTS.md, `vad-no-torch`)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("the Silero VAD model needs the 'silero-vad' package (pip install silero-vad)")
    return str(Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx")


class VADStream:
    """Speech probability per 32 ms frame for one continuous audio stream."""

    def __init__(self, vad: SileroVAD):
        self._session = vad.session
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT_SAMPLES, dtype=np.float32)

    def probability(self, frame: np.ndarray) -> float:
        if frame.shape != (FRAME_SAMPLES,):
            raise ValueError(f"Silero needs frames of {FRAME_SAMPLES} samples at 16 kHz, got {frame.shape}")
        window = np.concatenate([self._context, frame.astype(np.float32, copy=False)])[None, :]
        output, self._state = self._session.run(None, {"input": window, "state": self._state, "sr": self._sr})
        self._context = window[0, -_CONTEXT_SAMPLES:]
        return float(output[0, 0])
