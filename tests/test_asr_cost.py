"""The Whisper cost proxy: a random-weight model of a given size must run the same work as the
real one (same shapes, the requested number of decoded tokens), or its timings mean nothing."""

from pathlib import Path

import numpy as np

from voxloop.bench.asr_cost import SHAPES, ForcedDecoder, random_whisper
from voxloop.bench.speech import load_clips
from voxloop.codecs.audiofile import load_audio
from voxloop.voice.asr import bundled_whisper_path


def test_shapes_match_the_published_sizes():
    # openai/whisper's model card: tiny 39 M, base 74 M, small 244 M, medium 769 M, large 1550 M
    # (the multilingual counts; the proxy leaves out biases and layer norms).
    published = {"tiny.en": 39, "base.en": 74, "small.en": 244, "medium.en": 769, "large-v3": 1550}
    for size, millions in published.items():
        assert abs(SHAPES[size].parameters / 1e6 - millions) / millions < 0.06, size


def test_random_twin_of_tiny_has_the_real_models_tensors_and_decodes_the_requested_tokens(tmp_path):
    import ctranslate2

    reference = Path(bundled_whisper_path())
    vocabulary = (reference / "vocabulary.txt").read_text(encoding="utf-8").splitlines()
    twin = random_whisper(SHAPES["tiny.en"], tmp_path / "tiny", "int8", vocabulary)
    real_model = ctranslate2.models.Whisper(str(reference), device="cpu", compute_type="int8")
    twin_model = ctranslate2.models.Whisper(str(twin), device="cpu", compute_type="int8")
    assert twin_model.n_mels == real_model.n_mels

    audio = load_audio(load_clips()[0].path, 16000)
    features = np.zeros((1, 80, 1000), np.float32)
    encoded_real = np.asarray(real_model.encode(ctranslate2.StorageView.from_array(features)))
    encoded_twin = np.asarray(twin_model.encode(ctranslate2.StorageView.from_array(features)))
    assert encoded_real.shape == encoded_twin.shape == (1, 500, 384)
    assert np.isfinite(encoded_twin).all()

    for model_dir in (str(reference), str(twin)):
        decoder = ForcedDecoder(model_dir, 80, "cpu", "int8", threads=2)
        for tokens in (5, 17):
            ms, decoded = decoder.time_ms(audio, tokens)
            assert decoded == tokens and ms > 0


def test_a_saved_run_is_redrawn_into_the_same_table_and_a_plot(tmp_path):
    import json

    from voxloop.bench.asr_cost import Timing, main, write_report

    timings = [Timing("tiny.en", "real", f"clip{i}", 2.0, 12, 30.0 + i) for i in range(5)] + \
              [Timing("small.en", "random", f"clip{i}", 2.0, 12, 70.0 + 2 * i) for i in range(5)]
    first = write_report(timings, "cuda", "float16", tmp_path / "run")
    assert "| small.en | random | 240 M | 5 | 74.0 |" in first
    saved = json.loads((tmp_path / "run" / "asr_cost.json").read_text())
    assert saved["summary"][0]["median_ms"] == 32.0

    assert main(["--from-json", str(tmp_path / "run" / "asr_cost.json"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "asr_cost.md").read_text() == first
    assert (tmp_path / "again" / "asr_cost.png").stat().st_size > 10_000
