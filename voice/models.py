"""Loading, warming and sharing the models of the cascade.

Loaded once per server and shared by every session. Each model has one worker thread (see
the backends), so concurrent sessions queue instead of racing inside a model; the embedded LLM's
worker decodes every session's request in one step (voice/llm_batch.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from voxloop.voice.asr import WINDOW_PADDING_S, Transcript, WhisperTranscriber
from voxloop.voice.errors import ModelNotFoundError
from voxloop.voice.llm import ChatLLM, GenerationSettings, LlamaCppLLM, OpenAICompatibleLLM, bundled_gguf_path
from voxloop.voice.llm_quant import quant_for, requantized
from voxloop.voice.piper_pieces import PIECE_FRAMES
from voxloop.voice.priority_worker import PriorityWorker
from voxloop.voice.tts import PiperSynthesizer, SpeechSynthesizer
from voxloop.voice.vad import SileroVAD

log = logging.getLogger(__name__)


@dataclass
class ModelOptions:
    asr_model: str | None = None  # None: bundled tiny.en
    asr_device: str = "cpu"
    asr_compute_type: str = "int8"
    asr_window_padding_s: float | None = WINDOW_PADDING_S  # None: Whisper's standard 30 s window
    llm_gguf: str | None = None  # None: bundled SmolLM2-135M-Instruct
    llm_url: str | None = None
    llm_model: str = "default"
    llm_api_key_env: str = "VOXLOOP_LLM_API_KEY"
    llm_gpu_layers: int = 0
    llm_cache_copies_mib: int = 0  # copies of displaced KV caches (voice/kv_snapshots.py); 0: none
    # Conversations the embedded LLM serves together, one decode step for all, each with its own KV
    # cache (voice/llm_batch.py); 0: one request at a time in one shared cache (voice/llm.py).
    # At 4 sessions p50 0.70, p95 0.60; at one session no change (bench/RESULTS.md, `llm-slots`).
    llm_slots: int = 4
    # The GGUF's weights as llama.cpp's fast CPU kernels want them (voice/llm_quant.py): "auto" re-quantizes
    # the bundled Q4_1 model to Q6_K, once, and uses a GGUF you name as it is; "none" never converts.
    llm_quant: str = "auto"
    tts: str = "piper"
    piper_voice: str | None = None  # None: the bundled voice
    # Each sentence decoded in one pass, as Piper does, instead of a few latent frames at a time
    # (voice/piper_pieces.py), where a clause's first audio comes before its decoder has finished.
    piper_whole_sentences: bool = False
    piper_piece_frames: tuple[int, ...] = PIECE_FRAMES  # the sizes of those frames' pieces
    xtts_dir: str | None = None  # None: coqui's download, once COQUI_TOS_AGREED=1
    xtts_device: str = "auto"  # auto: cuda when available, else cpu
    xtts_language: str = "en"
    xtts_voice: str | None = None  # built-in speaker name or reference wav; None: the checkpoint's first speaker
    xtts_voice_dir: str | None = None  # reference clips that clients may pick by file name
    xtts_chunk_tokens: int | None = None  # audio tokens per streamed chunk; None: 8 on a GPU, 20 on a CPU
    xtts_half: bool = False  # float16 autocast on CUDA
    threads: int = 0  # 0: all cores
    asr_threads: int | None = None  # None: see whisper_threads
    # Partial transcripts on their own one-thread Whisper at the lowest CPU priority (CPU only), so that
    # the pass that ends a turn never waits for one to finish. Off: on the 2-core Xeon it did not pay
    # (bench/RESULTS.md, `separate-partial-asr`: p50 1.07, p95 1.05).
    separate_partial_asr: bool = False
    # A partial pass on the shared Whisper is two jobs, its encoder and its decoder, and a final pass
    # that comes meanwhile goes between them; a final pass whose caller gave up (a speculative pass
    # whose pause ended) stops after its encoder (CascadeModels.transcribe). At 4 sessions the final
    # pass's wait for Whisper 115 -> 32 ms on average, p50 0.85, p95 1.04 (bench/RESULTS.md,
    # `partial-asr-in-steps-load`, which split the partial passes only).
    asr_in_steps: bool = True
    spinning_threads: bool = False  # see keep_numpy_single_threaded and PiperSynthesizer


@dataclass
class CascadeModels:
    vad: SileroVAD
    asr: WhisperTranscriber
    llm: ChatLLM
    tts: SpeechSynthesizer
    load_seconds: dict[str, float] = field(default_factory=dict)
    partial_asr: tuple[WhisperTranscriber, PriorityWorker] | None = None  # see ModelOptions.separate_partial_asr
    asr_in_steps: bool = True  # see ModelOptions.asr_in_steps
    _asr_worker: PriorityWorker = field(default_factory=lambda: PriorityWorker("asr"))

    async def transcribe(self, audio16k: np.ndarray, urgent: bool = True) -> Transcript:
        """`urgent=False` for partial transcripts: on their own model when there is one, else after any
        session's final pass, which also goes before a partial pass's decoder once its encoder has run.
        A final pass that came while a partial one was running waited for all of it, up to 340 ms
        on a 10 s turn on the 2-core Xeon: a pass cannot be stopped, but it can be taken in two jobs.

        Cancelling the await drops the pass if it has not started, and skips its decoder if it is
        still encoding: a speculative pass whose pause ended (the user went on) stops there, and the
        next pause's pass waits for less."""
        if not urgent and self.partial_asr is not None:
            model, worker = self.partial_asr
            return await worker.run(model.transcribe, audio16k)
        if not self.asr_in_steps:
            return await self._asr_worker.run(self.asr.transcribe, audio16k, urgent=urgent)
        if urgent:  # one job, so that no partial pass's decoder can come between its halves
            dropped = threading.Event()
            try:
                return await self._asr_worker.run(self._transcribe_unless_dropped, audio16k, dropped)
            except asyncio.CancelledError:
                dropped.set()
                raise
        encoded = await self._asr_worker.run(self.asr.encode, audio16k, urgent=False)
        return await self._asr_worker.run(self.asr.decode, encoded, urgent=False)

    def _transcribe_unless_dropped(self, audio16k: np.ndarray, dropped: threading.Event) -> Transcript | None:
        encoded = self.asr.encode(audio16k)
        return None if dropped.is_set() else self.asr.decode(encoded)  # None: nobody is waiting for it

    async def warm_up(self) -> None:
        """One pass through every model, so the first user does not pay for lazy initialisation."""
        await self.transcribe(np.zeros(16000, dtype=np.float32))
        async with aclosing(self.llm.stream([{"role": "user", "content": "Hi"}], GenerationSettings(max_tokens=2))) as pieces:
            async for _ in pieces:
                pass
        score = getattr(self.llm, "sentence_end_probability", None)
        if score is not None:  # builds its table of sentence-ending tokens
            await score([{"role": "user", "content": "Hi"}])
        async with aclosing(self.tts.synthesize("Hello.")) as chunks:
            async for _ in chunks:
                pass


def build_llm(options: ModelOptions) -> ChatLLM:
    if options.llm_url:
        return OpenAICompatibleLLM(options.llm_url, options.llm_model, api_key_env=options.llm_api_key_env)
    gguf = llm_gguf_path(options)
    if options.llm_slots > 0:
        from voxloop.voice.llm_batch import BatchedLlamaLLM

        batched = BatchedLlamaLLM(gguf, slots=options.llm_slots, n_threads=options.threads,
                                  n_gpu_layers=options.llm_gpu_layers)
        if batched.chat.available:
            return batched
        # Its prompts are built from the GGUF's own chat template; other chat formats go one at a time.
        batched.close()
        log.warning("%s has no chat template of its own: its requests are served one at a time", batched.name)
    return LlamaCppLLM(gguf, n_threads=options.threads, n_gpu_layers=options.llm_gpu_layers,
                       cache_copies_mib=options.llm_cache_copies_mib)


def llm_gguf_path(options: ModelOptions) -> str:
    """The GGUF the embedded LLM loads: the named or bundled one, re-quantized as `llm_quant` says."""
    source = Path(options.llm_gguf or bundled_gguf_path()).expanduser()
    if not source.is_file():
        raise ModelNotFoundError(f"GGUF model file {source} does not exist")
    quant = quant_for(options.llm_quant, bundled=options.llm_gguf is None)
    return str(requantized(source, quant)) if quant else str(source)


def build_tts(options: ModelOptions) -> SpeechSynthesizer:
    if options.tts == "piper":
        return PiperSynthesizer(options.piper_voice, spinning_threads=options.spinning_threads,
                                whole_sentences=options.piper_whole_sentences, piece_frames=options.piper_piece_frames)
    if options.tts == "xtts":
        from voxloop.voice.tts_xtts import XttsSynthesizer  # optional extra: coqui-tts

        return XttsSynthesizer(options.xtts_dir, device=options.xtts_device, language=options.xtts_language,
                               default_voice=options.xtts_voice, voice_dir=options.xtts_voice_dir,
                               stream_chunk_size=options.xtts_chunk_tokens,
                               half_precision=options.xtts_half)
    raise ValueError(f"unknown TTS backend {options.tts!r} (available: piper, xtts)")


def _llm_label(options: ModelOptions) -> str:
    if options.llm_url:
        return options.llm_url
    quant = quant_for(options.llm_quant, bundled=options.llm_gguf is None)
    return (options.llm_gguf or "bundled SmolLM2-135M-Instruct") + (f", as {quant}" if quant else "")


def _tts_label(options: ModelOptions) -> str:
    if options.tts == "xtts":
        return f"xtts: {options.xtts_dir or 'coqui model manager'}"
    return f"piper: {options.piper_voice or 'bundled voice'}"


def keep_numpy_single_threaded() -> None:
    """One thread for numpy's OpenBLAS, process-wide.

    OpenBLAS's threads busy-wait for about 0.1 s after every call. Whisper's mel spectrogram is
    one small matrix product, and afterwards those threads took the cores from Whisper's own
    encoder: on 2 cores a 4 s utterance took 194 ms to transcribe instead of 135 (median of 16,
    interleaved). Nothing in the server needs numpy to multiply on more than one thread.
    Other BLAS libraries (torch's MKL for XTTS and the native path) keep their threads."""
    from threadpoolctl import ThreadpoolController

    ThreadpoolController().select(internal_api="openblas").limit(limits=1)


def load_cascade(options: ModelOptions, console: Console | None = None) -> CascadeModels:
    """Load every model with a visible progress bar. Blocking: call before serving, then
    `await warm_up()` on the serving event loop (HTTP clients bind to the loop they first use)."""
    console = console or Console(stderr=True)
    if not options.spinning_threads:
        keep_numpy_single_threaded()
    asr_threads = whisper_threads(options)

    def whisper(threads: int) -> WhisperTranscriber:
        return WhisperTranscriber(options.asr_model, options.asr_device, options.asr_compute_type, threads,
                                  window_padding_s=options.asr_window_padding_s)

    steps = [
        ("Silero VAD", lambda: SileroVAD()),
        (f"Whisper ({options.asr_model or 'bundled tiny.en'})", lambda: whisper(asr_threads)),
        (f"LLM ({_llm_label(options)})", lambda: build_llm(options)),
        (f"TTS ({_tts_label(options)})", lambda: build_tts(options)),
    ]
    if options.separate_partial_asr and options.asr_device == "cpu":
        steps.append(("Whisper for partial transcripts (one thread, lowest priority)", lambda: _partial_whisper(whisper)))
    loaded, seconds = [], {}
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("loading models", total=len(steps))
        for label, load in steps:
            progress.update(task, description=f"loading {label}")
            start = time.perf_counter()
            loaded.append(load())
            seconds[label] = time.perf_counter() - start
            progress.advance(task)
        progress.update(task, description="models loaded")
    return CascadeModels(*loaded[:4], load_seconds=seconds, partial_asr=loaded[4] if len(loaded) > 4 else None,
                         asr_in_steps=options.asr_in_steps)


def whisper_threads(options: ModelOptions) -> int:
    """`asr_threads` if set, else `threads` if set, else half the cores (at least one).

    Whisper's final pass runs beside the LLM and TTS (eager end of turn, pre-warms), and on this
    project's 2-core Xeon one thread beat two even alone: 202 vs 296 ms a pass (median over the 32
    clips, interleaved), and in the voice loop p50 0.89, p95 0.79 (bench/RESULTS.md, `asr-threads`)."""
    if options.asr_threads:
        return options.asr_threads
    if options.threads:
        return options.threads
    return max(1, (os.cpu_count() or 2) // 2)


def _partial_whisper(whisper) -> tuple[WhisperTranscriber, PriorityWorker]:
    """A Whisper for partial transcripts, built on its own worker at nice 19 so that CTranslate2's threads,
    started with the model, inherit that priority: the final pass, the LLM and TTS take the cores from it.
    On this project's 2-core Xeon a partial pass in flight made the final one wait: 3 of 32 turns took
    660-1055 ms from the pause to the transcript, against 200 for a single pass. This did not cure that
    tail there (`separate-partial-asr`), so it is an option: it may pay on a machine with cores to spare."""
    worker = PriorityWorker("asr-partial", nice=19)
    return worker.submit(whisper, 1).result(), worker
