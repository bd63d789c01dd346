"""Training recipe for the speech LM, from pairs of (user audio, reply audio).

Each pair becomes one two-stream conversation, laid out in time the way the server will see
it: a little silence, the user speaks, a short pause, the assistant replies, silence. The
user track is silence while the assistant speaks; the assistant track is silence while the
user speaks, so the model also learns to stay quiet and listen.

    user track:       lead | user speech |  gap  |     silence     | tail
    assistant track:  lead |   silence   |  gap  |  reply speech   | tail

Both tracks are encoded whole, each with a fresh streaming EnCodec encoder, i.e. exactly the
codes the server's streaming encoder produces for the same audio (silence included). The
loss is teacher-forced cross-entropy on the assistant's delayed codes, with inputs built by
`speech_lm.teacher_forcing`, the same convention `SpeechLMStream` follows when it serves.

Output directory:
    checkpoints/step_NNNNNNN/  config.json, model.safetensors, training_state.pt (optimizer,
                               step, loss history); the last few are kept
    model/                     the latest weights, loadable with `SpeechLM.load`
    codes/                     encoded conversations, reused by later runs
    loss.png                   the loss curve
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from voxloop.codecs.audiofile import load_audio
from voxloop.codecs.encodec_stream import FRAME_SAMPLES, SAMPLE_RATE, StreamingEncoder, load_encodec
from voxloop.voice.delay_pattern import delay
from voxloop.voice.speech_lm import IGNORE_INDEX, SpeechLM, teacher_forcing
from voxloop.voice.speech_lm_config import SpeechLMConfig, config_by_name

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
CHECKPOINTS_KEPT = 3
TRAINING_STATE_FILE = "training_state.pt"


@dataclass(frozen=True)
class Pair:
    user: Path
    reply: Path


@dataclass(frozen=True)
class ConversationLayout:
    """Silences around the two turns, in codec frames (13.3 ms each)."""

    lead_frames: int = 8
    gap_frames: int = 15
    tail_frames: int = 23

    def check(self, n_codebooks: int) -> None:
        if min(self.lead_frames, self.gap_frames) < 0:
            raise ValueError("lead and gap frames cannot be negative")
        # The delay pattern puts codebook k of the last frames k steps later; the tail covers that.
        if self.tail_frames < n_codebooks - 1:
            raise ValueError(f"tail_frames must be at least {n_codebooks - 1} (the delay pattern's reach)")


@dataclass
class Conversation:
    user: torch.Tensor  # [K, T] plain codes
    assistant: torch.Tensor  # [K, T]
    reply_start: int  # frame where the reply begins in the assistant track
    reply_frames: int


# ---------------------------------------------------------------------------------------
# Pairs


def read_pairs(source: str | Path | Sequence[tuple[str | Path, str | Path]]) -> list[Pair]:
    """Pairs from a TSV (user<TAB>reply per line, optional header, paths relative to the
    file), a directory holding pairs.tsv, a directory of pair folders each holding user.* and
    reply.* audio, or a sequence of (user, reply) paths."""
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.is_dir() and (path / "pairs.tsv").is_file():
            path = path / "pairs.tsv"
        if path.is_file():
            pairs = _pairs_from_tsv(path)
        elif path.is_dir():
            pairs = _pairs_from_folders(path)
        else:
            raise FileNotFoundError(f"training pairs {path} do not exist")
        where = str(path)
    else:
        pairs = [Pair(Path(user), Path(reply)) for user, reply in source]
        where = "the list given"
    if not pairs:
        raise ValueError(f"no (user, reply) pairs found in {where}")
    missing = [str(p) for pair in pairs for p in (pair.user, pair.reply) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} audio file(s) of the training pairs are missing, e.g. {missing[0]}")
    return pairs


def _pairs_from_tsv(path: Path) -> list[Pair]:
    pairs = []
    with path.open(newline="") as file:
        for line_number, row in enumerate(csv.reader(file, delimiter="\t"), start=1):
            if not row or row[0].startswith("#") or (line_number == 1 and row[0].strip().lower() == "user"):
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{line_number}: expected 'user<TAB>reply', got {row!r}")
            user, reply = (path.parent / cell.strip() for cell in row[:2])
            pairs.append(Pair(user, reply))
    return pairs


def _pairs_from_folders(directory: Path) -> list[Pair]:
    def find(folder: Path, stem: str) -> Path | None:
        return next((folder / f"{stem}{suffix}" for suffix in AUDIO_SUFFIXES if (folder / f"{stem}{suffix}").is_file()), None)

    pairs = []
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        user, reply = find(folder, "user"), find(folder, "reply")
        if user and reply:
            pairs.append(Pair(user, reply))
    return pairs


# ---------------------------------------------------------------------------------------
# Encoding


def encode_track(codec_model, bandwidth: float, audio: np.ndarray) -> torch.Tensor:
    """[K, ceil(len(audio) / 320)] codes, as a fresh streaming encoder gives them."""
    encoder = StreamingEncoder(codec_model, bandwidth)
    return torch.cat((encoder.encode(audio), encoder.flush()), dim=-1).cpu()


def build_conversation(codec_model, bandwidth: float, user_audio: np.ndarray, reply_audio: np.ndarray,
                       layout: ConversationLayout) -> Conversation:
    def frames(audio: np.ndarray) -> int:
        return math.ceil(len(audio) / FRAME_SAMPLES)

    def silence(n_frames: int) -> np.ndarray:
        return np.zeros(n_frames * FRAME_SAMPLES, dtype=np.float32)

    def frame_aligned(audio: np.ndarray) -> np.ndarray:
        return np.concatenate((audio.astype(np.float32), silence(frames(audio))[len(audio):]))

    user_frames, reply_frames = frames(user_audio), frames(reply_audio)
    if user_frames == 0 or reply_frames == 0:
        raise ValueError("a training pair has an empty audio file")
    lead, gap, tail = layout.lead_frames, layout.gap_frames, layout.tail_frames
    user_track = np.concatenate((silence(lead), frame_aligned(user_audio), silence(gap + reply_frames + tail)))
    assistant_track = np.concatenate((silence(lead + user_frames + gap), frame_aligned(reply_audio), silence(tail)))
    user_codes = encode_track(codec_model, bandwidth, user_track)
    assistant_codes = encode_track(codec_model, bandwidth, assistant_track)
    return Conversation(user_codes, assistant_codes, reply_start=lead + user_frames + gap, reply_frames=reply_frames)


def _codec_fingerprint(codec_model, bandwidth: float) -> str:
    digest = hashlib.sha1(str(bandwidth).encode())
    for name, tensor in sorted(codec_model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def encode_pairs(pairs: Sequence[Pair], codec_model, bandwidth: float, layout: ConversationLayout,
                 cache_dir: Path | None = None) -> list[Conversation]:
    """Encodes every pair (cached by file, codec and layout when `cache_dir` is given)."""
    fingerprint = _codec_fingerprint(codec_model, bandwidth)
    conversations = []
    for pair in tqdm(pairs, desc="encoding pairs", unit="pair", leave=False):
        key_source = [fingerprint, repr(layout)]
        for path in (pair.user, pair.reply):
            stat = path.stat()
            key_source.append(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
        cached = cache_dir / f"{hashlib.sha1('|'.join(key_source).encode()).hexdigest()}.safetensors" if cache_dir else None
        if cached is not None and cached.is_file():
            tensors = load_file(str(cached))
            conversations.append(Conversation(tensors["user"], tensors["assistant"],
                                              int(tensors["reply_start"]), int(tensors["reply_frames"])))
            continue
        conversation = build_conversation(codec_model, bandwidth, load_audio(pair.user, SAMPLE_RATE),
                                          load_audio(pair.reply, SAMPLE_RATE), layout)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            save_file({"user": conversation.user.contiguous(), "assistant": conversation.assistant.contiguous(),
                       "reply_start": torch.tensor(conversation.reply_start),
                       "reply_frames": torch.tensor(conversation.reply_frames)}, str(cached))
        conversations.append(conversation)
    return conversations


# ---------------------------------------------------------------------------------------
# Batches


def make_batch(conversations: Sequence[Conversation], indices: Sequence[int], pad: int, max_steps: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(user input, assistant input, targets), each [B, K, T]; long conversations are cropped
    to `max_steps` at a random start, short ones padded with ignored targets."""
    examples = []
    for index in indices:
        conversation = conversations[index]
        length = conversation.user.shape[-1]
        # Cropping the delayed streams to the plain length drops only the tail's delayed codes.
        user_in, assistant_in, targets = teacher_forcing(delay(conversation.user, pad)[:, :length],
                                                         delay(conversation.assistant, pad)[:, :length], pad)
        if length > max_steps:
            start = int(torch.randint(0, length - max_steps + 1, (1,), generator=generator))
            user_in, assistant_in, targets = (t[:, start:start + max_steps] for t in (user_in, assistant_in, targets))
        examples.append((user_in, assistant_in, targets))
    longest = max(example[0].shape[-1] for example in examples)

    def padded(tensor: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(tensor, (0, longest - tensor.shape[-1]), value=value)

    return (torch.stack([padded(u, pad) for u, _, _ in examples]),
            torch.stack([padded(a, pad) for _, a, _ in examples]),
            torch.stack([padded(t, IGNORE_INDEX) for _, _, t in examples]))


# ---------------------------------------------------------------------------------------
# Checkpoints


def _checkpoint_dirs(out_dir: Path) -> list[Path]:
    root = out_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / TRAINING_STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step_")))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = _checkpoint_dirs(Path(out_dir))
    return found[-1] if found else None


def save_checkpoint(out_dir: Path, model: SpeechLM, optimizer: torch.optim.Optimizer, step: int, losses: list[float]) -> Path:
    directory = out_dir / "checkpoints" / f"step_{step:07d}"
    partial = directory.with_name(directory.name + ".partial")  # a crash mid-write leaves no half checkpoint
    shutil.rmtree(partial, ignore_errors=True)
    model.save(partial)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "losses": losses}, partial / TRAINING_STATE_FILE)
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    for old in _checkpoint_dirs(out_dir)[:-CHECKPOINTS_KEPT]:
        shutil.rmtree(old)
    return directory


def plot_losses(losses: Sequence[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    steps = np.arange(1, len(losses) + 1)
    axes.plot(steps, losses, alpha=0.35, linewidth=0.8, label="loss")
    window = max(1, len(losses) // 50)
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        axes.plot(steps[window - 1:], smooth, linewidth=1.5, label=f"mean of {window}")
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy (nats)")
    axes.set_title("speech LM training loss")
    if len(losses) and min(losses) > 0:
        axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ---------------------------------------------------------------------------------------
# Training


def learning_rate(step: int, total_steps: int, peak: float) -> float:
    """Linear warm-up over the first 5% of steps, then cosine down to a tenth of the peak."""
    warmup = max(1, total_steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(pairs, out_dir: str | Path, config_name: str = "tiny", steps: int = 2000, lr: float = 1e-3,
          batch_size: int = 8, resume: bool = True, device: str = "cpu", checkpoint_every: int = 250,
          codec=None, codec_checkpoint: str | Path | None = None, layout: ConversationLayout | None = None,
          config: SpeechLMConfig | None = None, max_steps_per_example: int | None = None,
          weight_decay: float = 0.01, seed: int = 0, show_progress: bool = True) -> Path:
    """Trains (or resumes training) a speech LM; returns the directory of the final model.

    codec: an `EncodecModel` (e.g. `random_encodec` for tests); by default the pretrained one
    from `load_encodec(codec_checkpoint)`. Its bandwidth is the config's (K codebooks).
    config: overrides `config_name` with an explicit `SpeechLMConfig`.
    resume: continue from the latest checkpoint in out_dir; False deletes out_dir's checkpoints.
    Resuming with a different `steps` continues the counter but re-plans the learning-rate
    schedule for the new total.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = config or config_by_name(config_name)
    layout = layout or ConversationLayout()
    layout.check(config.n_codebooks)
    if steps < 1 or batch_size < 1 or checkpoint_every < 1:
        raise ValueError("steps, batch_size and checkpoint_every must be positive")
    max_steps_per_example = max_steps_per_example or config.context_frames

    torch.manual_seed(seed)
    model = SpeechLM(config)
    start_step, losses, optimizer_state = 0, [], None
    if not resume:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # a later resume must not find the old run
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is not None:
        saved = SpeechLM.load(checkpoint)
        if saved.config != config:
            raise ValueError(f"{checkpoint} was trained with a different config; pass resume=False or another out_dir")
        model.load_state_dict(saved.state_dict())
        state = torch.load(checkpoint / TRAINING_STATE_FILE, map_location="cpu", weights_only=True)
        start_step, losses, optimizer_state = int(state["step"]), list(state["losses"]), state["optimizer"]
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)

    if start_step < steps:
        conversations = _load_conversations(pairs, config, codec, codec_checkpoint, layout, out_dir / "codes")
        progress = tqdm(total=steps, initial=start_step, desc="training speech LM", unit="step", disable=not show_progress)
        for step in range(start_step, steps):
            # Every step draws from its own seeded RNG, so a resumed run sees the same batches
            # (and dropout) as an uninterrupted one.
            generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
            torch.manual_seed(seed * 1_000_003 + step)
            indices = torch.randint(0, len(conversations), (batch_size,), generator=generator).tolist()
            batch = make_batch(conversations, indices, config.pad_token, max_steps_per_example, generator)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, steps, lr)
            loss = model.loss(*(t.to(device) for t in batch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.4f}")
            done = step + 1
            if done % checkpoint_every == 0 or done == steps:
                save_checkpoint(out_dir, model, optimizer, done, losses)
                plot_losses(losses, out_dir / "loss.png")
        progress.close()

    model.eval()
    plot_losses(losses, out_dir / "loss.png")
    return model.save(out_dir / "model")


def _load_conversations(pairs, config: SpeechLMConfig, codec, codec_checkpoint, layout: ConversationLayout,
                        cache_dir: Path) -> list[Conversation]:
    bandwidth = config.codec_bandwidth_kbps
    if codec is None:
        codec = load_encodec(codec_checkpoint, bandwidth=bandwidth)
    if codec.quantizer.bins != config.cardinality:
        raise ValueError(f"the codec has {codec.quantizer.bins} entries per codebook, the config {config.cardinality}")
    return encode_pairs(read_pairs(pairs), codec, bandwidth, layout, cache_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="voxloop train-native",
                                     description="Train the native speech LM on (user audio, reply audio) pairs.")
    parser.add_argument("pairs", help="a TSV of 'user<TAB>reply' audio paths, or a directory (pairs.tsv, or folders with user.wav and reply.wav)")
    parser.add_argument("out_dir", help="checkpoints, the final model (OUT_DIR/model) and loss.png go here")
    parser.add_argument("--config", default="tiny", help="speech LM size: tiny or production")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--no-resume", action="store_true", help="start afresh, deleting the checkpoints already in OUT_DIR")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--codec-checkpoint", help="a local EnCodec 24 kHz checkpoint (default: the encodec package's cache)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model_dir = train(args.pairs, args.out_dir, config_name=args.config, steps=args.steps, lr=args.lr,
                      batch_size=args.batch_size, resume=not args.no_resume, device=args.device,
                      checkpoint_every=args.checkpoint_every, codec_checkpoint=args.codec_checkpoint, seed=args.seed)
    print(f"speech LM saved to {model_dir}; loss curve in {Path(args.out_dir) / 'loss.png'}")


if __name__ == "__main__":
    main()
