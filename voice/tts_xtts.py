"""XTTS-v2 speech synthesis (coqui-tts): streamed, in a cloned or built-in voice.

XTTS is a GPT that writes audio tokens, each standing for 1024 samples at 22.05 kHz (about
46 ms of speech), and a HiFi-GAN that turns the GPT's latents into a waveform. The model's
`inference_stream` decodes every `stream_chunk_size` tokens, so that size sets the time to
first audio: the GPT must write that many tokens, and the vocoder decode them, before
anything can play. Each decode runs over everything written so far (crossfaded against
the previous one), so small chunks cost more vocoder work over a long clause.

Weights are never random: they come from a local checkpoint (`--xtts-dir`) or, once the
user has accepted the Coqui Public Model License with `COQUI_TOS_AGREED=1`, from coqui's
model manager. A voice is a reference clip (a path to a wav) or a speaker from the
checkpoint's `speakers_xtts.pth`; its conditioning latents are computed once and cached.
"""

from __future__ import annotations

import contextlib
import logging
import os
import textwrap
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from voxloop.codecs.resample import StreamResampler, resample

try:
    from transformers import StoppingCriteria, StoppingCriteriaList
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts
except ImportError as exc:
    raise ImportError(f"the xtts TTS backend needs coqui-tts: pip install -e .[xtts] ({exc})") from exc

from voxloop.voice.errors import ModelNotFoundError
from voxloop.voice.threaded import iterate_in_thread
from voxloop.voice.tts import OUTPUT_RATE

logger = logging.getLogger(__name__)

XTTS_MODEL_NAME = "tts_models/multilingual/multi-dataset/xtts_v2"
TOS_ENV = "COQUI_TOS_AGREED"
CHECKPOINT_FILES = ("config.json", "model.pth", "vocab.json")
SPEAKERS_FILE = "speakers_xtts.pth"
# The rate XTTS computes its conditioning latents at (its GPT and speaker encoder were trained on it).
CONDITIONING_RATE = 22050
# Tokens per streamed chunk (each token is about 46 ms of speech). Measured on voxloop's
# backend with XTTS-v2's architecture (random weights, same compute): on an H100 in float32, 8
# tokens give the first audio after about 0.1 s and still generate 3 times faster than real time,
# while coqui's default of 20 waits about 0.25 s; 4 gains little more and leaves a slower GPU
# no margin to keep ahead of playback. On a CPU nothing is real time (2 cores: 5-9 s of work per
# second of speech) and the vocoder re-decodes the whole clause at every chunk, so there 20 keeps
# the total work down: 13 s against 18 s at 8 tokens for a 2.5 s clause, with the first audio
# after 4.5 s against 2.4 s.
GPU_STREAM_CHUNK_SIZE = 8
CPU_STREAM_CHUNK_SIZE = 20

HOW_TO_GET_WEIGHTS = (
    "Either pass --xtts-dir PATH, a local XTTS-v2 checkpoint folder (config.json, model.pth, vocab.json, "
    "speakers_xtts.pth), or, online, accept the Coqui Public Model License (https://coqui.ai/cpml) by setting "
    f"{TOS_ENV}=1, and voxloop downloads {XTTS_MODEL_NAME} through coqui's model manager."
)


class SynthesisCancelled(Exception):
    """Raised inside the model's token loop when the listener has gone (barge-in)."""


def _missing_files(directory: Path) -> list[str]:
    return [name for name in CHECKPOINT_FILES if not (directory / name).is_file()]


def resolve_checkpoint_dir(xtts_dir: str | os.PathLike | None) -> Path:
    """The folder holding XTTS-v2's weights: the one given, else coqui's download (licence accepted)."""
    if xtts_dir is not None:
        directory = Path(xtts_dir).expanduser()
        if not directory.is_dir():
            raise ModelNotFoundError(f"XTTS checkpoint folder {directory} does not exist. {HOW_TO_GET_WEIGHTS}")
        if missing := _missing_files(directory):
            raise ModelNotFoundError(f"XTTS checkpoint folder {directory} lacks {', '.join(missing)}. {HOW_TO_GET_WEIGHTS}")
        return directory
    if os.environ.get(TOS_ENV) != "1":
        # Checked before the model manager runs: it would otherwise ask on stdin, which a server has not got.
        raise ModelNotFoundError(f"no XTTS weights given and the XTTS licence is not accepted ({TOS_ENV} is not 1). "
                                 f"{HOW_TO_GET_WEIGHTS}")
    return _download_checkpoint()


def _download_checkpoint() -> Path:
    from TTS.utils.manage import ModelManager

    logger.info("fetching %s through coqui's model manager (about 1.8 GB the first time)", XTTS_MODEL_NAME)
    try:
        _, config_path, _ = ModelManager(progress_bar=True).download_model(XTTS_MODEL_NAME)
    except Exception as exc:  # offline, hub errors, a full disk: all mean the weights are not here
        raise ModelNotFoundError(f"could not fetch {XTTS_MODEL_NAME} ({type(exc).__name__}: {exc}). {HOW_TO_GET_WEIGHTS}") from exc
    directory = Path(config_path).parent
    if missing := _missing_files(directory):
        raise ModelNotFoundError(f"the download of {XTTS_MODEL_NAME} in {directory} lacks {', '.join(missing)}. {HOW_TO_GET_WEIGHTS}")
    return directory


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise ValueError(f"--xtts-device {requested}: not a device name (auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--xtts-device {requested}: this torch build sees no CUDA device (use auto or cpu)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--xtts-device {requested}: XTTS runs on cpu or cuda")
    return device


@dataclass(frozen=True)
class VoiceLatents:
    """What XTTS conditions on: GPT latents for the speaking style, an embedding for the timbre."""

    gpt_cond_latent: torch.Tensor
    speaker_embedding: torch.Tensor


class _StopWhenSet(StoppingCriteria):
    """A generation stopping criterion that aborts the token loop as soon as the event is set.

    Raising, rather than returning True, keeps `inference_stream` from decoding the tokens it
    has already written: nobody would hear them.
    """

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.event.is_set():
            raise SynthesisCancelled
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class XttsSynthesizer:
    """XTTS-v2 behind the `SpeechSynthesizer` protocol: float32 chunks at 24 kHz, cancellable."""

    def __init__(self, xtts_dir: str | os.PathLike | None = None, *, device: str = "auto", language: str = "en",
                 default_voice: str | None = None, stream_chunk_size: int | None = None, half_precision: bool = False,
                 voice_dir: str | os.PathLike | None = None):
        """`default_voice`: a built-in speaker or any reference clip (the operator's choice).
        `voice_dir`: the folder of reference clips that clients may pick by file name; clients
        never name a path, so a remote client cannot make the server read its files."""
        if stream_chunk_size is not None and stream_chunk_size < 1:
            raise ValueError(f"stream_chunk_size must be at least 1 token, got {stream_chunk_size}")
        self.checkpoint_dir = resolve_checkpoint_dir(xtts_dir)
        self.device = pick_device(device)
        if self.device.type == "cpu":
            logger.warning("XTTS is running on the CPU: expect seconds before the first audio of each clause and slower than "
                           "real-time speech. A CUDA GPU (--xtts-device cuda) or --tts piper is what real-time talk needs.")
        self.config = XttsConfig()
        self.config.load_json(str(self.checkpoint_dir / "config.json"))
        language = language.lower()
        if language not in self.config.languages:
            raise ValueError(f"XTTS language {language!r} is not one of this checkpoint's: {', '.join(self.config.languages)}")
        self.language = language
        on_gpu = self.device.type == "cuda"
        self.stream_chunk_size = stream_chunk_size or (GPU_STREAM_CHUNK_SIZE if on_gpu else CPU_STREAM_CHUNK_SIZE)
        # Float16 autocast is the half precision XTTS's code supports (cast weights trip over its
        # float32 position embeddings). Off by default: on an H100 it made the first audio slower
        # (0.17-0.30 s against 0.11-0.14 s at 8 tokens), as batch-1 decoding is bound by kernel
        # launches, not arithmetic; older GPUs with slow float32 may gain from it.
        self.half_precision = half_precision and on_gpu

        self.model = Xtts(self.config)
        self.model.load_checkpoint(self.config, checkpoint_dir=str(self.checkpoint_dir), eval=True)
        self.model.to(self.device)
        self.sample_rate = int(self.model.hifigan_decoder.output_sample_rate)
        self.speakers: dict[str, dict[str, torch.Tensor]] = self.model.speaker_manager.speakers if self.model.speaker_manager else {}
        self._voices: dict[str, VoiceLatents] = {}
        self.voice_dir = Path(voice_dir).expanduser().resolve() if voice_dir is not None else None
        if self.voice_dir is not None and not self.voice_dir.is_dir():
            raise ValueError(f"the XTTS voice folder {self.voice_dir} does not exist")

        self.default_voice = self._choose_default_voice(default_voice)
        self.name = f"xtts:{self.checkpoint_dir.name}"
        # One worker: the model is not thread-safe, clauses of a reply stay in order, and the
        # voice cache is only touched from this thread once the constructor has returned.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts")

    def _choose_default_voice(self, requested: str | None) -> str:
        if requested:
            if requested in self.speakers:
                self._voices[requested] = self._builtin_latents(requested)
            else:
                self._voices[requested] = self._clone_latents(Path(requested).expanduser())
            return requested
        if not self.speakers:
            raise ValueError(f"the XTTS checkpoint {self.checkpoint_dir} has no {SPEAKERS_FILE}, so it has no built-in voice: "
                             "pass --xtts-voice PATH.wav, a clean 6 to 10 s clip of the voice to clone")
        name = next(iter(self.speakers))
        self._voices[name] = self._builtin_latents(name)
        return name

    def _builtin_latents(self, name: str) -> VoiceLatents:
        speaker = self.speakers[name]
        return VoiceLatents(speaker["gpt_cond_latent"].to(self.device), speaker["speaker_embedding"].to(self.device))

    def _clone_latents(self, clip_path: Path) -> VoiceLatents:
        """The model's `get_conditioning_latents`, with the clip read by soundfile and resampled by soxr.

        Coqui's own reader goes through torchaudio.load, which on torch 2.9 needs torchcodec
        and FFmpeg's shared libraries; soundfile reads the same wav files with neither.
        """
        try:
            samples, rate = soundfile.read(str(clip_path), dtype="float32", always_2d=True)
        except (OSError, RuntimeError, soundfile.LibsndfileError) as exc:
            raise ValueError(f"cannot read the voice reference clip {clip_path}: {exc}") from exc
        mono = resample(samples.mean(axis=1), rate, CONDITIONING_RATE)
        mono = np.clip(mono[: CONDITIONING_RATE * self.config.max_ref_len], -1.0, 1.0)
        if self.config.sound_norm_refs and np.abs(mono).max() > 0:
            mono = mono / np.abs(mono).max() * 0.75
        audio = torch.from_numpy(np.ascontiguousarray(mono)).unsqueeze(0)
        try:
            with torch.inference_mode():
                speaker_embedding = self.model.get_speaker_embedding(audio, CONDITIONING_RATE)
                gpt_cond_latent = self.model.get_gpt_cond_latents(audio, CONDITIONING_RATE, length=self.config.gpt_cond_len,
                                                                  chunk_length=self.config.gpt_cond_chunk_len)
        except RuntimeError as exc:  # e.g. "Provided reference audio too short"
            raise ValueError(f"cannot clone the voice in {clip_path}: {exc}") from exc
        logger.info("computed XTTS conditioning latents for %s (%.1f s of reference)", clip_path, mono.size / CONDITIONING_RATE)
        return VoiceLatents(gpt_cond_latent, speaker_embedding)

    def voice_clip(self, name: str) -> Path | None:
        """The reference clip a client's voice name picks: `name` or `name.wav` in the voice
        folder, and nothing outside it (no paths, no hidden files)."""
        if self.voice_dir is None or not name or Path(name).name != name or name.startswith("."):
            return None
        for candidate in (self.voice_dir / name, self.voice_dir / f"{name}.wav"):
            if candidate.is_file():
                return candidate
        return None

    def voice_latents(self, voice: str | None) -> VoiceLatents:
        """The latents of a voice: cached, else a built-in speaker, else a clip in the voice folder, else the default."""
        name = voice or self.default_voice
        if name in self._voices:
            return self._voices[name]
        clip = None if name in self.speakers else self.voice_clip(name)
        if name in self.speakers:
            latents = self._builtin_latents(name)
        elif clip is not None:
            try:
                latents = self._clone_latents(clip)
            except ValueError as exc:
                logger.warning("%s; speaking in the default voice %r instead", exc, self.default_voice)
                latents = self._voices[self.default_voice]
        else:
            # Realtime clients send OpenAI's voice names ("alloy"); answer in the default voice, and say so once.
            where = f" nor a clip in {self.voice_dir}" if self.voice_dir else " (no --xtts-voice-dir to clone client voices from)"
            logger.warning("XTTS voice %r is neither a built-in speaker%s; speaking in the default voice %r",
                           name, where, self.default_voice)
            latents = self._voices[self.default_voice]
        self._voices[name] = latents
        return latents

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.half_precision:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _pieces(self, text: str) -> list[str]:
        """The text in pieces XTTS can take at once (our clause chunker's are already short enough)."""
        limit = self.model.tokenizer.char_limits.get(self.language.split("-")[0], 250)
        text = " ".join(text.split())
        if len(text) <= limit:
            return [text] if text else []
        return textwrap.wrap(text, width=limit, break_on_hyphens=False)

    def _chunks(self, text: str, voice: str | None, cancelled: threading.Event) -> Iterator[np.ndarray]:
        latents = self.voice_latents(voice)
        resampler = StreamResampler(self.sample_rate, OUTPUT_RATE)
        stop_on_cancel = StoppingCriteriaList([_StopWhenSet(cancelled)])
        settings = dict(temperature=self.config.temperature, length_penalty=self.config.length_penalty,
                        repetition_penalty=self.config.repetition_penalty, top_k=self.config.top_k, top_p=self.config.top_p)
        try:
            for piece in self._pieces(text):
                stream = self.model.inference_stream(piece, self.language, latents.gpt_cond_latent, latents.speaker_embedding,
                                                     stream_chunk_size=self.stream_chunk_size,
                                                     stopping_criteria=stop_on_cancel, **settings)
                with contextlib.closing(stream):
                    while True:
                        with self._autocast():
                            wav = next(stream, None)
                        if wav is None:
                            break
                        yield resampler.process(wav.float().cpu().numpy())
        except SynthesisCancelled:
            return
        yield resampler.flush()

    async def synthesize(self, text: str, voice: str | None = None,
                         needed_by: Callable[[], float] | None = None) -> AsyncIterator[np.ndarray]:
        """`needed_by` is not used: XTTS streams a clause from one GPT decode, which cannot be put
        aside for another session's clause: clauses are served whole, first come, first served."""
        cancelled = threading.Event()
        try:
            async with aclosing(iterate_in_thread(self._executor, lambda: self._chunks(text, voice, cancelled))) as chunks:
                async for chunk in chunks:
                    if chunk.size:
                        yield chunk
        finally:
            # Stops the model between two tokens, not only between two chunks as the thread's own flag does.
            cancelled.set()
