"""PCM16 little-endian <-> float32 conversion, and the base64 framing of the wire protocol."""

from __future__ import annotations

import base64
import binascii

import numpy as np

# The wire protocol's audio: pcm16, mono, 24 kHz, as in the OpenAI Realtime API.
WIRE_RATE = 24000


class AudioFormatError(ValueError):
    """Audio bytes that cannot be PCM16: bad base64 or an odd byte count."""


def float_to_pcm16(samples: np.ndarray) -> bytes:
    # The same 1/32768 scale both ways, so decode(encode(x)) is within half a step of x.
    scaled = np.round(np.asarray(samples, dtype=np.float32) * 32768.0)
    return np.clip(scaled, -32768, 32767).astype("<i2").tobytes()


def pcm16_to_float(data: bytes) -> np.ndarray:
    if len(data) % 2:
        raise AudioFormatError(f"PCM16 audio must have an even number of bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def encode_base64_pcm16(samples: np.ndarray) -> str:
    return base64.b64encode(float_to_pcm16(samples)).decode("ascii")


def decode_base64_pcm16(text: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AudioFormatError(f"audio is not valid base64: {exc}") from None
    return pcm16_to_float(raw)


def rms_dbfs(samples: np.ndarray) -> float:
    """Level in dB relative to full scale; -120 for digital silence."""
    if samples.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * np.log10(max(rms, 1e-6))
