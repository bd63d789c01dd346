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

The front is cut once more, before its flow: a stack of coupling layers whose convolutions see
a few dozen frames either way, and which took about half of the front's time (110 of 200 ms on a
150-character clause, one thread). The text encoder and the duration predictor (the prior) run
on the whole sentence, and the flow first on just the frames the first piece needs, with its own
context (found at load like the decoder's), then on the rest at once. The first audio then waits
for a part of the flow only, and a long later clause's no longer waits for all of it.

Piper scales every sentence to full scale once it has all of it. A piece cannot wait for that,
so the voice gets one gain, set at load from a few sentences (`calibrate`): the loudness no
longer jumps from one sentence to the next, and the loudest sentences stay just below full
scale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

# The decoder's first convolution, by the weight name Piper's VITS export gives it.
DECODER_ENTRY_WEIGHT = "dec.conv_pre.weight"
# Neighbouring frames decoded with each piece and then dropped, tried in this order at load: the
# first with which pieces give the samples of a whole pass is kept.
CONTEXT_FRAMES_TRIED = (10, 16, 24, 32, 48)
# The same for the flow, whose receptive field is wider: Piper's VITS has 4 coupling layers of 4
# convolutions of width 5, which is 32 frames either way.
FLOW_CONTEXT_FRAMES_TRIED = (32, 40, 48, 64, 96)
# The flow's modules, by the node names Piper's VITS export gives them.
FLOW_NODE_PREFIX = "/flow/"
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


def split_flow(front, latent: str) -> tuple[object, object, str, str] | None:
    """(prior, flow, prior name, mask name): the front cut at its flow's input, or None if it has
    no flow that can be cut off.

    The prior takes the voice's inputs and gives the flow's input (the noisy prior frames) and the
    frames' mask; the flow takes those two and gives the latent frames."""
    import onnx.utils

    graph = front.graph
    producer = {output: node for node in graph.node for output in node.output}
    if latent not in producer:
        return None
    flow_nodes = _flow_region(graph, producer, latent)
    if not flow_nodes:
        return None
    made_inside = {output for node in flow_nodes for output in node.output}
    constants = {initializer.name for initializer in graph.initializer}
    constants |= {output for node in graph.node if node.op_type == "Constant" for output in node.output}
    entering = {name for node in flow_nodes for name in node.input
                if name and name not in made_inside and name not in constants}
    masks = [name for name in producer[latent].input if name in entering]  # the latent is the flow's output times the mask
    if len(entering) != 2 or len(masks) != 1:
        return None
    (prior_name,) = entering - set(masks)
    extractor = onnx.utils.Extractor(front)
    try:
        prior = extractor.extract_model([graph_input.name for graph_input in graph.input], [prior_name, masks[0]])
        flow = extractor.extract_model([prior_name, masks[0]], [latent])
    except Exception:  # onnx raises assorted types for a graph it cannot cut there
        return None
    return prior, flow, prior_name, masks[0]


def _flow_region(graph, producer: dict, latent: str) -> list:
    """The nodes the latent is computed through from the flow's first node on: those `latent`
    depends on that depend on a node named as the flow's."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    after_flow, todo = {}, [node for node in graph.node if node.name.startswith(FLOW_NODE_PREFIX)]
    while todo:
        node = todo.pop()
        if id(node) not in after_flow:
            after_flow[id(node)] = node
            todo.extend(consumer for output in node.output for consumer in consumers.get(output, ()))
    before_latent, todo = {}, [producer[latent]]
    while todo:
        node = todo.pop()
        if id(node) not in before_latent:
            before_latent[id(node)] = node
            todo.extend(producer[name] for name in node.input if name in producer)
    return [node for node in graph.node if id(node) in after_flow and id(node) in before_latent]


def piece_bounds(frames: int, sizes: tuple[int, ...] = PIECE_FRAMES) -> Iterator[tuple[int, int]]:
    """(start, stop) of each piece of `frames` latent frames, in order: `sizes`, then its last size over and over."""
    start, index = 0, 0
    while start < frames:
        stop = min(frames, start + sizes[min(index, len(sizes) - 1)])
        yield start, stop
        start, index = stop, index + 1


class LatentFrames:
    """A sentence's latent frames, put through the voice's flow only as far as they have been asked for.

    The first ask flows just the frames asked for (and the context after them), so that the
    first piece waits for little of the flow; a later one flows all the rest at once, since each
    run of the flow costs its context again. A sentence hardly longer than the first ask and its
    context is flowed whole at once."""

    def __init__(self, prior: np.ndarray, mask: np.ndarray | None,
                 flow: Callable[[np.ndarray, np.ndarray], np.ndarray] | None, context_frames: int | None):
        """`prior`, `mask`: the prior's outputs, (1, channels, frames) and (1, 1, frames).
        `flow` None: `prior` is the latent already. `context_frames` None: the flow's context is
        not known, so the first ask flows the whole sentence."""
        self.count = prior.shape[2]
        self.flowed = self.count if flow is None else 0
        self._prior, self._mask, self._flow, self._context = prior, mask, flow, context_frames
        self._latent = prior if flow is None else np.empty_like(prior)

    def again(self, context_frames: int | None) -> LatentFrames:
        """The same sentence, none of it flowed yet, to be flowed with `context_frames` of context."""
        return LatentFrames(self._prior, self._mask, self._flow, context_frames)

    def until(self, stop: int) -> np.ndarray:
        """The latent with at least its first `stop` frames flowed (those after them are not yet)."""
        if stop > self.flowed:
            start = self.flowed
            if start > 0 or self._context is None or stop + self._context >= self.count:
                stop = self.count
            context = self._context or 0
            low, high = max(0, start - context), min(self.count, stop + context)
            flowed = self._flow(self._prior[:, :, low:high], self._mask[:, :, low:high])
            self._latent[:, :, start:stop] = flowed[:, :, start - low:stop - low]
            self.flowed = stop
        return self._latent


class PiecewisePiperVoice:
    """Text to audio pieces (float32 at `sample_rate`) through a Piper voice cut in three: prior,
    flow and decoder (a voice whose flow cannot be cut off: in two, front and decoder).

    `voice` is a `piper.PiperVoice`, used for its phonemes and settings only; the sessions hold
    the model."""

    def __init__(self, voice, model_path: str, session_options, providers, piece_frames: tuple[int, ...] = PIECE_FRAMES,
                 flow_in_parts: bool = True):
        """`flow_in_parts` False: the front is not cut before its flow, which then runs on the whole sentence."""
        import onnx
        import onnxruntime

        def session(model):
            return onnxruntime.InferenceSession(model.SerializeToString(), sess_options=session_options, providers=providers)

        self.voice = voice
        self.piece_frames = piece_frames
        front, decoder, self.latent_name = split_voice_graph(onnx.load(model_path))
        cut = split_flow(front, self.latent_name) if flow_in_parts else None
        if cut is None:
            self.prior, self.flow = session(front), None
            self._prior_outputs = [self.latent_name]
        else:
            prior, flow, self._flow_input, self._mask_name = cut
            self.prior, self.flow = session(prior), session(flow)
            self._prior_outputs = [self._flow_input, self._mask_name]
        self.decoder = session(decoder)
        self.sample_rate = int(voice.config.sample_rate)
        self.hop_length = int(voice.config.hop_length)
        self.context_frames = CONTEXT_FRAMES_TRIED[-1]
        self.flow_context_frames: int | None = None  # None: each sentence is flowed whole
        self.gain = 1.0
        self.calibrate()

    @property
    def sessions(self):
        return tuple(session for session in (self.prior, self.flow, self.decoder) if session is not None)

    def frames(self, phoneme_ids: list[int], noise_scale: float | None = None,
               noise_w_scale: float | None = None) -> LatentFrames:
        """The sentence through the prior, its frames to be flowed as they are needed. The noise
        scales default to the voice's."""
        config = self.voice.config
        scales = [config.noise_scale if noise_scale is None else noise_scale, config.length_scale,
                  config.noise_w_scale if noise_w_scale is None else noise_w_scale]
        feeds = {
            "input": np.array([phoneme_ids], dtype=np.int64),
            "input_lengths": np.array([len(phoneme_ids)], dtype=np.int64),
            "scales": np.array(scales, dtype=np.float32),
        }
        outputs = self.prior.run(self._prior_outputs, feeds)
        if self.flow is None:
            return LatentFrames(outputs[0], None, None, None)
        return LatentFrames(outputs[0], outputs[1], self._run_flow, self.flow_context_frames)

    def _run_flow(self, prior: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.flow.run(None, {self._flow_input: prior, self._mask_name: mask})[0]

    def latent(self, phoneme_ids: list[int], noise_scale: float | None = None,
               noise_w_scale: float | None = None) -> np.ndarray:
        """The sentence's latent frames, all flowed: (1, channels, frames)."""
        frames = self.frames(phoneme_ids, noise_scale, noise_w_scale)
        return frames.until(frames.count)

    def decode(self, latent: np.ndarray, start: int, stop: int) -> np.ndarray:
        """The samples of frames start..stop, decoded with their neighbours for context."""
        frames = latent.shape[2]
        low, high = max(0, start - self.context_frames), min(frames, stop + self.context_frames)
        audio = self.decoder.run(None, {self.latent_name: latent[:, :, low:high]})[0].reshape(-1)
        offset = (start - low) * self.hop_length
        return audio[offset:offset + (stop - start) * self.hop_length]

    def pieces(self, frames: LatentFrames) -> Iterator[np.ndarray]:
        """The latent frames as audio, piece by piece, at the voice's gain; each piece flows only
        the frames it decodes."""
        for start, stop in piece_bounds(frames.count, self.piece_frames):
            latent = frames.until(min(frames.count, stop + self.context_frames))
            yield np.clip(self.decode(latent, start, stop) * self.gain, -1.0, 1.0).astype(np.float32, copy=False)

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        for phonemes in self.voice.phonemize(text):
            if phonemes:
                yield from self.pieces(self.frames(self.voice.phonemes_to_ids(phonemes)))

    def calibrate(self) -> None:
        """Set the contexts that make pieces join exactly, the decoder's and the flow's, and the
        gain that brings the loudest of a few sentences to CALIBRATION_PEAK. It warms the sessions
        up too."""
        sentences = [self.frames(self.voice.phonemes_to_ids(phonemes))
                     for phonemes in self.voice.phonemize(CALIBRATION_TEXT) if phonemes]
        latents = [frames.until(frames.count) for frames in sentences]
        wholes = [self.decode(latent, 0, latent.shape[2]) for latent in latents]
        longest = max(range(len(latents)), key=lambda index: latents[index].shape[2])
        for context in CONTEXT_FRAMES_TRIED:
            self.context_frames = context
            pieces = [self.decode(latents[longest], start, stop) for start, stop in piece_bounds(latents[longest].shape[2], self.piece_frames)]
            if np.abs(np.concatenate(pieces) - wholes[longest]).max() < JOIN_TOLERANCE:
                break
        else:
            raise UnsplittableVoice(f"its pieces differ from a whole pass even with {context} frames of context")
        if self.flow is not None:
            self._calibrate_flow(sentences[longest], latents[longest])
        loudest = max(float(np.abs(whole).max()) for whole in wholes)
        self.gain = CALIBRATION_PEAK / loudest if loudest > 1e-4 else 1.0

    def _calibrate_flow(self, sentence: LatentFrames, whole: np.ndarray) -> None:
        """The flow's context: the least with which a sentence flowed in two parts, as the pieces
        ask for it, gives its latent flowed whole. With none of those, each sentence is flowed whole."""
        first = min(sentence.count, self.piece_frames[0] + self.context_frames)
        for context in FLOW_CONTEXT_FRAMES_TRIED:
            parts = sentence.again(context)
            parts.until(first)
            if np.abs(parts.until(parts.count) - whole).max() < JOIN_TOLERANCE:
                self.flow_context_frames = context
                return
        self.flow_context_frames = None
