import base64

import numpy as np
import pytest

from voxloop.codecs.pcm import AudioFormatError, decode_base64_pcm16, encode_base64_pcm16, rms_dbfs
from voxloop.codecs.resample import StreamResampler, resample
from voxloop.voice.sample_buffer import SampleBuffer


def tone(freq: float, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_pcm16_base64_round_trip_is_exact_to_one_lsb():
    samples = np.linspace(-1, 1, 1001, dtype=np.float32)
    decoded = decode_base64_pcm16(encode_base64_pcm16(samples))
    assert np.max(np.abs(decoded - samples)) <= 1 / 32768 + 1e-6


@pytest.mark.parametrize("payload,message", [("not base64!!", "base64"), (base64.b64encode(b"abc").decode(), "even number")])
def test_bad_audio_is_rejected_with_a_clear_reason(payload, message):
    with pytest.raises(AudioFormatError, match=message):
        decode_base64_pcm16(payload)


def test_streamed_resampling_matches_whole_signal_resampling():
    signal = tone(440, 24000, 1.0)
    whole = resample(signal, 24000, 16000)
    stream = StreamResampler(24000, 16000)
    pieces = [stream.process(signal[i:i + 960]) for i in range(0, signal.size, 960)] + [stream.flush()]
    streamed = np.concatenate(pieces)
    assert abs(streamed.size - whole.size) <= 1
    n = min(streamed.size, whole.size)
    assert np.max(np.abs(streamed[:n] - whole[:n])) < 1e-3


def test_resampling_keeps_the_frequency():
    out = resample(tone(440, 24000, 1.0), 24000, 16000)
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16000 / out.size - 440) < 2


def test_rms_dbfs():
    assert rms_dbfs(np.zeros(100, dtype=np.float32)) < -100
    assert abs(rms_dbfs(np.ones(100, dtype=np.float32)) - 0.0) < 1e-3


def test_sample_buffer_keeps_absolute_indices_across_drops_and_caps():
    buffer = SampleBuffer(max_samples=10)
    buffer.append(np.arange(6, dtype=np.float32))
    buffer.append(np.arange(6, 12, dtype=np.float32))
    assert (buffer.start, buffer.end) == (2, 12)  # capped to the newest 10
    assert buffer.slice(4, 7).tolist() == [4, 5, 6]
    buffer.drop_before(8)
    assert buffer.slice(0, 100).tolist() == [8, 9, 10, 11]


def test_leading_silence_before_the_first_word_is_trimmed_but_the_onset_kept():
    from voxloop.voice.cascade import trim_leading_silence

    word = tone(300, 24000, 0.2)
    audio = np.concatenate([np.zeros(2400, np.float32), 1e-4 * np.ones(1200, np.float32), word])
    trimmed = trim_leading_silence(audio)
    assert trimmed.size == (word.size - 1) + 240  # the sine starts at 0: its first loud sample is the second
    assert trim_leading_silence(np.zeros(100, np.float32)).size == 0
