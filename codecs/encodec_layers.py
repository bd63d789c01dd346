"""Stateful, chunk-by-chunk versions of the SEANet layers of a causal EnCodec model.

The `encodec` package runs its encoder and decoder on a whole signal: each `SConv1d` pads
its input on the left (reflect) and right (so that the last window is full) on every call,
and each `SLSTM` starts from a zero state and drops it afterwards. Called on consecutive
chunks, that would restart every layer at every chunk.

Here each layer is rebuilt from the model's own modules and weights, and keeps what the
next chunk needs:

- a causal convolution keeps the last `(kernel - 1) * dilation - (stride - 1)` input
  samples (its left context) plus any samples that do not yet fill a stride;
- a causal transposed convolution keeps its overlap tail, the last `kernel - stride` output
  samples of the chunk, without bias, to add to the start of the next chunk's output (the
  bias is added once, when a sample is emitted);
- an LSTM keeps its `(h, c)` state.

What a convolution sees before the first sample is the stack's `start`:

- "silence": zeros, so every layer answers at once; differs from the offline model near
  the start (the package reflects the signal there);
- "reflect": the signal's first samples mirrored, exactly as `SConv1d` pads offline, so the
  stream equals the offline model from the first sample; each convolution first waits for
  the `left_context + 1` input samples it mirrors.

Weights are read once, when a stack is built (weight norm folded in), so a stack follows the
weights its model had at that moment; only the LSTMs' long-chunk path calls the model's own
`nn.LSTM`. Build a new stream after changing a model's weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from encodec.modules.conv import SConv1d, SConvTranspose1d
from encodec.modules.lstm import SLSTM
from encodec.modules.seanet import SEANetResnetBlock
from torch import nn
from torch.nn.utils.weight_norm import WeightNorm

# Layers without parameters or memory that act on each time step alone.
_POINTWISE = (nn.ELU, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Identity)

Start = Literal["silence", "reflect"]
STARTS = ("silence", "reflect")


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight a conv module uses in its forward, with weight norm applied.

    The package wraps convs with the old hook-based `weight_norm`, whose `.weight` attribute is
    only refreshed by a forward call (stale right after `load_state_dict`), so it is computed here.
    """
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm):
            return hook.compute_weight(module).detach().clone()
    return module.weight.detach().clone()


def _empty_like_time(x: torch.Tensor, channels: int) -> torch.Tensor:
    return x.new_zeros((x.shape[0], channels, 0))


class StreamingLayer:
    """One layer that takes `[1, channels, time]` chunks (one stream) and remembers what it needs."""

    def step(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget everything: the next chunk is the start of a new stream."""


class PointwiseLayer(StreamingLayer):
    def __init__(self, module: nn.Module):
        self.module = module

    def step(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class StreamingConv1d(StreamingLayer):
    """A causal `SConv1d` fed chunk by chunk."""

    def __init__(self, module: SConv1d, start: Start = "silence"):
        if not module.causal:
            raise ValueError("only causal convolutions can stream (the 24 kHz EnCodec model is causal, the 48 kHz one is not)")
        if module.pad_mode != "reflect" and start == "reflect":
            raise ValueError(f"this convolution pads with {module.pad_mode!r}, so a 'reflect' start would not match it")
        if not isinstance(module.conv.norm, nn.Identity):
            raise ValueError(f"cannot stream a convolution followed by {type(module.conv.norm).__name__}: it normalises over the whole signal")
        conv: nn.Conv1d = module.conv.conv
        self.weight = effective_weight(conv)
        self.bias = None if conv.bias is None else conv.bias.detach().clone()
        self.stride = conv.stride[0]
        self.dilation = conv.dilation[0]
        self.groups = conv.groups
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.span = (conv.kernel_size[0] - 1) * self.dilation + 1
        # The same left padding SConv1d puts before the signal, so output j sees inputs up to (j + 1) * stride - 1.
        self.left_context = self.span - self.stride
        self.start = start
        self.reset()

    def reset(self) -> None:
        if self.start == "silence" or self.left_context == 0:
            self._pending = self.weight.new_zeros((1, self.in_channels, self.left_context))
            self._padded = True
        else:
            self._pending = self.weight.new_zeros((1, self.in_channels, 0))
            self._padded = False

    def step(self, x: torch.Tensor) -> torch.Tensor:
        buffer = torch.cat([self._pending, x], dim=-1) if self._pending.shape[-1] else x
        if not self._padded:
            if buffer.shape[-1] <= self.left_context:
                self._pending = buffer
                return _empty_like_time(x, self.out_channels)
            mirrored = buffer[..., 1:self.left_context + 1].flip(-1)
            buffer = torch.cat([mirrored, buffer], dim=-1)
            self._padded = True
        available = buffer.shape[-1]
        if available < self.span:
            self._pending = buffer
            return _empty_like_time(x, self.out_channels)
        n_out = (available - self.span) // self.stride + 1
        used = (n_out - 1) * self.stride + self.span
        y = F.conv1d(buffer[..., :used], self.weight, self.bias, stride=self.stride, dilation=self.dilation, groups=self.groups)
        self._pending = buffer[..., n_out * self.stride:]
        return y


class StreamingConvTranspose1d(StreamingLayer):
    """A causal `SConvTranspose1d` (all padding trimmed on the right) fed chunk by chunk.

    Each input step spreads `kernel` output samples, `stride` apart per step, so the output is
    cut into blocks of `stride` samples: block `b` sums what steps `b`, `b - 1`, ... put
    there. Run as one matrix product per chunk plus that sum (CPU `conv_transpose1d` is
    several times slower for these shapes). The blocks still owed to by the chunk's last
    steps are the overlap tail, carried without bias to the next chunk; `SConvTranspose1d`
    trims exactly those `kernel - stride` samples off the right of a whole signal.
    """

    def __init__(self, module: SConvTranspose1d):
        if not module.causal or module.trim_right_ratio != 1.0:
            raise ValueError("only causal transposed convolutions that trim all their padding on the right can stream")
        if not isinstance(module.convtr.norm, nn.Identity):
            raise ValueError(f"cannot stream a transposed convolution followed by {type(module.convtr.norm).__name__}")
        convtr: nn.ConvTranspose1d = module.convtr.convtr
        if convtr.dilation[0] != 1 or convtr.groups != 1 or convtr.output_padding[0] != 0 or convtr.padding[0] != 0:
            raise ValueError("only plain transposed convolutions (no dilation, groups or padding) can stream")
        weight = effective_weight(convtr)  # [in, out, kernel]
        self.stride = convtr.stride[0]
        self.out_channels = convtr.out_channels
        kernel = convtr.kernel_size[0]
        self.blocks_per_step = -(-kernel // self.stride)
        padded = F.pad(weight, (0, self.blocks_per_step * self.stride - kernel))
        self.matrix = padded.reshape(convtr.in_channels, -1).contiguous()  # [in, out * blocks * stride]
        self.bias = None if convtr.bias is None else convtr.bias.detach().clone()[:, None, None]
        self.reset()

    def reset(self) -> None:
        # Blocks 1 .. blocks_per_step - 1 after the last step given, [out, blocks, stride].
        self._tail = self.matrix.new_zeros((self.out_channels, self.blocks_per_step - 1, self.stride))

    def step(self, x: torch.Tensor) -> torch.Tensor:
        n_in = x.shape[-1]
        if n_in == 0:
            return _empty_like_time(x, self.out_channels)
        spread = (x[0].T @ self.matrix).view(n_in, self.out_channels, self.blocks_per_step, self.stride)
        blocks = spread.new_zeros((self.out_channels, n_in + self.blocks_per_step - 1, self.stride))
        for offset in range(self.blocks_per_step):
            blocks[:, offset:offset + n_in] += spread[:, :, offset].transpose(0, 1)
        blocks[:, :self.blocks_per_step - 1] += self._tail
        self._tail = blocks[:, n_in:].clone()
        emitted = blocks[:, :n_in]
        if self.bias is not None:
            emitted = emitted + self.bias
        return emitted.reshape(1, self.out_channels, n_in * self.stride)


class StreamingLSTM(StreamingLayer):
    """An `SLSTM` (LSTM over time, with the skip connection) that keeps its state between chunks.

    For a few steps `torch.lstm` costs several times the arithmetic on CPU (about 8 ms for a
    single 13 ms frame, against 0.5 ms here), so short chunks run the recurrence step by step
    on the module's own weights; long chunks go to `torch.lstm`, as offline.
    """

    short_chunk_steps = 8

    def __init__(self, module: SLSTM):
        self.lstm: nn.LSTM = module.lstm
        if self.lstm.bidirectional or self.lstm.proj_size or not self.lstm.bias or self.lstm.batch_first:
            raise ValueError("only a plain unidirectional LSTM with biases can stream")
        self.skip = module.skip
        self.layer_weights = [
            (getattr(self.lstm, f"weight_ih_l{k}").detach().T.contiguous(),
             getattr(self.lstm, f"weight_hh_l{k}").detach().T.contiguous(),
             (getattr(self.lstm, f"bias_ih_l{k}") + getattr(self.lstm, f"bias_hh_l{k}")).detach())
            for k in range(self.lstm.num_layers)
        ]
        self.reset()

    def reset(self) -> None:
        hidden = self.lstm.hidden_size
        zeros = self.layer_weights[0][0].new_zeros((self.lstm.num_layers, 1, hidden))
        self._h, self._c = zeros, zeros.clone()

    def step(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == 0:
            return x
        sequence = x.permute(2, 0, 1)  # [time, 1, channels]
        if sequence.shape[0] > self.short_chunk_steps:
            y, (self._h, self._c) = self.lstm(sequence, (self._h, self._c))
        else:
            y = self._recur(sequence[:, 0])[:, None]
        if self.skip:
            y = y + sequence
        return y.permute(1, 2, 0)

    def _recur(self, inputs: torch.Tensor) -> torch.Tensor:
        """`inputs` [time, channels] through every layer, gates in torch's order (input, forget, cell, output)."""
        hs, cs = [], []
        for k, (w_input, w_hidden, bias) in enumerate(self.layer_weights):
            projected = torch.addmm(bias, inputs, w_input)  # all time steps at once
            h, c = self._h[k], self._c[k]
            outputs = []
            for t in range(projected.shape[0]):
                gates = torch.addmm(projected[t:t + 1], h, w_hidden)
                input_gate, forget_gate, cell_gate, output_gate = gates.chunk(4, dim=1)
                c = torch.sigmoid(forget_gate) * c + torch.sigmoid(input_gate) * torch.tanh(cell_gate)
                h = torch.sigmoid(output_gate) * torch.tanh(c)
                outputs.append(h)
            hs.append(h)
            cs.append(c)
            inputs = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        self._h, self._c = torch.stack(hs), torch.stack(cs)
        return inputs


class StreamingResnetBlock(StreamingLayer):
    """A `SEANetResnetBlock`: the residual branch and the shortcut, summed step by step.

    With a "reflect" start the branch (kernel 3) waits for more samples than the shortcut
    (kernel 1), so whichever is ahead is held until the other catches up.
    """

    def __init__(self, module: SEANetResnetBlock, start: Start = "silence"):
        self.block = StreamingStack.from_modules(module.block, start)
        self.shortcut = StreamingStack.from_modules([module.shortcut], start)
        self.reset()

    def reset(self) -> None:
        self.block.reset()
        self.shortcut.reset()
        self._branch_ahead: torch.Tensor | None = None
        self._skip_ahead: torch.Tensor | None = None

    def step(self, x: torch.Tensor) -> torch.Tensor:
        branch = _prepend(self._branch_ahead, self.block.step(x))
        skip = _prepend(self._skip_ahead, self.shortcut.step(x))
        n = min(branch.shape[-1], skip.shape[-1])
        self._branch_ahead = branch[..., n:] if branch.shape[-1] > n else None
        self._skip_ahead = skip[..., n:] if skip.shape[-1] > n else None
        return skip[..., :n] + branch[..., :n]


def _prepend(held: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return x if held is None else torch.cat([held, x], dim=-1)


class StreamingStack(StreamingLayer):
    """Layers applied in order; a chunk too short to produce output stops early (its samples are kept)."""

    def __init__(self, layers: Sequence[StreamingLayer]):
        self.layers = list(layers)

    @classmethod
    def from_modules(cls, modules: Sequence[nn.Module], start: Start = "silence") -> StreamingStack:
        if start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {start!r}")
        return cls([streaming_layer(module, start) for module in modules])

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def step(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if x.shape[-1] == 0:
                # Nothing reaches the later layers, but they must still report their channel count.
                return _empty_like_time(x, self.output_channels(x.shape[1]))
            x = layer.step(x)
        return x

    def output_channels(self, input_channels: int) -> int:
        channels = input_channels
        for layer in self.layers:
            channels = getattr(layer, "out_channels", channels)
        return channels


def streaming_layer(module: nn.Module, start: Start = "silence") -> StreamingLayer:
    if isinstance(module, SConv1d):
        return StreamingConv1d(module, start)
    if isinstance(module, SConvTranspose1d):
        return StreamingConvTranspose1d(module)
    if isinstance(module, SLSTM):
        return StreamingLSTM(module)
    if isinstance(module, SEANetResnetBlock):
        return StreamingResnetBlock(module, start)
    if isinstance(module, _POINTWISE):
        return PointwiseLayer(module)
    raise TypeError(f"no streaming version of {type(module).__name__}")
