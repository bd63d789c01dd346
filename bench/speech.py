"""The shared speech clips (`../shared/speech/`) and their reference transcripts."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Clip:
    path: Path
    transcript: str
    duration_s: float
    speaker: str

    @property
    def name(self) -> str:
        return self.path.stem


def speech_dir() -> Path:
    """`$VOXLOOP_SPEECH_DIR`, else `shared/speech` beside or above the working directory."""
    if env := os.environ.get("VOXLOOP_SPEECH_DIR"):
        return Path(env)
    here = Path.cwd().resolve()
    for base in (here, *here.parents):
        for candidate in (base / "shared" / "speech", base.parent / "shared" / "speech"):
            if (candidate / "manifest.tsv").is_file():
                return candidate
    raise FileNotFoundError("cannot find shared/speech/manifest.tsv; set VOXLOOP_SPEECH_DIR")


def load_clips(directory: Path | None = None) -> list[Clip]:
    directory = directory or speech_dir()
    with open(directory / "manifest.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [Clip(directory / row["file"], row["transcript"], float(row["duration_s"]), row["speaker_or_source"]) for row in rows]


def clip(name: str, directory: Path | None = None) -> Clip:
    """A clip by file stem, e.g. `clip("jfk")`."""
    for candidate in load_clips(directory):
        if candidate.name == name:
            return candidate
    raise KeyError(f"no clip named {name!r} in the manifest")
