"""A full-duplex speech language model over EnCodec tokens, after Moshi.

Two streams advance together, one codec frame (13.3 ms at 75 frames/s) per step: the user's
and the assistant's, K codebooks each, both in the delay pattern (`delay_pattern.py`). The
input of step t is the sum of 2K embeddings: the user's delayed codes of step t and the
assistant's delayed codes of step t-1 (all pad at t = 0). K heads predict the assistant's
delayed codes of step t. So the model listens while it speaks: each assistant frame is
conditioned on everything the user said up to that same frame, and on its own past.

Attention is causal over a sliding window of `context_frames` steps. Positions are rotary
(RoPE), which are relative, so the window slides for ever: `SpeechLMStream` keeps a ring-
buffer KV cache that never holds more than the window, however long the conversation, and
a full forward pass masks the same band, so training and streaming compute the same thing.

Step time budget: one `SpeechLMStream.step` must take less than the 13.3 ms of audio it
covers, or the assistant falls behind the conversation. `measure_step_time` measures it
(`python -m voxloop.voice.speech_lm`). At batch 1 a step is bound by memory bandwidth: it
reads every weight and the whole KV cache once, so its time grows with the parameter count
and the window. The "production" config (~25 M parameters, 10 s window) is sized for one
core of a 2-core CPU; "tiny" (~1.2 M) is for tests. On a busy small CPU run the model on
one torch thread: a second intra-op thread mostly waits on the first, and when the other
core is taken, a thread that spins waiting for it makes a step many times slower.

Not implemented: Moshi's "inner monologue" (an aligned text-token channel). It needs text
transcripts aligned to codec frames for training, which the training pairs do not carry.
One step always covers one codec frame.

Files: a model directory holds config.json (`SpeechLMConfig`) and model.safetensors.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from voxloop.voice.delay_pattern import DelayLine, UndelayLine
from voxloop.voice.errors import ModelNotFoundError
from voxloop.voice.speech_lm_config import SpeechLMConfig, config_by_name

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
IGNORE_INDEX = -100  # target value cross-entropy skips: delay-pattern pads and batch padding


class RotaryEmbedding:
    """cos/sin tables for absolute positions. Angles are computed in float64 so that a
    conversation hours long (positions in the millions) keeps its relative phases exact."""

    def __init__(self, head_dim: int, base: float):
        self.inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.to(torch.float64)[:, None] * self.inv_freq.to(positions.device)[None, :]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos, sin: [T, D/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class KVCache:
    """Keys and values of the last `window` steps for every layer, in a ring buffer.

    Slot order does not matter to attention (a softmax over a set), so a new step simply
    overwrites the oldest slot; keys are stored already rotated for their own position."""

    def __init__(self, config: SpeechLMConfig, batch_size: int, device: torch.device, dtype: torch.dtype):
        head_dim = config.dim // config.n_heads
        shape = (config.n_layers, 2, batch_size, config.n_heads, config.context_frames, head_dim)
        self.window = config.context_frames
        self.buffer = torch.zeros(shape, device=device, dtype=dtype)
        self.position = 0  # absolute position of the next step

    @property
    def filled(self) -> int:
        return min(self.position, self.window)

    def reset(self) -> None:
        self.position = 0  # stale slots are never read: only the first `filled` are

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's [B, H, 1, D] keys/values; return all valid ones for attention."""
        slot = self.position % self.window
        self.buffer[layer, 0, :, :, slot] = keys[:, :, 0]
        self.buffer[layer, 1, :, :, slot] = values[:, :, 0]
        filled = min(self.position + 1, self.window)
        return self.buffer[layer, 0, :, :, :filled], self.buffer[layer, 1, :, :, :filled]

    def advance(self) -> None:
        self.position += 1


class Attention(nn.Module):
    def __init__(self, config: SpeechLMConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.head_dim = config.dim // config.n_heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.out = nn.Linear(config.dim, config.dim, bias=False)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, length, _ = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, length, _ = x.shape
        return self.out(x.transpose(1, 2).reshape(batch, length, -1))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(x)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        dropout = self.dropout if self.training else 0.0
        return self._merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout))

    def step(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache, layer: int) -> torch.Tensor:
        q, k, v = self._heads(x)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        keys, values = cache.write(layer, k, v)
        # Two small matmuls: with one query, CPU flash attention costs milliseconds here.
        scores = (q @ keys.transpose(-1, -2)) * (self.head_dim ** -0.5)
        return self._merge(scores.softmax(dim=-1) @ values)


class FeedForward(nn.Module):
    """SwiGLU."""

    def __init__(self, config: SpeechLMConfig):
        super().__init__()
        self.gate_and_up = nn.Linear(config.dim, 2 * config.ffn_hidden, bias=False)
        self.down = nn.Linear(config.ffn_hidden, config.dim, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_and_up(x).chunk(2, dim=-1)
        return self.dropout(self.down(F.silu(gate) * up))


class Block(nn.Module):
    def __init__(self, config: SpeechLMConfig):
        super().__init__()
        self.attention_norm = nn.RMSNorm(config.dim)
        self.attention = Attention(config)
        self.feed_forward_norm = nn.RMSNorm(config.dim)
        self.feed_forward = FeedForward(config)

    def forward(self, x, cos, sin, mask):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask)
        return x + self.feed_forward(self.feed_forward_norm(x))

    def step(self, x, cos, sin, cache: KVCache, layer: int):
        x = x + self.attention.step(self.attention_norm(x), cos, sin, cache, layer)
        return x + self.feed_forward(self.feed_forward_norm(x))


def band_mask(length: int, window: int, device: torch.device) -> torch.Tensor:
    """True where step i may attend to step j: j <= i and i - j < window."""
    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    return (j <= i) & (i - j < window)


def teacher_forcing(user_delayed: torch.Tensor, assistant_delayed: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Delayed [..., K, T] streams -> (user input, assistant input, assistant targets).

    The assistant input of step t is its delayed frame of step t-1 (all pad at t = 0), which
    is what `SpeechLMStream` feeds back from its own previous step. Pad targets are ignored."""
    start = torch.full_like(assistant_delayed[..., :1], pad)
    assistant_input = torch.cat((start, assistant_delayed[..., :-1]), dim=-1)
    targets = assistant_delayed.masked_fill(assistant_delayed == pad, IGNORE_INDEX)
    return user_delayed, assistant_input, targets


class SpeechLM(nn.Module):
    def __init__(self, config: SpeechLMConfig):
        super().__init__()
        self.config = config
        k, vocab = config.n_codebooks, config.cardinality + 1  # + the pad token
        # One table for the 2K (stream, codebook) embeddings; row offsets pick the sub-table.
        self.embedding = nn.Embedding(2 * k * vocab, config.dim)
        self.register_buffer("table_offsets", torch.arange(2 * k) * vocab, persistent=False)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.out_norm = nn.RMSNorm(config.dim)
        self.heads = nn.Linear(config.dim, k * config.cardinality, bias=False)  # K heads in one matmul
        self.rotary = RotaryEmbedding(config.dim // config.n_heads, config.rope_base)
        self._init_weights()

    def _init_weights(self) -> None:
        for name, param in self.named_parameters():
            if param.dim() < 2:
                continue
            std = 0.02
            if name.endswith(("attention.out.weight", "feed_forward.down.weight")):
                std /= math.sqrt(2 * self.config.n_layers)  # keeps the residual stream's scale
            nn.init.normal_(param, std=std)

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _embed(self, user: torch.Tensor, assistant: torch.Tensor) -> torch.Tensor:
        """[B, K, T] + [B, K, T] token ids -> [B, T, dim]."""
        tokens = torch.cat((user, assistant), dim=1) + self.table_offsets[None, :, None]
        return self.embedding(tokens).sum(dim=1)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden.shape
        logits = self.heads(self.out_norm(hidden))
        return logits.view(batch, length, self.config.n_codebooks, self.config.cardinality)

    def _check_tokens(self, tokens: torch.Tensor, name: str) -> None:
        k = self.config.n_codebooks
        if tokens.dim() != 3 or tokens.shape[1] != k:
            raise ValueError(f"{name} must be [batch, {k}, steps], got {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() > self.config.pad_token):
            raise ValueError(f"{name} holds tokens outside 0..{self.config.pad_token}")

    def forward(self, user_delayed: torch.Tensor, assistant_input: torch.Tensor) -> torch.Tensor:
        """Causal pass over whole sequences: [B, K, T] each -> logits [B, T, K, cardinality]."""
        self._check_tokens(user_delayed, "user_delayed")
        self._check_tokens(assistant_input, "assistant_input")
        if user_delayed.shape != assistant_input.shape:
            raise ValueError(f"streams differ in shape: {tuple(user_delayed.shape)} vs {tuple(assistant_input.shape)}")
        length = user_delayed.shape[-1]
        x = self._embed(user_delayed, assistant_input)
        cos, sin = self.rotary.cos_sin(torch.arange(length, device=x.device), x.dtype)
        mask = band_mask(length, self.config.context_frames, x.device)
        for block in self.blocks:
            x = block(x, cos, sin, mask)
        return self._logits(x)

    def loss(self, user_input: torch.Tensor, assistant_input: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the assistant's non-ignored delayed codes; targets [B, K, T]."""
        logits = self(user_input, assistant_input)
        return F.cross_entropy(logits.reshape(-1, self.config.cardinality), targets.transpose(1, 2).reshape(-1),
                               ignore_index=IGNORE_INDEX)

    def new_cache(self, batch_size: int = 1) -> KVCache:
        return KVCache(self.config, batch_size, self.device, self.embedding.weight.dtype)

    def step_logits(self, user_delayed: torch.Tensor, assistant_input: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One step for [B, K] delayed tokens -> [B, K, cardinality], extending `cache`."""
        x = self._embed(user_delayed[:, :, None], assistant_input[:, :, None])
        position = torch.tensor([cache.position], device=x.device)
        cos, sin = self.rotary.cos_sin(position, x.dtype)
        for layer, block in enumerate(self.blocks):
            x = block.step(x, cos, sin, cache, layer)
        cache.advance()
        return self._logits(x)[:, 0]

    def stream(self, sampling: SamplingSettings | None = None, seed: int | None = None) -> SpeechLMStream:
        return SpeechLMStream(self, sampling or SamplingSettings(), seed)

    def save(self, path: str | Path) -> Path:
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_FILE)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        return directory

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> SpeechLM:
        directory = Path(path).expanduser()
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise ModelNotFoundError(f"speech LM {directory} has no {name}; train one with `voxloop train-native` "
                                         f"or pass the directory that holds {CONFIG_FILE} and {WEIGHTS_FILE}")
        model = cls(SpeechLMConfig.load(directory / CONFIG_FILE))
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=True)
        return model.to(device).eval()


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.8  # 0: greedy
    top_k: int = 250  # 0: off
    top_p: float = 0.0  # 0 or 1: off


def sample_codes(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None = None) -> torch.Tensor:
    """[..., V] logits -> [...] token ids."""
    if settings.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / settings.temperature
    if 0 < settings.top_k < logits.shape[-1]:
        kth_best = logits.topk(settings.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if 0 < settings.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= settings.top_p, float("-inf"))  # keeps the best
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


class SpeechLMStream:
    """One conversation's running state: KV cache, delay lines, the assistant's last step.

    Callers deal in plain codec frames: `step` takes the user's K codes of one frame and,
    once the delay pattern has filled (after K-1 steps), returns the assistant's K codes of
    one frame, K-1 frames behind the input. Not thread-safe: one stream, one thread."""

    def __init__(self, model: SpeechLM, sampling: SamplingSettings, seed: int | None = None):
        config = model.config
        self.model = model
        self.sampling = sampling
        self.n_codebooks = config.n_codebooks
        self.cardinality = config.cardinality
        self.pad = config.pad_token
        device = model.device
        self._generator = torch.Generator(device=device)
        if seed is None:
            self._generator.seed()  # a fresh generator's default seed is the same in every stream
        else:
            self._generator.manual_seed(seed)
        self._codebooks = torch.arange(config.n_codebooks, device=device)
        self._user_delay = DelayLine(config.n_codebooks, self.pad, device)
        self._assistant_undelay = UndelayLine(config.n_codebooks, self.pad, device)
        self._cache = model.new_cache(batch_size=1)
        self._assistant_previous = torch.full((config.n_codebooks,), self.pad, dtype=torch.long, device=device)

    @property
    def delay_frames(self) -> int:
        return self.n_codebooks - 1

    @property
    def steps(self) -> int:
        return self._cache.position

    def reset(self) -> None:
        self._user_delay.reset()
        self._assistant_undelay.reset()
        self._cache.reset()
        self._assistant_previous = torch.full_like(self._assistant_previous, self.pad)

    @torch.inference_mode()
    def step(self, user_codes_frame: torch.Tensor) -> torch.Tensor | None:
        frame = torch.as_tensor(user_codes_frame)
        if frame.shape != (self.n_codebooks,) or frame.dtype.is_floating_point or frame.dtype == torch.bool:
            raise ValueError(f"a user frame must be {self.n_codebooks} integer codes, got {frame.dtype} of shape {tuple(frame.shape)}")
        if frame.min() < 0 or frame.max() >= self.cardinality:
            raise ValueError(f"user codes must lie in 0..{self.cardinality - 1}")
        user_delayed = self._user_delay.push(frame.to(self._codebooks.device, torch.long))
        logits = self.model.step_logits(user_delayed[None], self._assistant_previous[None], self._cache)[0]
        assistant_delayed = sample_codes(logits, self.sampling, self._generator)
        # In the delay pattern codebook k has nothing to say during the stream's first k steps.
        assistant_delayed = assistant_delayed.masked_fill(self._codebooks >= self._cache.position, self.pad)
        self._assistant_previous = assistant_delayed
        plain = self._assistant_undelay.push(assistant_delayed)
        return None if plain is None else plain.cpu()


def measure_step_time(config: SpeechLMConfig | str, steps: int = 200, warmup: int = 20, device: str = "cpu",
                      threads: int | None = None, seed: int = 0) -> dict:
    """Time `SpeechLMStream.step` (sampling included) on a random-weight model, batch 1, with
    the attention window full (a conversation longer than `context_frames`).

    real_time_factor is median step time over the 13.3 ms of audio a step covers: below 1
    keeps up with the conversation."""
    if isinstance(config, str):
        config = config_by_name(config)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model = SpeechLM(config).to(device).eval()
        stream = model.stream(SamplingSettings(), seed=seed)
        # Time the steady state of a long conversation: a full attention window. Only the
        # positions matter for the cost, not what the slots hold.
        stream._cache.position = config.context_frames
        frames = torch.randint(0, config.cardinality, (warmup + steps, config.n_codebooks))
        times_ms, cpu_times_ms = [], []
        for index, frame in enumerate(frames):
            started, cpu_started = time.perf_counter(), time.process_time()
            stream.step(frame)  # returns on the CPU, so a GPU step is synchronised too
            if index >= warmup:
                times_ms.append((time.perf_counter() - started) * 1000)
                cpu_times_ms.append((time.process_time() - cpu_started) * 1000)
    finally:
        torch.set_num_threads(previous_threads)
    times_ms.sort()
    median = statistics.median(times_ms)
    return {
        "parameters": model.parameter_count(),
        "device": str(device),
        "threads": threads or previous_threads,
        "steps": steps,
        "median_ms": median,
        "p95_ms": times_ms[min(len(times_ms) - 1, int(0.95 * len(times_ms)))],
        # CPU seconds the process spent per step (all threads). On a machine busy with other
        # work the wall time above includes waiting for a core; this does not.
        "cpu_median_ms": statistics.median(cpu_times_ms),
        "budget_ms": config.step_budget_ms,
        "real_time_factor": median / config.step_budget_ms,
    }


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Measure the speech LM's streaming step time.")
    parser.add_argument("configs", nargs="*", default=["tiny", "production"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    for name in args.configs:
        result = measure_step_time(name, steps=args.steps, threads=args.threads, device=args.device)
        print(f"{name}: {result['parameters'] / 1e6:.2f} M params, median {result['median_ms']:.2f} ms, "
              f"p95 {result['p95_ms']:.2f} ms, CPU time {result['cpu_median_ms']:.2f} ms, "
              f"real-time factor {result['real_time_factor']:.2f} "
              f"({result['device']}, {result['threads']} threads)")


if __name__ == "__main__":
    main()
