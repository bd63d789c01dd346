"""What a larger Whisper would cost on this machine, measured without its weights.

Whisper's compute does not depend on the values of its weights: the encoder costs the same
for any weights of a given shape, and the decoder costs the same per token. So a model with
the published shape of each Whisper size and random weights, asked to decode exactly as many
tokens as the speaker said, takes the time the real model would. This answers "would Whisper
small fit in the latency budget here?" on a machine that cannot download it.

The measurement mirrors `voice/asr.py`'s final pass (the utterance plus `WINDOW_PADDING_S` of
silence, greedy, no timestamps). It is validated on the one size whose weights ship with
voxloop: a random-weight tiny.en is timed beside the real tiny.en, and the table shows both, so
the method's error is in plain sight. Random weights transcribe nothing, so this measures time only, never accuracy.

    python -m voxloop.bench.asr_cost --device cuda --sizes tiny.en small.en medium.en large-v3-turbo
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from voxloop.bench.speech import load_clips
from voxloop.codecs.audiofile import load_audio
from voxloop.voice.asr import WINDOW_PADDING_S

SAMPLE_RATE = 16000
# The English-only vocabulary's special tokens, shared by every model timed here: the final
# pass's prompt is start-of-transcript and no-timestamps, and end-of-text is suppressed so that
# every model decodes the same count.
END_OF_TEXT, START_OF_TRANSCRIPT, NO_TIMESTAMPS = 50256, 50257, 50362


@dataclass(frozen=True)
class WhisperShape:
    """The published architecture of one Whisper size (openai/whisper's ModelDimensions)."""

    d_model: int
    encoder_layers: int
    decoder_layers: int
    heads: int
    n_mels: int = 80
    vocab: int = 51864  # English-only; the multilingual models have 51865 (51866 from v3)

    @property
    def parameters(self) -> int:
        d, ffn = self.d_model, 4 * self.d_model
        encoder = self.encoder_layers * (4 * d * d + 2 * d * ffn) + d * self.n_mels * 3 + d * d * 3
        decoder = self.decoder_layers * (8 * d * d + 2 * d * ffn) + self.vocab * d
        return encoder + decoder


SHAPES = {
    "tiny.en": WhisperShape(384, 4, 4, 6),
    "base.en": WhisperShape(512, 6, 6, 8),
    "small.en": WhisperShape(768, 12, 12, 12),
    "medium.en": WhisperShape(1024, 24, 24, 16),
    "large-v3": WhisperShape(1280, 32, 32, 20, n_mels=128, vocab=51866),
    "large-v3-turbo": WhisperShape(1280, 32, 4, 20, n_mels=128, vocab=51866),
}


def random_whisper(shape: WhisperShape, out: Path, quantization: str, vocabulary: list[str], seed: int = 0) -> Path:
    """Write a CTranslate2 Whisper of `shape` with random weights to `out`, with the real
    model's `vocabulary` (CTranslate2 looks up its special tokens by name), cut or padded to
    the shape's size."""
    from ctranslate2.specs import common_spec, whisper_spec

    rng = np.random.default_rng(seed)
    d, ffn = shape.d_model, 4 * shape.d_model

    def weights(*dims: int) -> np.ndarray:
        # Small uniform values: random, and far from overflow in float16.
        return ((rng.random(dims, dtype=np.float32) - 0.5) * 0.04).astype(np.float32)

    def linear(spec: common_spec.LinearSpec, out_dim: int, in_dim: int) -> None:
        spec.weight, spec.bias = weights(out_dim, in_dim), weights(out_dim)

    def layer_norm(spec: common_spec.LayerNormSpec) -> None:
        spec.gamma, spec.beta = np.ones(d, np.float32), np.zeros(d, np.float32)

    def self_attention(spec) -> None:
        layer_norm(spec.layer_norm)
        linear(spec.linear[0], 3 * d, d)  # fused query, key, value
        linear(spec.linear[1], d, d)

    def feed_forward(spec) -> None:
        layer_norm(spec.layer_norm)
        linear(spec.linear_0, ffn, d)
        linear(spec.linear_1, d, ffn)

    spec = whisper_spec.WhisperSpec(shape.encoder_layers, shape.heads, shape.decoder_layers, shape.heads)
    encoder, decoder = spec.encoder, spec.decoder
    encoder.conv1.weight, encoder.conv1.bias = weights(d, shape.n_mels, 3), weights(d)
    encoder.conv2.weight, encoder.conv2.bias = weights(d, d, 3), weights(d)
    encoder.position_encodings.encodings = weights(1500, d)
    layer_norm(encoder.layer_norm)
    for layer in encoder.layer:
        self_attention(layer.self_attention)
        feed_forward(layer.ffn)
    decoder.embeddings.weight = weights(shape.vocab, d)
    decoder.position_encodings.encodings = weights(448, d)
    layer_norm(decoder.layer_norm)
    decoder.projection.weight = decoder.embeddings.weight
    for layer in decoder.layer:
        self_attention(layer.self_attention)
        layer_norm(layer.attention.layer_norm)
        linear(layer.attention.linear[0], d, d)  # query, from the decoder
        linear(layer.attention.linear[1], 2 * d, d)  # fused key, value, from the encoder
        linear(layer.attention.linear[2], d, d)
        feed_forward(layer.ffn)
    padding = [f"<|pad{i}|>" for i in range(max(0, shape.vocab - len(vocabulary)))]
    spec.register_vocabulary((vocabulary + padding)[:shape.vocab])
    spec.config.suppress_ids, spec.config.suppress_ids_begin, spec.config.lang_ids = [], [], []
    spec.config.alignment_heads = [(shape.decoder_layers - 1, 0)]
    spec.validate()
    spec.optimize(quantization=quantization)
    out.mkdir(parents=True, exist_ok=True)
    spec.save(str(out))
    return out


@dataclass
class Timing:
    size: str
    weights: str  # "real" or "random"
    clip: str
    audio_s: float
    tokens: int
    ms: float


class ForcedDecoder:
    """One Whisper model, timed on the final-pass work for an utterance: encode it with the
    trailing silence, then decode exactly `tokens` tokens greedily (end of text suppressed)."""

    def __init__(self, model_dir: str, n_mels: int, device: str, compute_type: str, threads: int,
                 max_lengths: dict[int, int] | None = None):
        """`max_lengths`: the `max_length` found for each token count, shared between decoders
        (it depends on CTranslate2's counting, not on the model), so that only the first
        decoder, the cheapest, pays for the search."""
        import ctranslate2
        from faster_whisper.feature_extractor import FeatureExtractor

        self.model = ctranslate2.models.Whisper(model_dir, device=device, compute_type=compute_type,
                                                intra_threads=threads)
        self.features = FeatureExtractor(feature_size=n_mels)
        self.prompt = [START_OF_TRANSCRIPT, NO_TIMESTAMPS]
        self._max_lengths = {} if max_lengths is None else max_lengths

    def time_ms(self, audio: np.ndarray, tokens: int) -> tuple[float, int]:
        max_length = self._max_length_for(audio, tokens)
        started = time.perf_counter()
        decoded = self._final_pass(audio, max_length)
        return (time.perf_counter() - started) * 1000, decoded

    def _final_pass(self, audio: np.ndarray, max_length: int) -> int:
        import ctranslate2

        features = self.features(audio, padding=int(WINDOW_PADDING_S * SAMPLE_RATE))
        features = np.ascontiguousarray(features[None, :, :3000], dtype=np.float32)
        result = self.model.generate(ctranslate2.StorageView.from_array(features), [self.prompt], beam_size=1,
                                     max_length=max_length, suppress_tokens=[END_OF_TEXT])[0]
        return len(result.sequences_ids[0])

    def _max_length_for(self, audio: np.ndarray, tokens: int) -> int:
        """The smallest `max_length` that yields `tokens` decoded tokens. CTranslate2 does not
        count it as plain generated tokens (on short windows it yields about half as many), so it
        is found by bisection, untimed, and cached."""
        if tokens not in self._max_lengths:
            low, high = 1, 4 * tokens + 16
            while low < high:
                middle = (low + high) // 2
                if self._final_pass(audio, middle) >= tokens:
                    high = middle
                else:
                    low = middle + 1
            self._max_lengths[tokens] = low
        return self._max_lengths[tokens]


def token_counts(clips, reference_model: Path) -> list[int]:
    """What the real model decodes for each clip: its reference transcript's tokens, plus the
    end-of-text token."""
    from faster_whisper.tokenizer import Tokenizer
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(reference_model / "tokenizer.json"))
    tokenizer = Tokenizer(hf, multilingual=False)
    return [len(tokenizer.encode(" " + clip.transcript.strip())) + 1 for clip in clips]


def measure(sizes: list[str], device: str, compute_type: str, repeats: int, threads: int, clip_limit: int | None,
            reference_model: Path) -> list[Timing]:
    """Time the real `reference_model` (tiny.en) and a random-weight model of each size."""
    clips = load_clips()[:clip_limit]
    tokens = token_counts(clips, reference_model)
    vocabulary = (reference_model / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    audio = [load_audio(clip.path, SAMPLE_RATE) for clip in clips]
    models: list[tuple[str, str, str, int]] = []  # (size, weights, dir, n_mels)
    timings: list[Timing] = []
    with tempfile.TemporaryDirectory() as scratch:
        models.append(("tiny.en", "real", str(reference_model), 80))
        for size in tqdm(sizes, desc="random-weight models", unit="model"):
            shape = SHAPES[size]
            path = random_whisper(shape, Path(scratch) / size, "float16" if device == "cuda" else "int8", vocabulary)
            models.append((size, "random", str(path), shape.n_mels))
        # Interleaved, pass by pass, so that the machine's drift falls on every model alike.
        max_lengths: dict[int, int] = {}
        decoders = [(size, weights, ForcedDecoder(path, n_mels, device, compute_type, threads, max_lengths))
                    for size, weights, path, n_mels in models]
        for _, _, decoder in decoders:
            decoder.time_ms(audio[0], 8)  # warm-up: first-call allocations
        reference = decoders[0][2]
        for samples, n in zip(audio, tokens):
            reference.time_ms(samples, n)  # the max_length search, on the cheapest model
        work = [(clip, samples, n) for _ in range(repeats) for clip, samples, n in zip(clips, audio, tokens)]
        for turn, (clip, samples, n) in enumerate(tqdm(work, desc="final passes", unit="clip")):
            rotation = decoders[turn % len(decoders):] + decoders[:turn % len(decoders)]
            for size, weights, decoder in rotation:
                ms, decoded = decoder.time_ms(samples, n)
                timings.append(Timing(size, weights, clip.name, samples.size / SAMPLE_RATE, decoded, ms))
    return timings


def summary(timings: list[Timing]) -> list[dict]:
    rows = []
    keys = list(dict.fromkeys((t.size, t.weights) for t in timings))
    for size, weights in keys:
        ms = sorted(t.ms for t in timings if (t.size, t.weights) == (size, weights))
        tokens = [t.tokens for t in timings if (t.size, t.weights) == (size, weights)]
        rows.append({"size": size, "weights": weights, "passes": len(ms), "median_ms": statistics.median(ms),
                     "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))], "median_tokens": statistics.median(tokens),
                     "parameters_m": round(SHAPES[size].parameters / 1e6)})
    return rows


def markdown(rows: list[dict], device: str, compute_type: str) -> str:
    lines = [f"Final-pass Whisper time by model size on `{device}` ({compute_type}); random weights of each size's "
             "shape, decoding as many tokens as the reference transcript has; real tiny.en beside its random twin.",
             "", "| Size | Weights | Parameters | Passes | Median ms | p95 ms | Tokens (median) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['weights']} | {r['parameters_m']} M | {r['passes']} | {r['median_ms']:.1f} | "
                     f"{r['p95_ms']:.1f} | {r['median_tokens']:g} |")
    return "\n".join(lines) + "\n"


def plot(timings: list[Timing], rows: list[dict], path: Path, title: str) -> None:
    """Each size's passes as a strip of points over its median bar: spread and centre at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    labels = [f"{r['size']}\n({r['weights']})" for r in rows]
    colors = ["tab:green" if r["weights"] == "real" else "tab:blue" for r in rows]
    ax.bar(range(len(rows)), [r["median_ms"] for r in rows], color=colors, alpha=0.35, label="median")
    rng = np.random.default_rng(0)
    for i, r in enumerate(rows):
        ms = [t.ms for t in timings if (t.size, t.weights) == (r["size"], r["weights"])]
        ax.scatter(i + rng.uniform(-0.25, 0.25, len(ms)), ms, s=8, color=colors[i])
        ax.annotate(f"{r['median_ms']:.0f}", (i, r["median_ms"]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("final pass, ms (one point per clip)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(timings: list[Timing], device: str, compute_type: str, out: Path | None) -> str:
    rows = summary(timings)
    report = markdown(rows, device, compute_type)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "asr_cost.json").write_text(json.dumps(
            {"device": device, "compute_type": compute_type, "summary": rows,
             "timings": [t.__dict__ for t in timings]}, indent=1))
        (out / "asr_cost.md").write_text(report)
        plot(timings, rows, out / "asr_cost.png", f"Whisper final pass by model size, {device} ({compute_type})")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voxloop.bench.asr_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny.en", "base.en", "small.en"], choices=sorted(SHAPES))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--compute-type", default=None, help="default: float16 on cuda, int8 on cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    parser.add_argument("--repeats", type=int, default=1, help="passes per clip and model")
    parser.add_argument("--clips", type=int, default=None, help="use only the first N clips")
    parser.add_argument("--reference-model", type=Path, default=None,
                        help="the real tiny.en CTranslate2 folder, timed beside its random twin (default: the bundled one)")
    parser.add_argument("--out", type=Path, default=None, help="write asr_cost.json, asr_cost.md and asr_cost.png here")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="measure nothing: redraw the report and plot of an earlier run's asr_cost.json into --out")
    args = parser.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print(write_report([Timing(**t) for t in saved["timings"]], saved["device"], saved["compute_type"], args.out))
        return 0
    compute_type = args.compute_type or ("float16" if args.device == "cuda" else "int8")
    if args.reference_model is None:
        from voxloop.voice.asr import bundled_whisper_path

        args.reference_model = Path(bundled_whisper_path())
    timings = measure(args.sizes, args.device, compute_type, args.repeats, args.threads, args.clips, args.reference_model)
    print(write_report(timings, args.device, compute_type, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
