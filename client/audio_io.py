"""Audio I/O for the live client: the `AudioDevice` protocol and its implementation on sounddevice (PortAudio).

The client logic talks to the protocol only, so tests drive it with a scripted device. The protocol's side is
always the wire format (mono float32 at 24 kHz); a device converts to and from its own rate (often 44.1 or
48 kHz) itself.

Playback is described on one timeline, in milliseconds of reply audio: `play()` says where the samples it
queues will start, and `played_ms` is how far the speaker has got. Dropped (flushed) audio never takes up
time on it, so "how much of an item was heard" is `played_ms - start`, clamped to the item's length.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from voxloop.codecs.pcm import WIRE_RATE
from voxloop.codecs.resample import StreamResampler

BLOCK_MS = 20  # the mic/speaker block: barge-in silences the speaker within one of these
# PortAudio's "high" suggested latency (tens of ms): "low" underruns on a busy machine or through PulseAudio,
# and every underrun is an audible click.
DEVICE_LATENCY = "high"

MicCallback = Callable[[np.ndarray, float], None]


class AudioDeviceError(RuntimeError):
    """No usable microphone or speaker, or PortAudio is missing; the message says what to do."""


class AudioDevice(Protocol):
    input_latency_ms: float  # capture to delivery, as the device reports it
    output_latency_ms: float  # hand-over to audible, as the device reports it

    def start(self, on_mic_block: MicCallback) -> None:
        """Start capture and playback. `on_mic_block(samples, captured_at)` receives each mic block (wire
        rate) on the device's own thread; `captured_at` is the `time.monotonic()` of its last sample."""

    def play(self, samples: np.ndarray) -> float:
        """Queue reply audio (wire rate); returns the playback-timeline position (ms) where it starts."""

    def end_of_audio(self) -> None:
        """No more audio follows for now: push out what the resampler still holds."""

    def flush(self) -> None:
        """Drop all queued audio: the speaker goes silent within one block."""

    @property
    def played_ms(self) -> float:
        """Playback-timeline position: reply audio handed to the speaker so far."""

    @property
    def queued_ms(self) -> float:
        """Reply audio waiting to be played."""

    def take_played(self) -> np.ndarray:
        """Everything handed to the speaker (silence included) since the last call, at the wire rate:
        the echo canceller's far-end reference."""

    def close(self) -> None:
        """Stop and release the streams."""


class PlaybackBuffer:
    """The speaker queue shared by the audio thread (`read`) and the client (`write`, `flush`).

    `write` resamples to the device rate on the caller's thread, so the audio callback only copies."""

    def __init__(self, device_rate: int, keep_reference_s: float = 2.0):
        self.device_rate = device_rate
        self._lock = threading.Lock()
        self._chunks: deque[np.ndarray] = deque()
        self._head = 0  # samples of the first chunk already read
        self._queued = 0  # device samples waiting
        self._played = 0  # device samples of reply audio handed over
        self._timeline_base_ms = 0.0  # where the audio written since the last flush starts
        self._written_since_base = 0  # wire samples written since the last flush
        self._resampler = StreamResampler(WIRE_RATE, device_rate)
        self._reference: deque[np.ndarray] = deque()
        self._reference_samples = 0
        self._reference_limit = int(keep_reference_s * device_rate)

    def write(self, samples: np.ndarray) -> float:
        samples = np.asarray(samples, dtype=np.float32)
        with self._lock:
            start_ms = self._timeline_base_ms + self._written_since_base * 1000.0 / WIRE_RATE
            self._written_since_base += samples.size
            self._append(self._resampler.process(samples))
        return start_ms

    def end_of_audio(self) -> None:
        with self._lock:
            self._append(self._resampler.flush())
            self._resampler = StreamResampler(WIRE_RATE, self.device_rate)

    def _append(self, device_samples: np.ndarray) -> None:
        if device_samples.size:
            self._chunks.append(device_samples)
            self._queued += device_samples.size

    def read(self, frames: int) -> np.ndarray:
        """`frames` device samples for the speaker: queued audio, then silence."""
        out = np.zeros(frames, dtype=np.float32)
        with self._lock:
            filled = 0
            while filled < frames and self._chunks:
                chunk = self._chunks[0]
                take = min(frames - filled, chunk.size - self._head)
                out[filled:filled + take] = chunk[self._head:self._head + take]
                filled += take
                self._head += take
                if self._head == chunk.size:
                    self._chunks.popleft()
                    self._head = 0
            self._queued -= filled
            self._played += filled
            self._reference.append(out)
            self._reference_samples += frames
            while len(self._reference) > 1 and self._reference_samples - self._reference[0].size >= self._reference_limit:
                self._reference_samples -= self._reference.popleft().size
        return out

    def flush(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._head = 0
            self._queued = 0
            self._timeline_base_ms = self._played * 1000.0 / self.device_rate
            self._written_since_base = 0
            self._resampler = StreamResampler(WIRE_RATE, self.device_rate)

    def take_reference(self) -> np.ndarray:
        with self._lock:
            blocks = list(self._reference)
            self._reference.clear()
            self._reference_samples = 0
        return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)

    @property
    def played_ms(self) -> float:
        with self._lock:
            return self._played * 1000.0 / self.device_rate

    @property
    def queued_ms(self) -> float:
        with self._lock:
            return self._queued * 1000.0 / self.device_rate


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    host_api: str
    input_channels: int
    output_channels: int
    default_rate: int
    is_default_input: bool
    is_default_output: bool


def _sounddevice():
    try:
        import sounddevice
    except OSError as exc:  # the wheel needs the system's PortAudio on Linux
        raise AudioDeviceError(f"cannot load PortAudio ({exc}). Install it: `apt install libportaudio2` "
                               "(or your system's PortAudio package).") from None
    _silence_alsa_messages()
    return sounddevice


_alsa_error_handler = None  # kept alive for as long as alsa-lib may call it


def _silence_alsa_messages() -> None:
    """alsa-lib prints each xrun to stderr ("ALSA lib pcm.c: underrun occurred"), which tears up the live
    screen. PortAudio reports the same in the stream status, and those are counted instead."""
    global _alsa_error_handler
    if _alsa_error_handler is not None or not sys.platform.startswith("linux"):
        return
    library = ctypes.util.find_library("asound")
    if library is None:
        return
    try:
        asound = ctypes.CDLL(library)
    except OSError:
        return
    handler_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)
    _alsa_error_handler = handler_type(lambda *args: None)
    asound.snd_lib_error_set_handler(_alsa_error_handler)


def list_devices() -> list[DeviceInfo]:
    sd = _sounddevice()
    devices = sd.query_devices()
    apis = sd.query_hostapis()
    default_in, default_out = sd.default.device
    return [DeviceInfo(index, info["name"], apis[info["hostapi"]]["name"], info["max_input_channels"],
                       info["max_output_channels"], int(info["default_samplerate"]), index == default_in, index == default_out)
            for index, info in enumerate(devices)]


def parse_device(text: str | None) -> int | str | None:
    """A device given on the command line: an index from `--list-devices`, or part of its name."""
    if text is None:
        return None
    return int(text) if text.strip().isdigit() else text


class BufferedPlayback:
    """The playback half of an `AudioDevice`, for devices that play from a `PlaybackBuffer`."""

    _playback: PlaybackBuffer

    def play(self, samples: np.ndarray) -> float:
        return self._playback.write(samples)

    def end_of_audio(self) -> None:
        self._playback.end_of_audio()

    def flush(self) -> None:
        self._playback.flush()

    @property
    def played_ms(self) -> float:
        return self._playback.played_ms

    @property
    def queued_ms(self) -> float:
        return self._playback.queued_ms

    def take_played(self) -> np.ndarray:
        return self._playback.take_reference()


class SoundDeviceAudio(BufferedPlayback):
    """The default (or chosen) microphone and speaker through PortAudio, resampled to the wire rate."""

    def __init__(self, input_device: int | str | None = None, output_device: int | str | None = None,
                 block_ms: int = BLOCK_MS):
        sd = self._sd = _sounddevice()
        self.input_info = _find_device(sd, input_device, "input")
        self.output_info = _find_device(sd, output_device, "output")
        self.input_rate = int(self.input_info["default_samplerate"])
        self.output_rate = int(self.output_info["default_samplerate"])
        self.block_ms = block_ms
        self.input_latency_ms = 0.0
        self.output_latency_ms = 0.0
        self._playback = PlaybackBuffer(self.output_rate)
        self._mic_resampler = StreamResampler(self.input_rate, WIRE_RATE)
        self._reference_resampler = StreamResampler(self.output_rate, WIRE_RATE)
        self._input_stream = None
        self._output_stream = None
        self.underruns = 0
        self.overflows = 0

    @property
    def description(self) -> str:
        return (f"mic: {self.input_info['name']} @ {self.input_rate} Hz, "
                f"speaker: {self.output_info['name']} @ {self.output_rate} Hz")

    def start(self, on_mic_block: MicCallback) -> None:
        sd = self._sd

        def capture(indata, frames, time_info, status) -> None:
            if status.input_overflow:
                self.overflows += 1
            mono = indata.mean(axis=1) if indata.shape[1] > 1 else indata[:, 0]
            samples = self._mic_resampler.process(mono)
            if samples.size:
                on_mic_block(samples, time.monotonic() - self.input_latency_ms / 1000.0)

        def render(outdata, frames, time_info, status) -> None:
            if status.output_underflow:
                self.underruns += 1
            outdata[:] = self._playback.read(frames)[:, None]

        try:
            self._output_stream = self._open(sd.OutputStream, self.output_info, self.output_rate, render)
            self._input_stream = self._open(sd.InputStream, self.input_info, self.input_rate, capture)
            self.input_latency_ms = float(self._input_stream.latency) * 1000.0
            self.output_latency_ms = float(self._output_stream.latency) * 1000.0
            self._output_stream.start()
            self._input_stream.start()
        except sd.PortAudioError as exc:
            self.close()
            raise AudioDeviceError(f"cannot open the audio devices ({self.description}): {exc}") from None

    def _open(self, stream_type, info: dict, rate: int, callback):
        # Some hardware devices take only stereo; mono is tried first because it is what we have. The callbacks
        # average stereo input and copy mono output to every channel.
        limit = info["max_input_channels" if stream_type is self._sd.InputStream else "max_output_channels"]
        channel_options = [1] + ([2] if limit >= 2 else [])
        for attempt, channels in enumerate(channel_options):
            try:
                return stream_type(device=info["index"], samplerate=rate, channels=channels, dtype="float32",
                                   blocksize=rate * self.block_ms // 1000, latency=DEVICE_LATENCY, callback=callback)
            except self._sd.PortAudioError:
                if attempt == len(channel_options) - 1:
                    raise
        raise AssertionError("unreachable")

    def take_played(self) -> np.ndarray:
        return self._reference_resampler.process(self._playback.take_reference())

    def close(self) -> None:
        for stream in (self._input_stream, self._output_stream):
            if stream is not None:
                try:
                    stream.abort()
                    stream.close()
                except self._sd.PortAudioError:
                    pass
        self._input_stream = self._output_stream = None


def _find_device(sd, device: int | str | None, kind: str) -> dict:
    what = "microphone" if kind == "input" else "speaker"
    try:
        info = dict(sd.query_devices(device, kind))
    except (ValueError, sd.PortAudioError) as exc:
        if device is None:
            raise AudioDeviceError(f"no default {what} found (PortAudio: {exc}). Connect one, pick one with "
                                   f"--{kind}-device (see `voxloop talk --list-devices`), or talk from a file with "
                                   "--input.") from None
        raise AudioDeviceError(f"no {what} matches {device!r} ({exc}); see `voxloop talk --list-devices`.") from None
    return info
