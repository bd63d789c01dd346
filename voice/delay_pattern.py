"""The delay pattern over a codec frame's K codebooks (MusicGen's "delay" interleaving).

Codebook k is shifted k steps later in time, so at step t the model emits codebook 0 of
frame t, codebook 1 of frame t-1, ..., codebook K-1 of frame t-K+1. All K codes of one step
come out of K parallel heads in one transformer step, yet each finer codebook of a frame is
predicted after the coarser ones of that frame were already seen. Positions with no code
(the first k steps of codebook k, the last K-1-k of it in a finite sequence) hold `pad`.

Why a delay pattern and not Moshi's depth transformer or flat interleaving: this has to run
in real time on a 2-core CPU at EnCodec's 75 frames/s, 13.3 ms of audio per step. Measured
transformer step times on 2 threads, batch 1, are about 2 ms at 7 M parameters, 10 ms at
34 M and 24 ms at 98 M, so real time allows roughly 30 M parameters with parallel (delayed)
codebook heads. Flattening the K codebooks into one token stream needs K transformer steps
per frame and cannot keep up; a depth transformer adds K extra small steps per frame. The
price of the delay pattern is K-1 frames of extra output latency.

`delay` / `undelay` work on whole sequences (training); `DelayLine` / `UndelayLine` do the
same one frame at a time (streaming), and agree with the whole-sequence versions.
"""

from __future__ import annotations

import torch


def delay(codes: torch.Tensor, pad: int) -> torch.Tensor:
    """[..., K, T] plain codes -> [..., K, T + K - 1] with codebook k starting k steps late."""
    if codes.dim() < 2:
        raise ValueError(f"codes must be [..., K, T], got shape {tuple(codes.shape)}")
    n_codebooks, length = codes.shape[-2], codes.shape[-1]
    delayed = codes.new_full((*codes.shape[:-1], length + n_codebooks - 1), pad)
    for k in range(n_codebooks):
        delayed[..., k, k:k + length] = codes[..., k, :]
    return delayed


def undelay(delayed: torch.Tensor) -> torch.Tensor:
    """Inverse of `delay`: [..., K, T + K - 1] -> [..., K, T]."""
    if delayed.dim() < 2:
        raise ValueError(f"delayed codes must be [..., K, T], got shape {tuple(delayed.shape)}")
    n_codebooks = delayed.shape[-2]
    length = delayed.shape[-1] - (n_codebooks - 1)
    if length < 0:
        raise ValueError(f"a delayed sequence over {n_codebooks} codebooks needs at least {n_codebooks - 1} steps, got {delayed.shape[-1]}")
    return torch.stack([delayed[..., k, k:k + length] for k in range(n_codebooks)], dim=-2)


class DelayLine:
    """Plain frames in, delayed frames out, one step at a time: step t gives `delay(...)[:, t]`."""

    def __init__(self, n_codebooks: int, pad: int, device: torch.device | str = "cpu"):
        self.n_codebooks = n_codebooks
        self.pad = pad
        self._index = torch.arange(n_codebooks, device=device)
        self._history = torch.full((n_codebooks, n_codebooks), pad, dtype=torch.long, device=device)  # row j: frame t-j

    def reset(self) -> None:
        self._history = torch.full_like(self._history, self.pad)  # new tensor: the old may be an inference tensor

    def push(self, frame: torch.Tensor) -> torch.Tensor:
        self._history = torch.roll(self._history, 1, dims=0)
        self._history[0] = frame
        return self._history[self._index, self._index].clone()  # codebook k from frame t-k


class UndelayLine:
    """Delayed frames in, plain frames out: None for the first K-1 steps, then frame t-K+1."""

    def __init__(self, n_codebooks: int, pad: int, device: torch.device | str = "cpu"):
        self.n_codebooks = n_codebooks
        self.pad = pad
        self._index = torch.arange(n_codebooks, device=device)
        self._history = torch.full((n_codebooks, n_codebooks), pad, dtype=torch.long, device=device)  # row j: step t-j
        self._steps = 0

    def reset(self) -> None:
        self._history = torch.full_like(self._history, self.pad)  # new tensor: the old may be an inference tensor
        self._steps = 0

    def push(self, delayed_frame: torch.Tensor) -> torch.Tensor | None:
        self._history = torch.roll(self._history, 1, dims=0)
        self._history[0] = delayed_frame
        self._steps += 1
        if self._steps < self.n_codebooks:
            return None
        # Codebook k of frame t-K+1 was emitted at step t-K+1+k, which is row K-1-k.
        return self._history[self.n_codebooks - 1 - self._index, self._index].clone()
