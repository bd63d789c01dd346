"""Streaming EnCodec 24 kHz: pcm chunks in -> code frames out, code frames in -> pcm out.

The `encodec` package only runs whole signals (see `encodec_layers`). Here the encoder and
the decoder are walked layer by layer with state carried between calls, so each sample is
encoded once and each code frame decoded once, whatever the chunk sizes: no overlapping
windows are re-encoded. Encoding and decoding are separate streams (`StreamingEncoder`,
`StreamingDecoder`), since a server encodes the user while it decodes the assistant;
`StreamingEncodec` bundles one of each.

Frames and latency. One code frame covers `FRAME_SAMPLES` = 320 samples (13.33 ms, 75 frames
per second). With the default `start="silence"`, after `n` samples in total the encoder has
returned exactly `n // 320` frames: frame `t` comes out in the call that brings sample
`320 * (t + 1) - 1`, because every layer is causal. The decoder returns `320 * T` samples
for `T` frames, in the same call; it holds back only the overlap tails of its transposed
convolutions (added into the next frames' samples), as the offline decoder trims them.

Equality with the offline model, and the start edge. The package pads every causal
convolution at the start of a signal by *reflecting* the signal's first samples (`SConv1d`,
pad_mode "reflect"). A stream cannot do that without waiting: the encoder's last
convolution and the decoder's first have kernel 7 at the frame rate, so reflecting needs 6
frames from the future. Two choices, the `start` argument:

- "silence" (default): the time before the first sample is zeros in every convolution's
  left context. No waiting. Outputs whose receptive field reaches the padding differ from
  the offline model: through the convolutions alone, the first 6 frames (and a few samples
  of the next); the LSTMs (encoder and decoder each have one) carry a fading remainder
  beyond that. Measured with
  `random_encodec` seeds 0 and 1 on two speech clips: codes identical to offline from
  frame 6 at the latest; decoded audio within about 1e-2 of the peak from frame 8 and
  within 1e-4 from frames 19 to 32 (the decoder's LSTM forgets some 20-30% a frame). Trained
  weights may remember longer, and then the remainder fades more slowly; it is a decoding
  of the same codes as if silence had preceded them, not an error.
- "reflect": each convolution mirrors its first samples exactly as offline, so the stream
  equals the offline model from the first frame, up to float rounding (measured: codes
  identical; audio within about 2e-6 of the peak). The price is one wait at the start: the
  encoder returns nothing until frame 6 is complete (93 ms of audio), then frames 0 to 6
  together; the decoder returns no audio until it has 7 frames. After that both are as
  prompt as with "silence".

Either way the chunking does not matter: a stream's output is a function of its whole
input, not of how it was cut. At the end, `model.encode` pads a last partial frame (reflecting
again); a stream returns only completed frames, and `StreamingEncoder.flush` completes the
partial one with zeros.

Cost (`measure_streaming_cost`, random weights, 2-core shared CPU): per 80 ms chunk about
11 ms to encode and 10 ms to decode with 2 threads, 14 and 12 ms with 1; per single frame
about 5 and 4 ms with 1 thread (per-call overhead of ~40 small ops). Two intra-op threads
gain little on these small ops and stall badly (hundreds of ms) when another process holds
a core, so one thread per stream is the safer setting on a shared machine.

Weights. `load_encodec` loads the published checkpoint (downloaded once by the package into
the torch hub cache) or a local file, and raises `ModelNotFoundError` when neither is there;
it never falls back to random weights. `random_encodec` is for tests and timing only.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from encodec import EncodecModel
from torch import nn

from voxloop.codecs.encodec_layers import Start, StreamingStack
from voxloop.voice.errors import ModelNotFoundError

SAMPLE_RATE = 24000
FRAME_SAMPLES = 320  # one codec frame = 13.33 ms at 24 kHz (75 frames/s)
FRAME_RATE = SAMPLE_RATE // FRAME_SAMPLES

OFFICIAL_CHECKPOINT = "encodec_24khz-d7cc33bc.th"
OFFICIAL_URL = f"https://dl.fbaipublicfiles.com/encodec/v0/{OFFICIAL_CHECKPOINT}"
BANDWIDTHS = (1.5, 3.0, 6.0, 12.0, 24.0)  # kbps; each 1.5 kbps is two codebooks of 10 bits at 75 Hz


def _check_bandwidth(bandwidth: float, allowed=BANDWIDTHS) -> None:
    if bandwidth not in allowed:
        raise ValueError(f"EnCodec 24 kHz has no bandwidth {bandwidth!r} kbps; choose one of {list(allowed)}")


def load_encodec(checkpoint: str | Path | None = None, bandwidth: float = 1.5, device: str = "cpu",
                 download_timeout_s: float = 20.0) -> EncodecModel:
    """The pretrained EnCodec 24 kHz model, ready for `bandwidth` kbps.

    checkpoint=None: the encodec package's own loader, which takes the torch hub cache or
    downloads `OFFICIAL_URL` into it; each network wait is bounded by `download_timeout_s`.
    A path: a local checkpoint, the state dict as published (.th/.pt) or as .safetensors;
    a directory is searched for the published file name.
    Missing or unreachable weights raise `ModelNotFoundError`, naming both ways to get them.
    """
    _check_bandwidth(bandwidth)
    if checkpoint is None:
        model = _load_published(download_timeout_s)
    else:
        model = _load_local(Path(checkpoint).expanduser())
    model.set_target_bandwidth(bandwidth)
    return model.to(device).eval()


def _build_24khz(pretrained: bool) -> EncodecModel:
    with warnings.catch_warnings():
        # The package wraps its convolutions with torch's deprecated hook-based weight norm; nothing to act on here.
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        return EncodecModel.encodec_model_24khz(pretrained=pretrained)


def _how_to_get_weights() -> str:
    return (f"Either let the encodec package download {OFFICIAL_URL} once (it is cached in "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'}), or download that file yourself and pass its path: "
            f"load_encodec('/path/to/{OFFICIAL_CHECKPOINT}') (a .th/.pt state dict as published, or .safetensors).")


def _load_published(download_timeout_s: float) -> EncodecModel:
    # torch.hub opens the URL without a timeout; the process default bounds each connect and read.
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(download_timeout_s)
    try:
        return _build_24khz(pretrained=True)
    except OSError as error:  # URLError, HTTPError, timeouts, refused connections, unwritable cache
        raise ModelNotFoundError(f"EnCodec 24 kHz weights are not available: getting {OFFICIAL_URL} failed "
                                 f"({error}). {_how_to_get_weights()}") from error
    finally:
        socket.setdefaulttimeout(previous_timeout)


def _load_local(path: Path) -> EncodecModel:
    if path.is_dir():
        path = path / OFFICIAL_CHECKPOINT
    if not path.is_file():
        raise ModelNotFoundError(f"EnCodec 24 kHz checkpoint {path} does not exist. {_how_to_get_weights()}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state_dict = load_file(str(path), device="cpu")
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many kinds for a file that is not theirs
        raise ValueError(f"cannot read {path} as a checkpoint: {error}") from error
    model = _build_24khz(pretrained=False)
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not an EnCodec 24 kHz state dict: {error}") from None
    model.name = "encodec_24khz"
    return model.eval()


def random_encodec(seed: int = 0, bandwidth: float = 1.5) -> EncodecModel:
    """A randomly initialised 24 kHz model whose codes follow its input, for tests and timing.

    Two things of `encodec_model_24khz(pretrained=False)` are changed, both seeded:

    - Every codebook is left at zero there (they are meant to be filled by k-means on the
      first training batch), so every code would be 0. Here each residual stage's codebook
      is Gaussian around that stage's residuals on a synthetic calibration signal.
    - torch's default init shrinks the signal at every layer until the encoder's output is a
      constant set by the biases with ripples a thousand times smaller; codes then hinge on
      float rounding (near-ties between codebook entries), so no two correct
      implementations would agree. Here convolutions are drawn to keep the signal's size
      (He init through weight norm, zero bias), and the decoder's last convolution is scaled
      so decoded audio has speech-like loudness.

    The global torch RNG is left as it was.
    """
    _check_bandwidth(bandwidth)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build_24khz(pretrained=False)
    with torch.no_grad():
        _keep_signal_scale(model, generator)
        embedding = model.encoder(_calibration_signal(generator))
        _randomise_codebooks(model, embedding, generator)
        _scale_decoder_output(model, embedding, target_rms=0.1)
    model.set_target_bandwidth(bandwidth)
    return model.eval()


def _keep_signal_scale(model: EncodecModel, generator: torch.Generator) -> None:
    for module in model.modules():
        if not isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            continue
        direction = module.weight_v
        direction.copy_(torch.randn(direction.shape, generator=generator))
        # weight = g * v / |v|, the norm taken per output channel (Conv1d) or per input channel
        # (ConvTranspose1d, whose weight is [in, out, kernel]); He init gives each output
        # variance 2 * (inputs summed) * var(weight) = 2 * var(input) after ELU.
        if isinstance(module, nn.ConvTranspose1d):
            norm = math.sqrt(2.0 * module.stride[0] * module.out_channels / module.in_channels)
        else:
            norm = math.sqrt(2.0)
        module.weight_g.fill_(norm)
        if module.bias is not None:
            module.bias.zero_()


def _calibration_signal(generator: torch.Generator, seconds: float = 2.0) -> torch.Tensor:
    """Noise and tones whose loudness jumps every 40 ms over 60 dB, so the embeddings spread out."""
    n = int(seconds * SAMPLE_RATE)
    segment = 960
    n_segments = math.ceil(n / segment)
    loudness = 10 ** (torch.rand(n_segments, generator=generator) * 3 - 3.3)
    pitch = 80 + torch.rand(n_segments, generator=generator) * 3000
    t = torch.arange(n) / SAMPLE_RATE
    tone = torch.sin(2 * math.pi * pitch.repeat_interleave(segment)[:n] * t)
    noise = torch.randn(n, generator=generator)
    mix = torch.rand(n_segments, generator=generator).repeat_interleave(segment)[:n]
    return (loudness.repeat_interleave(segment)[:n] * (mix * tone + (1 - mix) * noise))[None, None]


def _randomise_codebooks(model: EncodecModel, embedding: torch.Tensor, generator: torch.Generator) -> None:
    residual = embedding  # [1, dim, T]
    for layer in model.quantizer.vq.layers:
        codebook = layer._codebook
        vectors = residual[0].T
        noise = torch.randn(codebook.embed.shape, generator=generator)
        entries = vectors.mean(dim=0) + noise * vectors.std(dim=0)
        codebook.embed.copy_(entries)
        codebook.embed_avg.copy_(entries)
        codebook.cluster_size.fill_(1.0)
        codebook.inited.fill_(1.0)
        residual = residual - layer.decode(layer.encode(residual))


def _scale_decoder_output(model: EncodecModel, embedding: torch.Tensor, target_rms: float) -> None:
    # The last layer is a convolution with zero bias, so its output scales with its weight norm.
    last = model.decoder.model[-1].conv.conv
    codes = model.quantizer.encode(embedding, model.frame_rate, model.target_bandwidths[0])
    decoded = model.decoder(model.quantizer.decode(codes))
    last.weight_g.mul_(target_rms / decoded.pow(2).mean().sqrt().clamp_min(1e-12))


def _check_streamable(model: EncodecModel) -> None:
    if model.sample_rate != SAMPLE_RATE or model.channels != 1:
        raise ValueError(f"expected the mono {SAMPLE_RATE} Hz EnCodec model, got {model.channels} channels at {model.sample_rate} Hz")
    if int(np.prod(model.encoder.ratios)) != FRAME_SAMPLES:
        raise ValueError(f"expected {FRAME_SAMPLES} samples per frame, the model has {int(np.prod(model.encoder.ratios))}")
    if model.normalize or model.segment is not None:
        raise ValueError("cannot stream a model that normalises loudness or works in overlapping segments (the 48 kHz model)")


def _codebooks_for(model: EncodecModel, bandwidth: float) -> int:
    _check_bandwidth(bandwidth, model.target_bandwidths)
    return model.quantizer.get_num_quantizers_for_bandwidth(model.frame_rate, bandwidth)


def _model_device(model: EncodecModel) -> torch.device:
    return next(model.parameters()).device


def _as_samples(pcm: np.ndarray) -> np.ndarray:
    array = np.asarray(pcm)
    if array.ndim != 1:
        raise ValueError(f"expected mono pcm as a 1-D array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"expected float samples in [-1, 1], got {array.dtype} (convert PCM16 with voxloop.codecs.pcm.pcm16_to_float)")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ValueError("pcm contains NaN or infinite samples, which would poison the encoder's state")
    return array


class _CodecStream:
    """What the encoder and decoder streams share: the model, its codebooks at this bandwidth,
    and a stateful copy of one SEANet half."""

    def __init__(self, model: EncodecModel, bandwidth: float, start: Start, seanet: torch.nn.Module):
        _check_streamable(model)
        self.model = model
        self.bandwidth = bandwidth
        self.start = start
        self.n_codebooks = _codebooks_for(model, bandwidth)
        self.cardinality = model.quantizer.bins
        self._device = _model_device(model)
        with torch.no_grad():
            self._stack = StreamingStack.from_modules(seanet.model, start)
        self.reset()

    def reset(self) -> None:
        self._stack.reset()


class StreamingEncoder(_CodecStream):
    """Encodes one stream of 24 kHz mono float32 pcm, chunk by chunk, into code frames."""

    def __init__(self, model: EncodecModel, bandwidth: float = 1.5, start: Start = "silence"):
        super().__init__(model, bandwidth, start, model.encoder)

    def reset(self) -> None:
        super().reset()
        self.samples_received = 0
        self.frames_returned = 0

    @property
    def pending_samples(self) -> int:
        """Samples received but not yet returned as codes: the frame in progress (with a
        "reflect" start, also the frames held during the start-up wait)."""
        return self.samples_received - FRAME_SAMPLES * self.frames_returned

    def encode(self, pcm: np.ndarray) -> torch.LongTensor:
        """Codes `[n_codebooks, T_new]` of the frames this chunk completes (T_new may be 0)."""
        samples = _as_samples(pcm)
        self.samples_received += samples.shape[0]
        # Denormals in the LSTM and convolutions once made a 1 s encode take 2.5 s instead of 50 ms.
        # The flag is per thread, and streams are often driven from worker threads, so set it on each call.
        torch.set_flush_denormal(True)
        with torch.no_grad():
            x = torch.tensor(samples, device=self._device)[None, None]
            embedding = self._stack.step(x)
            if embedding.shape[-1] == 0:
                return torch.zeros((self.n_codebooks, 0), dtype=torch.long, device=self._device)
            codes = self.model.quantizer.vq.encode(embedding, n_q=self.n_codebooks)  # [K, 1, T]
        self.frames_returned += codes.shape[-1]
        return codes[:, 0]

    def flush(self) -> torch.LongTensor:
        """Completes the frame in progress with silence and returns its codes (none if no frame is in progress).

        With a "reflect" start, frames still held by the start-up wait stay held.
        """
        missing = (-self.samples_received) % FRAME_SAMPLES
        if missing == 0:
            return torch.zeros((self.n_codebooks, 0), dtype=torch.long, device=self._device)
        return self.encode(np.zeros(missing, dtype=np.float32))


class StreamingDecoder(_CodecStream):
    """Decodes one stream of code frames, chunk by chunk, into 24 kHz mono float32 pcm."""

    def __init__(self, model: EncodecModel, bandwidth: float = 1.5, start: Start = "silence"):
        super().__init__(model, bandwidth, start, model.decoder)

    def reset(self) -> None:
        super().reset()
        self.frames_received = 0

    def decode(self, codes: torch.LongTensor) -> np.ndarray:
        """`[n_codebooks, T]` codes -> `T * 320` float32 samples that follow the previous call's."""
        codes = torch.as_tensor(codes)
        if codes.dim() != 2 or codes.shape[0] != self.n_codebooks:
            raise ValueError(f"expected codes of shape [{self.n_codebooks}, T] at {self.bandwidth} kbps, got {list(codes.shape)}")
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        if codes.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= self.cardinality:
            raise ValueError(f"codes must lie in [0, {self.cardinality}), got values from {low} to {high}")
        self.frames_received += codes.shape[1]
        torch.set_flush_denormal(True)  # see StreamingEncoder.encode
        with torch.no_grad():
            embedding = self.model.quantizer.decode(codes.to(self._device, torch.long)[:, None, :])
            audio = self._stack.step(embedding)
        return audio[0, 0].float().cpu().numpy()


class StreamingEncodec:
    """One encoder stream and one decoder stream on the same model; they share no state."""

    def __init__(self, model: EncodecModel, bandwidth: float = 1.5, start: Start = "silence"):
        self.encoder = StreamingEncoder(model, bandwidth, start)
        self.decoder = StreamingDecoder(model, bandwidth, start)
        self.model = model
        self.bandwidth = bandwidth
        self.n_codebooks = self.encoder.n_codebooks
        self.cardinality = self.encoder.cardinality

    def encode(self, pcm: np.ndarray) -> torch.LongTensor:
        return self.encoder.encode(pcm)

    def decode(self, codes: torch.LongTensor) -> np.ndarray:
        return self.decoder.decode(codes)

    def reset(self) -> None:
        self.encoder.reset()
        self.decoder.reset()


def _synthetic_speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """A stand-in signal for timing when no recording is given: cost does not depend on content."""
    generator = torch.Generator().manual_seed(seed)
    return _calibration_signal(generator, seconds)[0, 0].numpy()


def measure_streaming_cost(chunk_ms: float = 80, seconds: float = 3, threads: int = 2,
                           model: EncodecModel | None = None, bandwidth: float = 1.5,
                           audio: np.ndarray | None = None) -> dict:
    """Milliseconds per chunk to encode `seconds` of 24 kHz audio in `chunk_ms` chunks and decode the codes back.

    The model defaults to `random_encodec` (same architecture, so same cost as the trained
    weights); `audio` defaults to a synthetic signal. The first chunk (one-off allocations)
    is not counted. torch's thread count is set to `threads` for the run and restored.
    """
    if chunk_ms <= 0 or seconds <= 0:
        raise ValueError("chunk_ms and seconds must be positive")
    chunk_samples = max(1, round(chunk_ms * SAMPLE_RATE / 1000))
    if audio is None:
        audio = _synthetic_speechlike(seconds)
    audio = _as_samples(audio)[: int(seconds * SAMPLE_RATE)]
    if audio.shape[0] < 2 * chunk_samples:
        raise ValueError(f"need at least two chunks of audio, got {audio.shape[0]} samples for {chunk_samples}-sample chunks")
    model = model if model is not None else random_encodec(bandwidth=bandwidth)
    codec = StreamingEncodec(model, bandwidth)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    encode_ms: list[float] = []
    decode_ms: list[float] = []
    try:
        for index, start in enumerate(range(0, audio.shape[0] - chunk_samples + 1, chunk_samples)):
            began = time.perf_counter()
            codes = codec.encode(audio[start:start + chunk_samples])
            encoded = time.perf_counter()
            if codes.shape[-1]:
                codec.decode(codes)
            decoded = time.perf_counter()
            if index == 0:
                continue
            encode_ms.append((encoded - began) * 1000)
            if codes.shape[-1]:
                decode_ms.append((decoded - encoded) * 1000)
    finally:
        torch.set_num_threads(previous_threads)

    def summary(values: list[float]) -> tuple[float, float]:
        if not values:
            return float("nan"), float("nan")
        ordered = sorted(values)
        return statistics.median(ordered), ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]

    encode_median, encode_p95 = summary(encode_ms)
    decode_median, decode_p95 = summary(decode_ms)
    actual_chunk_ms = chunk_samples * 1000 / SAMPLE_RATE
    return {
        "chunk_ms": actual_chunk_ms,
        "chunks": len(encode_ms),
        "threads": threads,
        "bandwidth_kbps": bandwidth,
        "encode_median_ms": encode_median,
        "encode_p95_ms": encode_p95,
        "decode_median_ms": decode_median,
        "decode_p95_ms": decode_p95,
        # Share of real time spent encoding and decoding one chunk; under 1 keeps up.
        "real_time_factor": (encode_median + decode_median) / actual_chunk_ms,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Time streaming EnCodec 24 kHz encode and decode per chunk.")
    parser.add_argument("--chunk-ms", type=float, default=80)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bandwidth", type=float, default=1.5)
    parser.add_argument("--checkpoint", help="time a real checkpoint instead of random weights")
    parser.add_argument("--audio", help="an audio file to encode instead of a synthetic signal")
    args = parser.parse_args(argv)
    model = load_encodec(args.checkpoint, args.bandwidth) if args.checkpoint else None
    audio = None
    if args.audio:
        from voxloop.codecs.audiofile import load_audio

        audio = load_audio(args.audio, SAMPLE_RATE)
    print(json.dumps(measure_streaming_cost(args.chunk_ms, args.seconds, args.threads, model, args.bandwidth, audio), indent=2))


if __name__ == "__main__":
    main()
