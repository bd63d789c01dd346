"""A Piper voice decoded a few frames at a time, so that a clause's first audio comes before its last.

A Piper voice is one VITS graph. Its front (text encoder, duration predictor and flow) turns a
sentence's phonemes into latent frames, one per `hop_length` output samples, and its HiFi-GAN
decoder turns the frames into audio. The decoder is most of a clause's time, and it is
convolutional: each sample depends only on the frames near it. So the graph is cut in two at the
decoder's input. The front runs on the whole sentence, as it must (durations and the flow see
all of it), and the decoder runs on a few frames at a time, each piece with enough of its
neighbours on either side to cover the decoder's receptive field, which gives the samples of one
whole pass to within float rounding. How many is enough is found at load, on the voice itself
(`PiecewisePiperVoice.calibrate`): 10 for the bundled voice. The first piece is short, so the
user hears the reply after the front and a small part of the decoder; later pieces are longer,
as the audio already queued covers their time. In the voice loop, Piper's step to the first
audio took 92 -> 58 ms at the median (bench/RESULTS.md, `piper-pieces`).

Piper scales every sentence to full scale once it has all of it. A piece cannot wait for that,
so the voice gets one gain, set at load from a few sentences (`calibrate`): the loudness no
longer jumps from one sentence to the next, and the loudest sentences stay just below full
scale.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# The decoder's first convolution, by the weight name Piper's VITS export gives it.
DECODER_ENTRY_WEIGHT = "dec.conv_pre.weight"
# Neighbouring frames decoded with each piece and then dropped, tried in this order at load: the
# first with which pieces give the samples of a whole pass is kept.
CONTEXT_FRAMES_TRIED = (10, 16, 24, 32, 48)
# How far pieces may stray from a whole pass: float rounding is about 1e-6, a receptive field
# cut short shows as 1e-3 and more at the joins.
JOIN_TOLERANCE = 1e-4
# The first piece is about 190 ms of audio at 22.05 kHz, of which Piper's lead-in silence takes
# 40-60 ms; each piece must be decoded before the one before it has played, and each costs its
# context frames on either side again. Doubling keeps every piece well ahead on a loaded machine
# (16, 64, 256 left the second piece late there: sessions share one TTS worker), and no step longer
# than 128 frames (1.5 s of audio) keeps a piece another session needs soon from waiting long.
PIECE_FRAMES = (16, 32, 64, 128)
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


def piece_bounds(frames: int, sizes: tuple[int, ...] = PIECE_FRAMES) -> Iterator[tuple[int, int]]:
    """(start, stop) of each piece of `frames` latent frames, in order: `sizes`, then its last size over and over."""
    start, index = 0, 0
    while start < frames:
        stop = min(frames, start + sizes[min(index, len(sizes) - 1)])
        yield start, stop
        start, index = stop, index + 1


class PiecewisePiperVoice:
    """Text to audio pieces (float32 at `sample_rate`) through a Piper voice cut in two.

    `voice` is a `piper.PiperVoice`, used for its phonemes and settings only; the two sessions
    hold the model."""

    def __init__(self, voice, model_path: str, session_options, providers, piece_frames: tuple[int, ...] = PIECE_FRAMES):
        import onnx
        import onnxruntime

        self.voice = voice
        self.piece_frames = piece_frames
        front, decoder, self.latent_name = split_voice_graph(onnx.load(model_path))
        self.front = onnxruntime.InferenceSession(front.SerializeToString(), sess_options=session_options, providers=providers)
        self.decoder = onnxruntime.InferenceSession(decoder.SerializeToString(), sess_options=session_options, providers=providers)
        self.sample_rate = int(voice.config.sample_rate)
        self.hop_length = int(voice.config.hop_length)
        self.context_frames = CONTEXT_FRAMES_TRIED[-1]
        self.gain = 1.0
        self.calibrate()

    @property
    def sessions(self):
        return self.front, self.decoder

    def latent(self, phoneme_ids: list[int], noise_scale: float | None = None,
               noise_w_scale: float | None = None) -> np.ndarray:
        """The sentence's latent frames, (1, channels, frames). The noise scales default to the voice's."""
        config = self.voice.config
        scales = [config.noise_scale if noise_scale is None else noise_scale, config.length_scale,
                  config.noise_w_scale if noise_w_scale is None else noise_w_scale]
        feeds = {
            "input": np.array([phoneme_ids], dtype=np.int64),
            "input_lengths": np.array([len(phoneme_ids)], dtype=np.int64),
            "scales": np.array(scales, dtype=np.float32),
        }
        return self.front.run(None, feeds)[0]

    def decode(self, latent: np.ndarray, start: int, stop: int) -> np.ndarray:
        """The samples of frames start..stop, decoded with their neighbours for context."""
        frames = latent.shape[2]
        low, high = max(0, start - self.context_frames), min(frames, stop + self.context_frames)
        audio = self.decoder.run(None, {self.latent_name: latent[:, :, low:high]})[0].reshape(-1)
        offset = (start - low) * self.hop_length
        return audio[offset:offset + (stop - start) * self.hop_length]

    def pieces(self, latent: np.ndarray) -> Iterator[np.ndarray]:
        """The latent frames as audio, piece by piece, at the voice's gain."""
        for start, stop in piece_bounds(latent.shape[2], self.piece_frames):
            yield np.clip(self.decode(latent, start, stop) * self.gain, -1.0, 1.0).astype(np.float32, copy=False)

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        for phonemes in self.voice.phonemize(text):
            if phonemes:
                yield from self.pieces(self.latent(self.voice.phonemes_to_ids(phonemes)))

    def calibrate(self) -> None:
        """Set the context that makes pieces join exactly, and the gain that brings the loudest
        of a few sentences to CALIBRATION_PEAK. It warms both sessions up too."""
        latents = [self.latent(self.voice.phonemes_to_ids(phonemes))
                   for phonemes in self.voice.phonemize(CALIBRATION_TEXT) if phonemes]
        wholes = [self.decode(latent, 0, latent.shape[2]) for latent in latents]
        longest = max(range(len(latents)), key=lambda index: latents[index].shape[2])
        for context in CONTEXT_FRAMES_TRIED:
            self.context_frames = context
            pieces = [self.decode(latents[longest], start, stop) for start, stop in piece_bounds(latents[longest].shape[2], self.piece_frames)]
            if np.abs(np.concatenate(pieces) - wholes[longest]).max() < JOIN_TOLERANCE:
                break
        else:
            raise UnsplittableVoice(f"its pieces differ from a whole pass even with {context} frames of context")
        loudest = max(float(np.abs(whole).max()) for whole in wholes)
        self.gain = CALIBRATION_PEAK / loudest if loudest > 1e-4 else 1.0
