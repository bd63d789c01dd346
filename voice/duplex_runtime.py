"""The continuous codec + speech-LM loop of one native-path conversation.

Every input sample goes through it, whether the assistant is speaking or not: the user's
24 kHz audio is encoded into EnCodec frames (320 samples, 13.3 ms each), each frame is one
`SpeechLMStream.step`, and each assistant frame the LM returns is decoded straight away. So
the model hears the user while it speaks (full duplex), and its output is a continuous
audio stream, one frame per input frame, K-1 frames behind the input (the delay pattern).

Step time budget. Everything here must run faster than the audio it covers, or the
assistant falls further behind with every second of conversation: per 13.3 ms frame, one
encoder frame + one LM step + one decoder frame < 13.3 ms. The codec is cheap only in
chunks (a call costs several ms whatever its length), so audio is processed in chunks of
several frames (`NativeSession` takes 80 ms at a time); the chunk adds its length to the
latency but not to the per-frame cost. `measure_duplex_cost` times it
(`python -m voxloop.voice.duplex_runtime --config tiny|production [--device cuda]`).
Measured per 80 ms chunk (6 frames), random weights, full attention window:

    machine                          config      encode  LM (per step)  decode  total  real-time factor
    2-core CPU, 1 torch thread       tiny        14 ms   9 ms (1.6)     13 ms    37 ms  0.46
    2-core CPU, 1 torch thread       production  15 ms   71 ms (11.8)   13 ms   100 ms  1.24
    H100 (torch 2.11)                production   6 ms   29 ms (4.8)     6 ms    40 ms  0.50

So on a small CPU only "tiny" keeps real time: "production" (~25 M parameters) fits the
step budget alone (11.8 ms of 13.3) but not with the codec on the same core, and its
conversation drifts behind (the session logs a warning once its input piles up). It is
meant for a GPU, where a step is launch-bound (~3 ms alone) and 2-frame chunks (27 ms)
also keep up (13 ms each), for 53 ms less chunking latency. `DuplexOutput` reports what
each chunk cost.

Silence. A frame counts as silent when its codes are the codec's codes for digital silence
(`codec_silence_codes`) or when its decoded audio is below -45 dBFS. The first test is what
the speech LM was trained to say while listening (the training recipe encodes silence with
the same encoder); the second catches quiet frames of a real codec that are not exactly it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from voxloop.codecs.encodec_stream import FRAME_SAMPLES, SAMPLE_RATE, StreamingDecoder, StreamingEncoder, random_encodec
from voxloop.voice.speech_lm import SamplingSettings, SpeechLM
from voxloop.voice.speech_lm_config import SpeechLMConfig, config_by_name

FRAME_MS = 1000 * FRAME_SAMPLES / SAMPLE_RATE  # 13.33 ms
AUDIBLE_FLOOR = 10 ** (-45 / 20)  # RMS over one frame; quieter output counts as silence


def codec_silence_codes(codec, bandwidth: float) -> torch.Tensor:
    """[K] codes a fresh streaming encoder settles on for digital silence (a silent microphone)."""
    encoder = StreamingEncoder(codec, bandwidth)
    codes = encoder.encode(np.zeros(FRAME_SAMPLES * 16, dtype=np.float32))
    return codes[:, -1].cpu()


@dataclass
class DuplexOutput:
    first_frame: int  # index of the first output frame on the conversation's frame clock
    audio: np.ndarray  # 320 float32 samples per output frame, 24 kHz
    audible: np.ndarray  # bool per output frame
    input_frames: int  # frames of input this chunk completed (one LM step each)
    encode_s: float
    lm_s: float
    decode_s: float

    @property
    def frames(self) -> int:
        return self.audible.size

    @property
    def compute_s(self) -> float:
        return self.encode_s + self.lm_s + self.decode_s

    def frame_audio(self, index: int) -> np.ndarray:
        return self.audio[index * FRAME_SAMPLES:(index + 1) * FRAME_SAMPLES]


class DuplexStream:
    """One conversation's codec and LM state over shared, read-only weights.

    Not thread-safe: one call at a time, on the models' worker thread. Output frame `i` is
    the assistant's frame for the same 13.3 ms as input frame `i` (the frame clock starts
    with the conversation), returned K-1 steps later."""

    def __init__(self, codec, speech_lm: SpeechLM, sampling: SamplingSettings, seed: int | None = None,
                 silence_codes: torch.Tensor | None = None):
        bandwidth = speech_lm.config.codec_bandwidth_kbps
        self.encoder = StreamingEncoder(codec, bandwidth)
        self.decoder = StreamingDecoder(codec, bandwidth)
        self.lm = speech_lm.stream(sampling, seed)
        self.silence_codes = silence_codes if silence_codes is not None else codec_silence_codes(codec, bandwidth)
        self.frames_in = 0
        self.frames_out = 0

    def process(self, pcm: np.ndarray) -> DuplexOutput:
        """Blocking: encode `pcm` (24 kHz float32, any length), step the LM once per frame it
        completes, decode what the LM says."""
        started = time.perf_counter()
        codes = self.encoder.encode(pcm).cpu()  # [K, T]: only the frames this chunk completed
        encoded = time.perf_counter()
        spoken = []
        for frame in codes.T:
            out = self.lm.step(frame)
            if out is not None:
                spoken.append(out)
        self.frames_in += codes.shape[1]
        stepped = time.perf_counter()
        first = self.frames_out
        if not spoken:
            return DuplexOutput(first, np.zeros(0, np.float32), np.zeros(0, bool), codes.shape[1],
                                encoded - started, stepped - encoded, 0.0)
        out_codes = torch.stack(spoken, dim=1)  # [K, T_out]
        audio = self.decoder.decode(out_codes)
        self.frames_out += out_codes.shape[1]
        frames = audio.reshape(-1, FRAME_SAMPLES)
        is_silence_code = (out_codes == self.silence_codes[:, None]).all(dim=0).numpy()
        quiet = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) < AUDIBLE_FLOOR
        audible = ~(is_silence_code | quiet)
        return DuplexOutput(first, audio, audible, codes.shape[1], encoded - started, stepped - encoded,
                            time.perf_counter() - stepped)


def measure_duplex_cost(config: SpeechLMConfig | str = "tiny", chunk_frames: int = 6, seconds: float = 4.0,
                        device: str = "cpu", threads: int = 1, seed: int = 0) -> dict:
    """Milliseconds per chunk of the whole loop (encode, one LM step per frame, decode), random
    weights (same cost as trained ones), batch 1, with the LM's attention window already full
    as in a long conversation. real_time_factor = median chunk time / chunk duration: below 1
    keeps up. torch's thread count is set to `threads` for the run and restored."""
    if isinstance(config, str):
        config = config_by_name(config)
    if chunk_frames < 1 or seconds <= 0:
        raise ValueError("chunk_frames and seconds must be positive")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.set_flush_denormal(True)
        torch.manual_seed(seed)
        lm = SpeechLM(config).to(device).eval()
        codec = random_encodec(seed=seed, bandwidth=config.codec_bandwidth_kbps).to(device)
        stream = DuplexStream(codec, lm, SamplingSettings(), seed=seed)
        # Only the positions matter for the cost of attention, not what the slots hold.
        stream.lm._cache.position = config.context_frames
        chunk = chunk_frames * FRAME_SAMPLES
        audio = (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)
        outputs = [stream.process(audio[start:start + chunk]) for start in range(0, audio.size - chunk + 1, chunk)]
    finally:
        torch.set_num_threads(previous_threads)
    outputs = outputs[2:]  # one-off allocations
    if not outputs:
        raise ValueError("need at least three chunks: give more seconds")

    def median_ms(values) -> float:
        return round(1000 * statistics.median(values), 2)

    chunk_ms = chunk_frames * FRAME_MS
    total = sorted(o.compute_s for o in outputs)
    return {
        "config": asdict(config), "parameters": lm.parameter_count(), "device": device, "threads": threads,
        "chunk_ms": round(chunk_ms, 2), "chunks": len(outputs),
        "encode_ms": median_ms([o.encode_s for o in outputs]),
        "lm_ms": median_ms([o.lm_s for o in outputs]),
        "lm_step_ms": median_ms([o.lm_s / o.input_frames for o in outputs]),
        "decode_ms": median_ms([o.decode_s for o in outputs]),
        "total_median_ms": median_ms(total),
        "total_p95_ms": round(1000 * total[min(len(total) - 1, math.ceil(0.95 * len(total)) - 1)], 2),
        "step_budget_ms": round(FRAME_MS, 2),
        "real_time_factor": round(statistics.median(total) * 1000 / chunk_ms, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Time the native path's duplex loop (encode + LM steps + decode) per chunk.")
    parser.add_argument("--config", default="tiny", help="speech LM size: tiny or production")
    parser.add_argument("--chunk-frames", type=int, default=6, help="codec frames per call (default: 6, 80 ms)")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    result = measure_duplex_cost(args.config, args.chunk_frames, args.seconds, args.device, args.threads)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
