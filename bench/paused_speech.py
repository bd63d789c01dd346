"""Paused speech: the shared clips with a 600-700 ms silence inside a sentence.

A person who stops to think mid-sentence must not get an answer to half a sentence. Each clip
is cut at a word boundary inside a clause (Whisper word timestamps, refined to the quietest
10 ms between the two words) and silence is inserted there; the speech itself is untouched.
`voxloop bench --paused-speech` speaks these clips, and the benchmark counts the turns the
server ended before the true end of speech.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxloop.bench.speech import Clip, load_clips
from voxloop.codecs.audiofile import load_audio, save_audio

RATE = 16000
WINDOW = RATE // 100  # 10 ms
PAUSES_MS = (600, 625, 650, 675, 700)
MIN_WORDS = 5
# A word that ends in punctuation closes a clause: a pause after it is a natural one.
_CLAUSE_END = tuple(".,;:!?")


@dataclass(frozen=True)
class Word:
    text: str
    start_s: float
    end_s: float


def paused_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "voxloop" / "paused_speech"


def choose_pause_point(words: list[Word]) -> int | None:
    """The index of the word after which to pause: inside a clause, at least two words from
    either end, closest to the middle of the speech. None if the clip has no such boundary."""
    if len(words) < MIN_WORDS:
        return None
    middle = (words[0].start_s + words[-1].end_s) / 2
    candidates = [i for i in range(1, len(words) - 2) if not words[i].text.strip().endswith(_CLAUSE_END)]
    if not candidates:
        return None
    return min(candidates, key=lambda i: abs(words[i].end_s - middle))


def quietest_cut(audio: np.ndarray, after: Word, before: Word) -> int:
    """The sample to cut at between two words: the start of the quietest 10 ms window from
    slightly inside the first word's end to slightly inside the next word's start (word
    timestamps are only good to some tens of ms)."""
    lo = max(0, int((after.end_s - 0.05) * RATE) // WINDOW)
    hi = min(audio.size // WINDOW, int((before.start_s + 0.05) * RATE) // WINDOW + 1)
    if hi <= lo:
        return int(after.end_s * RATE)
    windows = audio[lo * WINDOW:hi * WINDOW].reshape(-1, WINDOW).astype(np.float64)
    return (lo + int(np.argmin(np.mean(windows ** 2, axis=1)))) * WINDOW


def insert_pause(audio: np.ndarray, at_sample: int, pause_ms: int) -> np.ndarray:
    return np.concatenate([audio[:at_sample], np.zeros(pause_ms * RATE // 1000, dtype=audio.dtype), audio[at_sample:]])


def _word_timestamps(model, audio: np.ndarray) -> list[Word]:
    segments, _ = model.transcribe(audio, language="en", beam_size=1, word_timestamps=True,
                                   condition_on_previous_text=False, vad_filter=False)
    return [Word(w.word, w.start, w.end) for s in segments for w in (s.words or [])]


def build_paused_clips(clips: list[Clip] | None = None, directory: Path | None = None) -> Path:
    """Write the paused clips and their manifest (the shared manifest's columns, plus where the
    pause went) into `directory`, once; returns the directory."""
    directory = directory or paused_dir()
    manifest = directory / "manifest.tsv"
    if manifest.is_file():
        return directory
    from voxloop.voice.asr import WhisperTranscriber

    model = WhisperTranscriber().model
    directory.mkdir(parents=True, exist_ok=True)
    rows, placements = [], {}
    for index, clip in enumerate(clips if clips is not None else load_clips()):
        audio = load_audio(clip.path, RATE)
        words = _word_timestamps(model, audio)
        point = choose_pause_point(words)
        if point is None:
            continue
        cut = quietest_cut(audio, words[point], words[point + 1])
        pause_ms = PAUSES_MS[index % len(PAUSES_MS)]
        paused = insert_pause(audio, cut, pause_ms)
        name = f"{clip.name}-paused.wav"
        save_audio(directory / name, paused, RATE)
        rows.append({"file": name, "duration_s": f"{paused.size / RATE:.3f}", "sample_rate": str(RATE),
                     "speaker_or_source": clip.speaker, "transcript": clip.transcript})
        placements[name] = {"after_word": words[point].text.strip(), "before_word": words[point + 1].text.strip(),
                            "at_s": round(cut / RATE, 3), "pause_ms": pause_ms, "source": str(clip.path)}
    with open(directory / "placements.json", "w") as handle:
        json.dump(placements, handle, indent=1)
    with open(manifest, "w", newline="") as handle:  # last: its presence means the set is complete
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return directory


def load_paused_clips() -> list[Clip]:
    return load_clips(build_paused_clips())
