"""The bundled Piper voice cut at its decoder and decoded a few frames at a time (voice/piper_pieces.py)."""

import asyncio
from contextlib import aclosing

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from voxloop.voice import piper_pieces
from voxloop.voice.piper_pieces import (PIECE_FRAMES, PiecewisePiperVoice, UnsplittableVoice, piece_bounds,
                                        split_voice_graph)
from voxloop.voice.tts import OUTPUT_RATE, PiperSynthesizer, WholeSentencePiperVoice, bundled_piper_voice

LONG_SENTENCE = "The history of printing is a long and fascinating story that begins in China, many centuries ago."


@pytest.fixture(scope="module")
def piper():
    tts = PiperSynthesizer()
    assert isinstance(tts.voice, PiecewisePiperVoice)  # the bundled voice can be cut
    return tts


def latent_of(voice: PiecewisePiperVoice, text: str, noise_scale: float | None = None) -> np.ndarray:
    return voice.latent(voice.voice.phonemes_to_ids(voice.voice.phonemize(text)[0]), noise_scale)


def test_the_two_halves_give_the_whole_graphs_audio(piper):
    voice = piper.voice
    phoneme_ids = voice.voice.phonemes_to_ids(voice.voice.phonemize("Sure, I can help with that.")[0])
    # Without noise the graph is deterministic, so the cut and the whole graph can be compared.
    whole = onnxruntime.InferenceSession(str(bundled_piper_voice()), providers=["CPUExecutionProvider"])
    config = voice.voice.config
    expected = whole.run(None, {"input": np.array([phoneme_ids], dtype=np.int64),
                                "input_lengths": np.array([len(phoneme_ids)], dtype=np.int64),
                                "scales": np.array([0.0, config.length_scale, 0.0], dtype=np.float32)})[0].reshape(-1)
    latent = voice.latent(phoneme_ids, noise_scale=0.0, noise_w_scale=0.0)
    audio = voice.decode(latent, 0, latent.shape[2])
    assert audio.size == expected.size == latent.shape[2] * voice.hop_length
    assert np.abs(audio - expected).max() < 1e-5


def test_pieces_join_into_the_samples_of_one_whole_decode(piper):
    voice = piper.voice
    latent = latent_of(voice, LONG_SENTENCE)
    whole = voice.decode(latent, 0, latent.shape[2])
    pieces = [voice.decode(latent, start, stop) for start, stop in piece_bounds(latent.shape[2])]
    assert len(pieces) >= 4
    assert pieces[0].size == PIECE_FRAMES[0] * voice.hop_length  # the first audio is a small part of the clause
    assert np.abs(np.concatenate(pieces) - whole).max() < 1e-4


def test_without_enough_context_the_pieces_would_click(piper, monkeypatch):
    """The join above is exact because of the context frames found at load: with fewer the edges differ."""
    voice = piper.voice
    assert voice.context_frames == 10  # the bundled voice's decoder sees 9-10 frames either way
    latent = latent_of(voice, LONG_SENTENCE)
    whole = voice.decode(latent, 0, latent.shape[2])
    for context, least_error in ((0, 1e-2), (8, 1e-4)):
        monkeypatch.setattr(voice, "context_frames", context)
        pieces = [voice.decode(latent, start, stop) for start, stop in piece_bounds(latent.shape[2])]
        assert np.abs(np.concatenate(pieces) - whole).max() > least_error, context


def test_a_voice_whose_pieces_never_join_is_decoded_whole(monkeypatch):
    """A decoder that sees further than any context tried is not cut, and Piper decodes it whole."""
    monkeypatch.setattr(piper_pieces, "CONTEXT_FRAMES_TRIED", (4,))
    tts = PiperSynthesizer()
    assert isinstance(tts.voice, WholeSentencePiperVoice)


def test_piece_bounds_cover_every_frame_once_growing_to_the_longest_piece():
    for frames in (1, 15, 16, 17, 64, 65, 500):
        bounds = list(piece_bounds(frames))
        assert bounds[0][0] == 0 and bounds[-1][1] == frames
        assert all(stop == next_start for (_, stop), (next_start, _) in zip(bounds, bounds[1:]))
        sizes = [stop - start for start, stop in bounds]
        assert sizes[:-1] == [PIECE_FRAMES[min(i, len(PIECE_FRAMES) - 1)] for i in range(len(sizes) - 1)]
    assert list(piece_bounds(0)) == []


def test_the_voice_is_loud_and_never_past_full_scale(piper):
    async def speak():
        async with aclosing(piper.synthesize("Hello, how can I help you today? Ask me anything!")) as chunks:
            return np.concatenate([chunk async for chunk in chunks])

    audio = asyncio.run(speak())
    assert 2.0 < audio.size / OUTPUT_RATE < 6.0
    assert np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio ** 2)) > 0.04  # Piper's own, normalized to full scale: about 0.08-0.12


def test_closing_the_clause_stops_its_decoder(piper, monkeypatch):
    """Barge-in: once the reader has gone, the worker decodes nothing more. Each piece is a job of
    its own, asked for when the one before it is taken, so only the piece read was decoded."""
    voice = piper.voice
    decoded = []
    real_decode = voice.decode
    monkeypatch.setattr(voice, "decode", lambda latent, start, stop: decoded.append(stop) or real_decode(latent, start, stop))
    total = len(list(piece_bounds(latent_of(voice, LONG_SENTENCE).shape[2])))

    async def first_chunk_only():
        async with aclosing(piper.synthesize(LONG_SENTENCE)) as chunks:
            async for _ in chunks:
                break
        await piper._worker.run(lambda: None)  # the worker is idle

    asyncio.run(first_chunk_only())
    assert total >= 4 and len(decoded) == 1, (decoded, total)


def _graph(inputs: list[str], with_decoder: bool) -> onnx.ModelProto:
    """A toy graph from `inputs` to `output`, with a convolution weighted like Piper's decoder entry or not."""
    weight = helper.make_tensor("dec.conv_pre.weight" if with_decoder else "other.weight", TensorProto.FLOAT,
                                [1, 1, 1], [1.0])
    nodes = [helper.make_node("Cast", [inputs[0]], ["latent"], to=TensorProto.FLOAT),
             helper.make_node("Conv", ["latent", weight.name], ["output"])]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info(name, TensorProto.INT64, [1, 1, None])
                                             for name in inputs],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, None])], [weight],
                              value_info=[helper.make_tensor_value_info("latent", TensorProto.FLOAT, [1, 1, None])])
    return helper.make_model(graph)


def test_a_graph_without_piper_s_decoder_cannot_be_cut():
    front, decoder, latent = split_voice_graph(_graph(["input", "input_lengths", "scales"], with_decoder=True))
    assert latent == "latent" and [i.name for i in decoder.graph.input] == ["latent"]
    with pytest.raises(UnsplittableVoice, match="not a Piper VITS export"):
        split_voice_graph(_graph(["input", "input_lengths", "scales"], with_decoder=False))
    with pytest.raises(UnsplittableVoice, match="single-speaker"):  # the decoder would need the speaker too
        split_voice_graph(_graph(["input", "input_lengths", "scales", "sid"], with_decoder=True))


def test_whole_sentences_is_piper_s_own_synthesis():
    tts = PiperSynthesizer(whole_sentences=True)
    assert isinstance(tts.voice, WholeSentencePiperVoice)

    async def speak():
        async with aclosing(tts.synthesize("Hello there.")) as chunks:
            return np.concatenate([chunk async for chunk in chunks])

    audio = asyncio.run(speak())
    assert 0.4 < audio.size / OUTPUT_RATE < 3.0 and np.abs(audio).max() > 0.9  # Piper scales it to full scale


def test_serve_s_flag_chooses_whole_sentences():
    from voxloop.client.cli import _model_options, build_parser
    from voxloop.voice.models import build_tts

    def options(*flags: str):
        return _model_options(build_parser().parse_args(["serve", *flags]))

    assert not options().piper_whole_sentences
    assert isinstance(build_tts(options("--piper-whole-sentences")).voice, WholeSentencePiperVoice)


def test_serve_s_piece_sizes_reach_the_voice_and_its_pieces_follow_them():
    from voxloop.client.cli import _model_options, build_parser
    from voxloop.voice.models import build_tts

    options = _model_options(build_parser().parse_args(["serve", "--piper-piece-frames", "16,64,256"]))
    voice = build_tts(options).voice
    assert voice.piece_frames == (16, 64, 256)
    latent = latent_of(voice, LONG_SENTENCE)
    sizes = [piece.size // voice.hop_length for piece in voice.pieces(latent)]
    assert sizes[:2] == [16, 64] and sum(sizes) == latent.shape[2]  # not the default 16, 32
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--piper-piece-frames", "16,0"])
