"""Loading and sharing the native path's models: Silero VAD, EnCodec 24 kHz and the speech LM.

Loaded once per server and shared by every session. The weights are only read while serving,
so sessions can share them; each session keeps its own codec and LM stream state
(`duplex_runtime.DuplexStream`). All of the native path's model calls run on one worker
thread (`executor`) with one torch thread: on a small CPU a second intra-op thread mostly
waits on the first, and sessions then take turns chunk by chunk instead of racing.

Weights are never made up silently: a missing speech LM or codec raises `ModelNotFoundError`.
Random weights exist for latency benchmarking only (`NativeOptions.random_weights`); they are
named as such in every session object and every `response.done` (`weights_note`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from voxloop.voice.asr import Transcript
from voxloop.voice.duplex_runtime import DuplexStream, codec_silence_codes
from voxloop.voice.errors import ModelNotFoundError
from voxloop.voice.speech_lm import SamplingSettings, SpeechLM
from voxloop.voice.speech_lm_config import config_by_name
from voxloop.voice.vad import SileroVAD

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_NOTE = "random: latency benchmarking only, not speech"
NO_TRANSCRIPTION = "none (native path: no text channel)"


@dataclass
class NativeOptions:
    speech_lm: str | None = None  # directory with config.json + model.safetensors (`voxloop train-native`)
    encodec_checkpoint: str | None = None  # None: the encodec package's pretrained loader (downloads once)
    random_weights: bool = False  # random speech LM (and random codec unless encodec_checkpoint): timing only
    random_config: str = "tiny"  # speech LM size for random weights: tiny or production
    device: str = "cpu"
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    seed: int | None = None  # sampling seed of every session's stream; None: a fresh one per session
    chunk_frames: int = 6  # codec frames per model call: 6 (80 ms) keeps a CPU in real time, a GPU keeps up with 2


@dataclass
class NativeModels:
    vad: SileroVAD
    codec: object  # encodec.EncodecModel
    speech_lm: SpeechLM
    sampling: SamplingSettings
    weights_note: str
    name: str
    seed: int | None = None
    chunk_frames: int = 6
    load_seconds: dict[str, float] = field(default_factory=dict)
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="native",
                                                                                   initializer=_init_worker_thread))
    silence_codes: torch.Tensor | None = None  # [K]: the codes the encoder gives for digital silence

    def __post_init__(self) -> None:
        config = self.speech_lm.config
        if self.codec.quantizer.bins != config.cardinality:
            raise ValueError(f"the codec has {self.codec.quantizer.bins} entries per codebook, the speech LM {config.cardinality}")
        if self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be at least 1, got {self.chunk_frames}")
        if self.silence_codes is None:
            self.silence_codes = codec_silence_codes(self.codec, self.bandwidth)

    @property
    def bandwidth(self) -> float:
        return self.speech_lm.config.codec_bandwidth_kbps

    @property
    def random_weights(self) -> bool:
        return self.weights_note == RANDOM_WEIGHTS_NOTE

    def new_stream(self) -> DuplexStream:
        """A fresh conversation state (codec streams + LM stream) over the shared weights."""
        return DuplexStream(self.codec, self.speech_lm, self.sampling, self.seed, self.silence_codes)

    async def transcribe(self, audio16k: np.ndarray) -> Transcript:
        """The native path has no text channel: user items are committed with empty transcripts."""
        return Transcript("", audio16k.size / 16000)

    async def run(self, function, *args):
        """Run a blocking model call on the native worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def warm_up(self) -> None:
        """One chunk through a throwaway stream, so the first user does not pay for lazy initialisation."""
        stream = self.new_stream()
        await self.run(stream.process, np.zeros(1920, dtype=np.float32))


def _init_worker_thread() -> None:
    # Denormals in the codec's LSTMs once made encoding 50x slower; the flag is per thread.
    torch.set_flush_denormal(True)


def load_native(options: NativeOptions, console: Console | None = None) -> NativeModels:
    """Load every model with a visible progress bar. Raises `ModelNotFoundError` for missing
    weights; random weights only when `options.random_weights` asks for them."""
    console = console or Console(stderr=True)
    if options.random_weights and options.speech_lm:
        raise ValueError("--random-weights and --speech-lm exclude each other: random weights are for latency benchmarking only")
    if not options.random_weights and not options.speech_lm:
        raise ModelNotFoundError("the native path needs a trained speech LM: pass --speech-lm DIR (a directory with config.json "
                                 "and model.safetensors, made by `voxloop train-native PAIRS OUT_DIR`: use OUT_DIR/model), "
                                 "or --random-weights to measure latency with random weights (noise, not speech)")
    # One torch thread for the whole process: the native worker is the only torch user here.
    torch.set_num_threads(1)
    seconds: dict[str, float] = {}
    loaded: dict[str, object] = {}

    def speech_lm() -> SpeechLM:
        if options.random_weights:
            torch.manual_seed(0)
            return SpeechLM(config_by_name(options.random_config)).to(options.device).eval()
        return SpeechLM.load(options.speech_lm, device=options.device)

    def codec():
        from voxloop.codecs.encodec_stream import load_encodec, random_encodec

        bandwidth = loaded["speech LM"].config.codec_bandwidth_kbps
        if options.encodec_checkpoint or not options.random_weights:
            try:
                return load_encodec(options.encodec_checkpoint, bandwidth=bandwidth, device=options.device)
            except ModelNotFoundError as error:
                raise ModelNotFoundError(f"{error} On the command line: --encodec-checkpoint PATH.") from error
        return random_encodec(seed=0, bandwidth=bandwidth).to(options.device)

    # The speech LM first: a wrong path then fails at once, before any codec download is tried.
    lm_label = f"random {options.random_config}" if options.random_weights else options.speech_lm
    codec_label = options.encodec_checkpoint or ("random" if options.random_weights else "pretrained, encodec package cache")
    steps = [("Silero VAD", "vad", SileroVAD), (f"speech LM ({lm_label})", "speech LM", speech_lm),
             (f"EnCodec 24 kHz ({codec_label})", "codec", codec)]
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("loading models", total=len(steps))
        for label, key, load in steps:
            progress.update(task, description=f"loading {label}")
            start = time.perf_counter()
            loaded[key] = load()
            seconds[label] = time.perf_counter() - start
            progress.advance(task)
        progress.update(task, description="models loaded")

    lm: SpeechLM = loaded["speech LM"]
    if options.random_weights:
        note = RANDOM_WEIGHTS_NOTE
        name = f"voxloop-native/random-{options.random_config}"
        log.warning("serving RANDOM weights (speech LM %s%s): the output is noise, for latency benchmarking only",
                     options.random_config, "" if options.encodec_checkpoint else ", EnCodec")
    else:
        directory = Path(options.speech_lm).expanduser().resolve()
        note = f"trained: {directory}"
        # `voxloop train-native` writes OUT_DIR/model: the run's folder says more than "model".
        name = f"voxloop-native/{directory.parent.name if directory.name == 'model' else directory.name}"
    return NativeModels(loaded["vad"], loaded["codec"], lm, options.sampling, note, name, seed=options.seed,
                        chunk_frames=options.chunk_frames, load_seconds=seconds)
