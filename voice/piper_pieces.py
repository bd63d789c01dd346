"""A Piper voice decoded a few frames at a time, so that a clause's first audio comes before its last.

A Piper voice is one VITS graph. Its front (text encoder, duration predictor and flow) turns a
sentence's phonemes into latent frames, one per `hop_length` output samples, and its HiFi-GAN
decoder turns the frames into audio. The decoder is most of a clause's time, and it is
convolutional: each sample depends only on the frames near it. So the graph is cut in two at the
decoder's input. The front runs on the whole sentence, as it must (durations and the flow see
all of it), and the decoder runs on a few frames at a time, each piece with `CONTEXT_FRAMES` of
its neighbours on either side, which gives the samples of one whole pass to within float
rounding (tests/test_piper_pieces.py). The first piece is short, so the user hears the reply
after the front and a small part of the decoder; later pieces are longer, as the audio already
queued covers their time.

Piper scales every sentence to full scale once it has all of it. A piece cannot wait for that,
so the voice gets one gain, set at load from a few sentences (`calibrated_gain`): the loudness
no longer jumps from one sentence to the next, and the loudest sentences stay just below full
scale.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# The decoder's first convolution, by the weight name Piper's VITS export gives it.
DECODER_ENTRY_WEIGHT = "dec.conv_pre.weight"
# Neighbouring frames decoded with each piece and then dropped. 16 gives the whole pass's samples
# to within 1e-6 on the bundled voice; 8 was off by up to 1e-3.
CONTEXT_FRAMES = 16
# The first piece is about 190 ms of audio at 22.05 kHz, of which Piper's lead-in silence takes
# 40-60 ms; the second must be ready before the first has played, the rest have more time.
PIECE_FRAMES = (16, 48, 128)
CALIBRATION_TEXT = ("Ask not what your country can do for you. Absolutely, I can help with that! "
                    "What would you like to know about the weather today?")
# Where the loudest calibration sentence peaks: some headroom for sentences louder still, which clip.
CALIBRATION_PEAK = 0.9


class UnsplittableVoice(Exception):
    """The voice's graph has no decoder that can be cut off and run on its own."""


def split_voice_graph(model) -> tuple[object, object, str]:
    """(front, decoder, latent name): the voice's ONNX graph cut at the decoder's input.

    The front takes the voice's inputs and gives the latent frames; the decoder takes only
    those. A multi-speaker voice, which conditions its decoder on the speaker too, raises
    UnsplittableVoice."""
    import onnx.utils

    inputs = [graph_input.name for graph_input in model.graph.input]
    if inputs != ["input", "input_lengths", "scales"]:
        raise UnsplittableVoice(f"the graph takes {inputs}, not a single-speaker voice's input, input_lengths, scales")
    entry = next((node for node in model.graph.node if node.op_type == "Conv" and DECODER_ENTRY_WEIGHT in node.input), None)
    if entry is None:
        raise UnsplittableVoice(f"no convolution with the weight {DECODER_ENTRY_WEIGHT!r}: not a Piper VITS export")
    latent = entry.input[0]
    extractor = onnx.utils.Extractor(model)
    try:
        front = extractor.extract_model(inputs, [latent])
        decoder = extractor.extract_model([latent], [model.graph.output[0].name])
    except Exception as exc:  # onnx raises assorted types for a graph it cannot cut there
        raise UnsplittableVoice(f"cannot cut the graph at {latent!r}: {exc}") from exc
    produced = {output for node in decoder.graph.node for output in node.output}
    constants = {initializer.name for initializer in decoder.graph.initializer}
    missing = {name for node in decoder.graph.node for name in node.input if name} - produced - constants - {latent}
    if missing:
        raise UnsplittableVoice(f"the decoder needs more than the latent frames: {sorted(missing)}")
    return front, decoder, latent


def piece_bounds(frames: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of each piece of `frames` latent frames, in order."""
    start, index = 0, 0
    while start < frames:
        stop = min(frames, start + PIECE_FRAMES[min(index, len(PIECE_FRAMES) - 1)])
        yield start, stop
        start, index = stop, index + 1


class PiecewisePiperVoice:
    """Text to audio pieces (float32 at `sample_rate`) through a Piper voice cut in two.

    `voice` is a `piper.PiperVoice`, used for its phonemes and settings only; the two sessions
    hold the model."""

    def __init__(self, voice, model_path: str, session_options, providers):
        import onnx
        import onnxruntime

        self.voice = voice
        front, decoder, self.latent_name = split_voice_graph(onnx.load(model_path))
        self.front = onnxruntime.InferenceSession(front.SerializeToString(), sess_options=session_options, providers=providers)
        self.decoder = onnxruntime.InferenceSession(decoder.SerializeToString(), sess_options=session_options, providers=providers)
        self.sample_rate = int(voice.config.sample_rate)
        self.hop_length = int(voice.config.hop_length)
        self.gain = 1.0
        self.gain = calibrated_gain(self)

    @property
    def sessions(self):
        return self.front, self.decoder

    def latent(self, phoneme_ids: list[int], noise_scale: float | None = None) -> np.ndarray:
        """The sentence's latent frames, (1, channels, frames)."""
        config = self.voice.config
        feeds = {
            "input": np.array([phoneme_ids], dtype=np.int64),
            "input_lengths": np.array([len(phoneme_ids)], dtype=np.int64),
            "scales": np.array([config.noise_scale if noise_scale is None else noise_scale, config.length_scale,
                                config.noise_w_scale], dtype=np.float32),
        }
        return self.front.run(None, feeds)[0]

    def decode(self, latent: np.ndarray, start: int, stop: int) -> np.ndarray:
        """The samples of frames start..stop, decoded with their neighbours for context."""
        frames = latent.shape[2]
        low, high = max(0, start - CONTEXT_FRAMES), min(frames, stop + CONTEXT_FRAMES)
        audio = self.decoder.run(None, {self.latent_name: latent[:, :, low:high]})[0].reshape(-1)
        offset = (start - low) * self.hop_length
        return audio[offset:offset + (stop - start) * self.hop_length]

    def pieces(self, latent: np.ndarray) -> Iterator[np.ndarray]:
        """The latent frames as audio, piece by piece, at the voice's gain."""
        for start, stop in piece_bounds(latent.shape[2]):
            yield np.clip(self.decode(latent, start, stop) * self.gain, -1.0, 1.0).astype(np.float32, copy=False)

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        for phonemes in self.voice.phonemize(text):
            if phonemes:
                yield from self.pieces(self.latent(self.voice.phonemes_to_ids(phonemes)))


def calibrated_gain(voice: PiecewisePiperVoice) -> float:
    """The gain that brings the loudest of a few sentences to CALIBRATION_PEAK (it also warms both sessions up)."""
    peaks = []
    for phonemes in voice.voice.phonemize(CALIBRATION_TEXT):
        if phonemes:
            latent = voice.latent(voice.voice.phonemes_to_ids(phonemes))
            peaks.append(float(np.abs(voice.decode(latent, 0, latent.shape[2])).max()))
    loudest = max(peaks, default=0.0)
    return CALIBRATION_PEAK / loudest if loudest > 1e-4 else 1.0
