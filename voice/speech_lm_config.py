"""Shape of a speech LM, saved beside its weights as config.json, and the named sizes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

ENCODEC_FRAME_RATE = 75.0  # EnCodec 24 kHz: 320 samples per frame
ENCODEC_KBPS_PER_CODEBOOK = 0.75  # 10 bits per codebook per frame at 75 frames/s


@dataclass(frozen=True)
class SpeechLMConfig:
    n_codebooks: int = 2  # K codes per frame, per stream; must match the codec's bandwidth
    cardinality: int = 1024  # entries per codebook; token `cardinality` is the pad token
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    ffn_hidden: int = 344  # SwiGLU hidden width
    context_frames: int = 256  # attention window; the KV cache never holds more than this
    rope_base: float = 10000.0
    dropout: float = 0.0
    frame_rate: float = ENCODEC_FRAME_RATE

    def __post_init__(self) -> None:
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(f"dim {self.dim} must split into {self.n_heads} heads of even width")
        for name in ("n_codebooks", "cardinality", "n_layers", "ffn_hidden", "context_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def pad_token(self) -> int:
        return self.cardinality

    @property
    def codec_bandwidth_kbps(self) -> float:
        return self.n_codebooks * ENCODEC_KBPS_PER_CODEBOOK

    @property
    def step_budget_ms(self) -> float:
        return 1000.0 / self.frame_rate

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> SpeechLMConfig:
        values = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown speech LM config keys: {', '.join(unknown)}")
        return cls(**values)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> SpeechLMConfig:
        return cls.from_json(Path(path).read_text())

    def with_changes(self, **changes) -> SpeechLMConfig:
        return replace(self, **changes)


CONFIGS: dict[str, SpeechLMConfig] = {
    # For CPU tests: well under 2 M parameters, EnCodec at 1.5 kbps (2 codebooks).
    "tiny": SpeechLMConfig(n_codebooks=2, dim=128, n_layers=2, n_heads=4, ffn_hidden=344, context_frames=256),
    # ~25 M parameters, sized so one step (full attention window included) fits in 13.3 ms on
    # one core of a 2-core CPU, leaving the other core to the codec: a step reads every weight
    # and the whole KV cache from memory, so time grows with parameters and with the window.
    # EnCodec at 3 kbps (4 codebooks, 40 ms of delay-pattern latency); 10 s of context.
    "production": SpeechLMConfig(n_codebooks=4, dim=512, n_layers=6, n_heads=8, ffn_hidden=1376,
                                 context_frames=750, dropout=0.1),
}


def config_by_name(name: str) -> SpeechLMConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown speech LM config {name!r}; choose one of {', '.join(CONFIGS)}") from None
