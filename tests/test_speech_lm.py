"""The speech LM's delay pattern, KV-cached streaming, sampling and files, on small random models."""

from __future__ import annotations

import json

import pytest
import torch

from voxloop.voice.delay_pattern import DelayLine, UndelayLine, delay, undelay
from voxloop.voice.errors import ModelNotFoundError
from voxloop.voice.speech_lm import (CONFIG_FILE, WEIGHTS_FILE, SamplingSettings, SpeechLM, measure_step_time,
                                     sample_codes, teacher_forcing)
from voxloop.voice.speech_lm_config import CONFIGS, SpeechLMConfig, config_by_name

PAD = 1024

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def small_config(**changes) -> SpeechLMConfig:
    return config_by_name("tiny").with_changes(**changes)


def random_model(seed: int = 0, **changes) -> SpeechLM:
    torch.manual_seed(seed)
    return SpeechLM(small_config(**changes)).eval()


# -- delay pattern ------------------------------------------------------------------------


@pytest.mark.parametrize("n_codebooks", [1, 2, 4, 8])
@pytest.mark.parametrize("length", [0, 1, 3, 37])
def test_delay_round_trip_and_layout(n_codebooks, length):
    codes = torch.randint(0, 1024, (n_codebooks, length))
    delayed = delay(codes, PAD)
    assert delayed.shape == (n_codebooks, length + n_codebooks - 1)
    for k in range(n_codebooks):
        for t in range(delayed.shape[1]):
            expected = codes[k, t - k] if 0 <= t - k < length else PAD
            assert delayed[k, t] == expected
    assert torch.equal(undelay(delayed), codes)


def test_delay_works_on_batches():
    codes = torch.randint(0, 1024, (3, 4, 10))
    delayed = delay(codes, PAD)
    assert torch.equal(delayed[1], delay(codes[1], PAD))
    assert torch.equal(undelay(delayed), codes)


@pytest.mark.parametrize("n_codebooks", [1, 2, 4])
def test_delay_lines_match_whole_sequence_versions(n_codebooks):
    length = 12
    codes = torch.randint(0, 1024, (n_codebooks, length))
    line = DelayLine(n_codebooks, PAD)
    # A stream has no end: pushing K-1 more frames gives the tail that `delay` pads.
    extra = torch.randint(0, 1024, (n_codebooks, n_codebooks - 1))
    streamed = torch.stack([line.push(frame) for frame in torch.cat((codes, extra), dim=1).T], dim=1)
    assert torch.equal(streamed[:, :length], delay(codes, PAD)[:, :length])

    undelay_line = UndelayLine(n_codebooks, PAD)
    outputs = [undelay_line.push(frame) for frame in delay(codes, PAD).T]
    assert all(out is None for out in outputs[:n_codebooks - 1])
    assert torch.equal(torch.stack(outputs[n_codebooks - 1:], dim=1), codes)


def test_undelay_rejects_too_short_input():
    with pytest.raises(ValueError):
        undelay(torch.zeros(4, 2, dtype=torch.long))


# -- model: full pass vs KV-cached steps ---------------------------------------------------


def test_cached_steps_equal_full_causal_pass_beyond_the_window():
    window = 16
    model = random_model(context_frames=window)
    length = 40  # more than twice the window: the ring buffer wraps
    user = torch.randint(0, PAD + 1, (1, 2, length))
    assistant = torch.randint(0, PAD + 1, (1, 2, length))
    with torch.no_grad():
        full = model(user, assistant)
        cache = model.new_cache()
        stepped = torch.stack([model.step_logits(user[:, :, t], assistant[:, :, t], cache) for t in range(length)], dim=1)
    assert cache.buffer.shape[-2] == window  # memory stays bounded
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-5)

    # The window is really applied: the same weights with a longer context see more.
    wide = SpeechLM(small_config(context_frames=64)).eval()
    wide.load_state_dict(model.state_dict())
    with torch.no_grad():
        wide_full = wide(user, assistant)
    torch.testing.assert_close(wide_full[:, :window], full[:, :window], atol=1e-5, rtol=1e-5)
    assert (wide_full[:, window:] - full[:, window:]).abs().max() > 1e-3


def test_stream_agrees_with_teacher_forced_pass_over_its_own_output():
    model = random_model(seed=1)
    k = model.config.n_codebooks
    length = 30
    user = torch.randint(0, 1024, (k, length))
    stream = model.stream(SamplingSettings(temperature=0))
    outputs = [stream.step(frame) for frame in user.T]
    assert all(out is None for out in outputs[:k - 1])
    assistant = torch.stack(outputs[k - 1:], dim=1)  # plain frames
    assert assistant.shape == (k, length - k + 1)
    assert int(assistant.max()) < 1024

    user_in, assistant_in, targets = teacher_forcing(delay(user, PAD)[None, :, :length], delay(assistant, PAD)[None], PAD)
    with torch.no_grad():
        greedy = model(user_in, assistant_in).argmax(dim=-1)[0].T  # [K, T]
    checked = 0
    for t in range(length - k + 1):  # steps whose inputs the re-delayed output fully covers
        for codebook in range(min(t + 1, k)):
            assert greedy[codebook, t] == targets[0, codebook, t]
            checked += 1
    assert checked > length


def test_stream_rejects_bad_frames_and_resets():
    model = random_model()
    stream = model.stream(SamplingSettings(temperature=0))
    with pytest.raises(ValueError):
        stream.step(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        stream.step(torch.tensor([0, 1024]))
    with pytest.raises(ValueError):
        stream.step(torch.tensor([0.0, 1.0]))
    frames = torch.randint(0, 1024, (10, 2))
    first = [stream.step(f) for f in frames]
    assert stream.steps == 10
    stream.reset()
    assert stream.steps == 0
    second = [stream.step(f) for f in frames]
    assert [None if x is None else x.tolist() for x in first] == [None if x is None else x.tolist() for x in second]


def test_forward_rejects_bad_shapes():
    model = random_model()
    with pytest.raises(ValueError):
        model(torch.zeros(1, 3, 5, dtype=torch.long), torch.zeros(1, 3, 5, dtype=torch.long))
    with pytest.raises(ValueError):
        model(torch.full((1, 2, 5), PAD + 1), torch.zeros(1, 2, 5, dtype=torch.long))


# -- sampling ------------------------------------------------------------------------------


def test_sampling_controls():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1024, generator=generator)
    best = logits.argmax(dim=-1)
    assert torch.equal(sample_codes(logits, SamplingSettings(temperature=0)), best)
    assert torch.equal(sample_codes(logits, SamplingSettings(temperature=1.5, top_k=1), generator), best)
    assert torch.equal(sample_codes(logits, SamplingSettings(temperature=1.5, top_k=0, top_p=1e-6), generator), best)

    top5 = logits.topk(5, dim=-1).indices
    draws = torch.stack([sample_codes(logits, SamplingSettings(temperature=5.0, top_k=5), generator) for _ in range(200)])
    assert all(bool((top5[k] == draws[:, k, None]).any(dim=-1).all()) for k in range(4))
    assert len(set(draws[:, 0].tolist())) > 1  # it does sample

    # top_p keeps the smallest set of tokens whose mass reaches p.
    peaked = torch.tensor([[4.0, 3.0, 0.0, -1.0]])
    probs = peaked.softmax(-1)[0]
    assert probs[0] < 0.8 < probs[0] + probs[1]
    nucleus = {int(sample_codes(peaked, SamplingSettings(temperature=1.0, top_k=0, top_p=0.8), generator)) for _ in range(300)}
    assert nucleus == {0, 1}

    # Unseeded streams do not all sample alike.
    sampling = SamplingSettings(temperature=5.0, top_k=0)
    model = random_model()
    frames = torch.randint(0, 1024, (12, 2))

    def run() -> str:
        stream = model.stream(sampling)
        return str([stream.step(f) for f in frames])

    runs = {run() for _ in range(3)}
    assert len(runs) > 1

    same_a = sample_codes(logits, SamplingSettings(), torch.Generator().manual_seed(7))
    same_b = sample_codes(logits, SamplingSettings(), torch.Generator().manual_seed(7))
    assert torch.equal(same_a, same_b)


# -- files ---------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    model = random_model(seed=3)
    model.save(tmp_path / "lm")
    assert (tmp_path / "lm" / CONFIG_FILE).is_file() and (tmp_path / "lm" / WEIGHTS_FILE).is_file()
    loaded = SpeechLM.load(tmp_path / "lm")
    assert loaded.config == model.config
    user = torch.randint(0, 1024, (1, 2, 12))
    assistant = torch.randint(0, 1024, (1, 2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(user, assistant), model(user, assistant))
    frames = torch.randint(0, 1024, (8, 2))
    a, b = model.stream(SamplingSettings(temperature=0)), loaded.stream(SamplingSettings(temperature=0))
    assert [str(a.step(f)) for f in frames] == [str(b.step(f)) for f in frames]


def test_loading_missing_model_raises_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError):
        SpeechLM.load(tmp_path / "nothing-here")
    half = tmp_path / "half"
    half.mkdir()
    small_config().save(half / CONFIG_FILE)
    with pytest.raises(ModelNotFoundError, match=WEIGHTS_FILE):
        SpeechLM.load(half)


def test_config_json_round_trip_and_errors(tmp_path):
    config = small_config(context_frames=99)
    assert SpeechLMConfig.from_json(config.to_json()) == config
    values = json.loads(config.to_json())
    values["surprise"] = 1
    with pytest.raises(ValueError, match="surprise"):
        SpeechLMConfig.from_json(json.dumps(values))
    with pytest.raises(ValueError, match="tiny"):
        config_by_name("enormous")
    with pytest.raises(ValueError):
        SpeechLMConfig(dim=100, n_heads=3)


def test_named_configs_sizes():
    assert SpeechLM(CONFIGS["tiny"]).parameter_count() < 2_000_000
    assert 20_000_000 < SpeechLM(CONFIGS["production"]).parameter_count() < 35_000_000
    assert CONFIGS["tiny"].codec_bandwidth_kbps == 1.5


def test_measure_step_time_reports_a_real_time_factor():
    result = measure_step_time("tiny", steps=10, warmup=2, threads=1)
    assert result["parameters"] < 2_000_000
    assert 0 < result["median_ms"] <= result["p95_ms"]
    assert result["real_time_factor"] == pytest.approx(result["median_ms"] / (1000 / 75))


@pytest.mark.gpu
def test_streaming_on_cuda_matches_cpu():
    model = random_model(seed=4)
    frames = torch.randint(0, 1024, (20, 2))
    cpu_stream = model.stream(SamplingSettings(temperature=0))
    cpu_out = [cpu_stream.step(f) for f in frames]
    with torch.no_grad():
        user = torch.randint(0, 1024, (1, 2, 16))
        cpu_logits = model(user, user)
    cuda_model = model.to("cuda")
    cuda_stream = cuda_model.stream(SamplingSettings(temperature=0))
    cuda_out = [cuda_stream.step(f) for f in frames]
    with torch.no_grad():
        cuda_logits = cuda_model(user.cuda(), user.cuda()).cpu()
    torch.testing.assert_close(cuda_logits, cpu_logits, atol=1e-3, rtol=1e-3)
    assert all(o is None or o.device.type == "cpu" for o in cuda_out)
    assert [str(x) for x in cuda_out] == [str(x) for x in cpu_out]
