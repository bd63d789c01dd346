"""The XTTS backend, run for real on a tiny randomly initialised XTTS checkpoint.

The checkpoint is written to a temporary folder (config.json, model.pth, vocab.json,
speakers_xtts.pth) and loaded through the same `--xtts-dir` path users take. Its weights are
random, so the audio is noise: these tests check the mechanics (streaming, framing,
resampling, cancellation, voice caching, errors), never how the speech sounds. The GPT is
shrunk to one narrow layer; coqui fixes the vocoder and speaker encoder at full size.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from contextlib import aclosing
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import BPE
from tokenizers.pre_tokenizers import Whitespace

from voxloop.bench.speech import clip as find_clip
from voxloop.client.cli import _model_options, build_parser
from voxloop.voice.errors import ModelNotFoundError
from voxloop.voice.models import build_tts
from voxloop.voice.tts import OUTPUT_RATE
from voxloop.voice.tts_xtts import CPU_STREAM_CHUNK_SIZE, TOS_ENV, XttsSynthesizer, pick_device, resolve_checkpoint_dir

from TTS.tts.configs.xtts_config import XttsArgs, XttsConfig
from TTS.tts.models.xtts import Xtts

TINY_RATE = 22050  # the tiny model's vocoder writes 22.05 kHz, so the backend must resample to 24 kHz
MAX_AUDIO_TOKENS = 27
GENERATED_TOKENS = MAX_AUDIO_TOKENS - 3  # XTTS keeps 3 positions for the conditioning input and start/stop tokens
SAMPLES_PER_TOKEN = 1024  # gpt_code_stride_len: one audio token stands for this many samples at TINY_RATE
MODEL_DIM = 32
SPEAKERS = ("Tiny Speaker A", "Tiny Speaker B")
REFERENCE_CLIP = "arctic_a0039_1592747680"  # a real 48 kHz stereo speech clip, to clone


def write_tiny_vocab(path: Path) -> None:
    special = ["[STOP]", "[UNK]", "[SPACE]", "[START]", "[en]"]
    symbols = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;")
    tokenizer = Tokenizer(BPE(vocab={token: i for i, token in enumerate(special + symbols)}, merges=[], unk_token="[UNK]"))
    tokenizer.add_special_tokens(special)
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(path))


def write_tiny_checkpoint(directory: Path) -> Path:
    """A real XTTS checkpoint folder with random weights that never emit the stop token,
    so every generation runs to the same known length."""
    directory.mkdir(parents=True, exist_ok=True)
    write_tiny_vocab(directory / "vocab.json")
    args = XttsArgs(gpt_layers=1, gpt_n_model_channels=MODEL_DIM, gpt_n_heads=2, gpt_num_audio_tokens=66,
                    gpt_start_audio_token=64, gpt_stop_audio_token=65, gpt_max_audio_tokens=MAX_AUDIO_TOKENS,
                    gpt_max_text_tokens=200, gpt_use_perceiver_resampler=True, decoder_input_dim=MODEL_DIM,
                    output_sample_rate=TINY_RATE)
    config = XttsConfig(model_args=args)
    config.save_json(str(directory / "config.json"))

    torch.manual_seed(0)
    model = Xtts(config)
    model.tokenizer.__init__(directory / "vocab.json")
    model.init_models()
    state = model.state_dict()
    stop = args.gpt_stop_audio_token
    state["gpt.mel_head.weight"][stop] = 0.0
    state["gpt.mel_head.bias"][stop] = -1e4
    torch.save({"model": state}, directory / "model.pth")
    torch.save({name: {"gpt_cond_latent": torch.randn(1, 32, MODEL_DIM), "speaker_embedding": torch.randn(1, 512, 1)}
                for name in SPEAKERS}, directory / "speakers_xtts.pth")
    return directory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.set_num_threads(2)
    return write_tiny_checkpoint(tmp_path_factory.mktemp("xtts") / "tiny-xtts")


@pytest.fixture(scope="module")
def voice_dir(tmp_path_factory) -> Path:
    """The folder of clips clients may choose from: one real voice and one file that is no audio."""
    directory = tmp_path_factory.mktemp("voices")
    clip = find_clip(REFERENCE_CLIP).path
    shutil.copy(clip, directory / f"narrator{clip.suffix}")
    (directory / "broken.wav").write_text("not a wav")
    return directory


@pytest.fixture(scope="module")
def synth(checkpoint, voice_dir) -> XttsSynthesizer:
    args = build_parser().parse_args(["serve", "--tts", "xtts", "--xtts-dir", str(checkpoint), "--xtts-device", "cpu",
                                      "--xtts-voice-dir", str(voice_dir)])
    backend = build_tts(_model_options(args))
    assert isinstance(backend, XttsSynthesizer)
    return backend


@pytest.fixture
def counters(synth):
    """Counts GPT steps (one forward per audio token) and vocoder decodes (one per streamed chunk)."""
    counts = {"tokens": 0, "decodes": 0}

    def count(key):
        def hook(*_):
            counts[key] += 1
        return hook

    handles = [synth.model.gpt.gpt_inference.register_forward_hook(count("tokens")),
               synth.model.hifigan_decoder.register_forward_hook(count("decodes"))]
    yield counts
    for handle in handles:
        handle.remove()


@pytest.fixture
def chunk_size(synth):
    original = synth.stream_chunk_size
    yield lambda size: setattr(synth, "stream_chunk_size", size)
    synth.stream_chunk_size = original


async def collect(synth: XttsSynthesizer, text: str, voice: str | None = None) -> list[np.ndarray]:
    async with aclosing(synth.synthesize(text, voice)) as chunks:
        return [chunk async for chunk in chunks]


async def first_chunk(synth: XttsSynthesizer, text: str, voice: str | None = None) -> np.ndarray:
    async with aclosing(synth.synthesize(text, voice)) as chunks:
        async for chunk in chunks:
            return chunk
    raise AssertionError("no audio")


async def until_worker_idle(synth: XttsSynthesizer) -> None:
    await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(synth._executor, lambda: None), timeout=30)


def test_loads_through_the_cli_options_with_the_first_builtin_speaker(synth, checkpoint):
    assert synth.name == "xtts:tiny-xtts"
    assert synth.default_voice == SPEAKERS[0]
    assert synth.sample_rate == TINY_RATE and synth.device.type == "cpu" and not synth.half_precision
    assert synth.stream_chunk_size == CPU_STREAM_CHUNK_SIZE


def test_device_names_are_checked():
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="cpu or cuda"):
        pick_device("mps")
    with pytest.raises(ValueError, match="not a device name"):
        pick_device("gpu please")
    if not torch.cuda.is_available():
        assert pick_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="no CUDA device"):
            pick_device("cuda")


def test_streams_float32_chunks_at_24khz_of_the_generated_length(synth, counters, chunk_size):
    """Noise from random weights: checks the framing, not the sound."""
    chunk_size(8)
    chunks = asyncio.run(collect(synth, "Hello there, how are you?"))

    expected_decodes = GENERATED_TOKENS // 8 + 1  # one every 8 tokens, and the last when the generator ends
    assert counters["tokens"] == GENERATED_TOKENS
    assert counters["decodes"] == expected_decodes
    assert len(chunks) >= expected_decodes  # one per decode, plus what the resampler hands back at the end
    assert all(chunk.dtype == np.float32 and chunk.ndim == 1 and chunk.size for chunk in chunks)
    audio = np.concatenate(chunks)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    # The crossfaded chunks add up to the whole generation: every token's samples, resampled to 24 kHz.
    expected = GENERATED_TOKENS * SAMPLES_PER_TOKEN * OUTPUT_RATE / TINY_RATE
    assert abs(audio.size - expected) <= 2


def test_closing_the_stream_stops_generation_between_tokens(synth, counters, chunk_size):
    """Barge-in: after the first chunk the listener leaves; the model must not write the rest."""
    chunk_size(10)  # a full generation is 24 tokens in 3 decodes (after tokens 10, 20 and 24)

    async def listen_then_leave():
        async with aclosing(synth.synthesize("This sentence will be interrupted.")) as chunks:
            await anext(chunks)
            tokens_when_leaving = counters["tokens"]
        await until_worker_idle(synth)
        return tokens_when_leaving

    tokens_when_leaving = asyncio.run(listen_then_leave())
    assert counters["decodes"] == 1
    assert counters["tokens"] <= tokens_when_leaving + 3
    assert counters["tokens"] < 2 * 10 < GENERATED_TOKENS


def test_a_cloned_voice_is_conditioned_once_for_every_sentence(synth, monkeypatch, chunk_size):
    calls = {"gpt": 0, "speaker": 0}
    real_gpt, real_speaker = synth.model.get_gpt_cond_latents, synth.model.get_speaker_embedding

    def gpt_latents(*args, **kwargs):
        calls["gpt"] += 1
        return real_gpt(*args, **kwargs)

    def speaker_embedding(*args, **kwargs):
        calls["speaker"] += 1
        return real_speaker(*args, **kwargs)

    monkeypatch.setattr(synth.model, "get_gpt_cond_latents", gpt_latents)
    monkeypatch.setattr(synth.model, "get_speaker_embedding", speaker_embedding)
    chunk_size(4)
    reference = "narrator" + find_clip(REFERENCE_CLIP).path.suffix

    async def two_sentences():
        for sentence in ("First sentence.", "Second sentence."):
            assert (await first_chunk(synth, sentence, reference)).size

    asyncio.run(two_sentences())
    assert calls == {"gpt": 1, "speaker": 1}
    cloned = synth.voice_latents(reference)
    assert cloned.gpt_cond_latent.shape == (1, 32, MODEL_DIM) and cloned.speaker_embedding.shape == (1, 512, 1)
    assert not torch.equal(cloned.speaker_embedding, synth.voice_latents(None).speaker_embedding)


def test_builtin_speakers_come_from_the_file_and_unknown_names_fall_back_once(synth, checkpoint, caplog, chunk_size):
    speakers = torch.load(checkpoint / "speakers_xtts.pth")
    chosen = synth.voice_latents(SPEAKERS[1])
    assert torch.equal(chosen.gpt_cond_latent, speakers[SPEAKERS[1]]["gpt_cond_latent"])

    chunk_size(4)
    with caplog.at_level(logging.WARNING, logger="voxloop.voice.tts_xtts"):
        asyncio.run(first_chunk(synth, "Hi.", "alloy"))
        asyncio.run(first_chunk(synth, "Hi again.", "alloy"))
    warnings = [record for record in caplog.records if "alloy" in record.getMessage()]
    assert len(warnings) == 1 and SPEAKERS[0] in warnings[0].getMessage()
    assert synth.voice_latents("alloy") is synth.voice_latents(SPEAKERS[0])


def test_an_unreadable_reference_clip_falls_back_to_the_default_voice(synth, caplog):
    with caplog.at_level(logging.WARNING, logger="voxloop.voice.tts_xtts"):
        assert synth.voice_latents("broken") is synth.voice_latents(None)
    assert "cannot read the voice reference clip" in caplog.text


def test_clients_pick_clips_by_name_inside_the_voice_folder_and_never_by_path(synth, voice_dir, caplog):
    clip_name = "narrator" + find_clip(REFERENCE_CLIP).path.suffix
    assert synth.voice_clip("narrator") == voice_dir / clip_name  # ".wav" is added only when the file has it
    assert synth.voice_clip(clip_name) == voice_dir / clip_name
    real_clip_path = str(find_clip(REFERENCE_CLIP).path)
    for name in (real_clip_path, f"../{voice_dir.name}/{clip_name}", str(voice_dir / clip_name), ".hidden", ""):
        assert synth.voice_clip(name) is None, name
    with caplog.at_level(logging.WARNING, logger="voxloop.voice.tts_xtts"):
        assert synth.voice_latents(real_clip_path) is synth.voice_latents(None)
    assert "neither a built-in speaker nor a clip in" in caplog.text


def test_long_text_is_cut_into_pieces_xtts_accepts(synth):
    pieces = synth._pieces("word " * 120)
    assert len(pieces) == 3 and all(len(piece) <= 250 for piece in pieces)
    assert " ".join(pieces) == ("word " * 120).strip()
    assert synth._pieces("  \n ") == []


def test_an_unknown_language_is_refused(checkpoint):
    with pytest.raises(ValueError, match="xx"):
        XttsSynthesizer(checkpoint, device="cpu", language="xx")


def _says_both_ways(message: str) -> None:
    assert "--xtts-dir" in message and f"{TOS_ENV}=1" in message


def test_a_missing_xtts_dir_says_how_to_get_the_weights(tmp_path):
    with pytest.raises(ModelNotFoundError) as missing:
        resolve_checkpoint_dir(tmp_path / "nowhere")
    _says_both_ways(str(missing.value))
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="model.pth, vocab.json") as partial:
        resolve_checkpoint_dir(tmp_path / "partial")
    _says_both_ways(str(partial.value))


def test_no_dir_and_no_licence_acceptance_is_refused_before_any_download(tmp_path, monkeypatch):
    monkeypatch.delenv(TOS_ENV, raising=False)
    monkeypatch.setenv("TTS_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as refused:
        resolve_checkpoint_dir(None)
    _says_both_ways(str(refused.value))
    assert not any(tmp_path.iterdir())  # the model manager never ran


def test_no_dir_offline_with_the_licence_accepted_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv(TOS_ENV, "1")
    monkeypatch.setenv("TTS_HOME", str(tmp_path / "tts"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError, match="could not fetch") as offline:
        resolve_checkpoint_dir(None)
    _says_both_ways(str(offline.value))
