"""Double-talk detection: is the microphone hearing the user, or only the speaker's echo?

WebRTC's AEC3 suppresses whatever its echo model cannot rule out. Until its filter has converged, and for
good when there is no echo path to converge on (headphones), that model assumes the echo could be as loud as
the speaker, and the user's voice over a reply goes with it: offline, a barge-in over the first seconds of a
reply was heard 1.3 s late through AEC3 with no echo at all, and sometimes not at all.

So the client measures the echo path itself, per 10 ms frame, with two cues:
- Level. The coupling is how far below the speaker's level the microphone stays while the speaker plays. For
  every delay up to `max_delay_ms` it is a low percentile of mic level minus speaker level, which the user's
  voice can only raise, so talking does not hide the echo. A frame louder than the loudest echo any delay
  could return, plus a margin, and above the noise floor, is the user's. A delay without enough evidence
  counts as 0 dB (echo as loud as the speaker), so the detector starts out as cautious as AEC3.
- Likeness. An echo is the speaker's sound through a room: its short-term spectrum, tilt removed, follows
  the speaker's at some fixed delay, and the user's voice does not. A frame the level calls the user's but
  that looks like the speaker is echo the coupling underestimated (the volume went up, the headphones came
  off): the coupling rises toward it at once, by a bounded step, and the rise fades within a second unless
  the echo keeps renewing it.

`python -m voxloop.bench.barge_in` measures what this buys over AEC3 alone (bench/RESULTS.md, "Barge-in").
"""

from __future__ import annotations

import numpy as np

SILENT_DB = -120.0
UNKNOWN_COUPLING_DB = 0.0


class SpectralShape:
    """The shape of the last 30 ms of a signal: log energy in 24 bands from 150 Hz to 6 kHz, with the
    spectral tilt (a straight line over the bands) removed, normalised to unit length. Two voices share a
    tilt; what is left tells one recording of a sound from another sound."""

    WINDOW_FRAMES = 3

    def __init__(self, sample_rate: int, frame: int):
        self.frame = frame
        size = frame * self.WINDOW_FRAMES
        self._window = np.hanning(size).astype(np.float32)
        self._recent = np.zeros(size, dtype=np.float32)
        freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
        edges = np.geomspace(150.0, min(6000.0, sample_rate / 2), 25)
        self._band_of_bin = np.digitize(freqs, edges) - 1
        self.bands = len(edges) - 1
        inside = (self._band_of_bin >= 0) & (self._band_of_bin < self.bands)
        self._bins, self._band_of_bin = np.flatnonzero(inside), self._band_of_bin[inside]
        self._counts = np.bincount(self._band_of_bin, minlength=self.bands).clip(min=1)
        index = np.arange(self.bands, dtype=np.float64)
        line = np.stack([index, np.ones_like(index)], axis=1)
        self._detrend = np.eye(self.bands) - line @ np.linalg.pinv(line)

    def push(self, frame: np.ndarray) -> np.ndarray:
        self._recent = np.concatenate([self._recent[frame.size:], frame])
        power = np.abs(np.fft.rfft(self._recent * self._window)) ** 2
        bands = np.bincount(self._band_of_bin, weights=power[self._bins], minlength=self.bands) / self._counts
        shape = self._detrend @ (10.0 * np.log10(bands + 1e-10))
        return shape / (np.linalg.norm(shape) + 1e-9)


class DoubleTalkDetector:
    FAR_ACTIVE_DB = -50.0  # speaker frames quieter than this teach nothing about the echo path
    MIN_EVIDENCE = 30  # active frames per delay before its coupling is trusted
    EVIDENCE_FRAMES = 100  # per delay, the most recent frames with the speaker active: a changed path is learnt in a second
    COUPLING_PERCENTILE = 10
    ECHO_MARGIN_DB = 10.0  # how much louder than the echo bound a frame must be to count as the user
    ABOVE_NOISE_DB = 10.0
    ONSET_FRAMES = 2  # frames in a row before the user is taken to be talking
    HANGOVER_FRAMES = 15  # a word's quiet end still belongs to the user
    UPDATE_EVERY = 10  # frames between coupling estimates
    LIKENESS_FRAMES = 5  # an echo keeps its delay; a chance likeness does not last
    # Offline, 50 ms of echo in a reverberant room looked 0.61-0.93 like the speaker (p10-p90), the
    # user's own voice over it 0.16-0.58.
    ECHO_LIKENESS = 0.8
    # One echo-like frame raises the coupling by at most this much: a chance likeness of the user's voice
    # costs little, while a real echo keeps looking like the speaker and keeps raising it.
    FLOOR_STEP_DB = 10.0
    FLOOR_FADE_DB_PER_S = 10.0

    def __init__(self, sample_rate: int, max_delay_ms: float = 400.0, frame_ms: float = 10.0):
        self.frame = int(sample_rate * frame_ms / 1000)
        self.frame_ms = frame_ms
        self.lags = int(round(max_delay_ms / frame_ms)) + 1
        self._far_shape, self._mic_shape = SpectralShape(sample_rate, self.frame), SpectralShape(sample_rate, self.frame)
        # Newest first, so that index = delay in frames.
        self._far_db = np.full(self.lags + 1, SILENT_DB)
        self._far_shapes = np.zeros((self.lags, self._far_shape.bands))
        self._likeness = np.zeros((self.LIKENESS_FRAMES, self.lags))
        self._evidence = np.full((self.EVIDENCE_FRAMES, self.lags), np.inf)  # mic minus speaker level, per delay
        self._next_row = np.zeros(self.lags, dtype=int)
        self._evidence_count = np.zeros(self.lags, dtype=int)
        self._quiet_levels = np.full(10 * self.EVIDENCE_FRAMES, np.nan)  # the mic with the speaker silent
        self._frames = self._quiet_rows = 0
        self._run = 0
        self._hangover = 0
        self._measured = False
        self.coupling_by_delay_db = np.full(self.lags, UNKNOWN_COUPLING_DB)
        self.coupling_floor_db = SILENT_DB  # set by echo caught looking like the user
        self.noise_db = SILENT_DB
        self.echo_bound_db = SILENT_DB  # the loudest echo the current frame could hold
        self.likeness = 0.0  # how closely the last frames follow the speaker at its best delay
        self.speaker_audible = False  # whether the current frame could hold any echo at all

    @property
    def coupling_db(self) -> float:
        """The strongest echo path: how far below the speaker's level its echo stays (0 dB where unmeasured)."""
        return max(float(self.coupling_by_delay_db.max()), self.coupling_floor_db)

    @property
    def echo_path_db(self) -> float | None:
        """`coupling_db` once every delay has been measured, else None."""
        return self.coupling_db if self._measured else None

    def far_frame(self, samples: np.ndarray) -> None:
        """A frame the speaker played, in order, before the mic frames that may echo it."""
        _push(self._far_db, _level_db(samples))
        _push(self._far_shapes, self._far_shape.push(samples))

    def near_end(self, mic: np.ndarray) -> bool:
        """Whether this mic frame (the latest) carries the user's voice beyond any echo it could hold."""
        level = _level_db(mic)
        self._frames += 1
        self.coupling_floor_db -= self.FLOOR_FADE_DB_PER_S * self.frame_ms / 1000
        _push(self._likeness, self._far_shapes @ self._mic_shape.push(mic))
        # The echo of a delay between two frames comes from both: the louder bounds it, and the quieter keeps
        # a ratio from being made small by a frame whose sound had not reached the mic yet.
        pairs = np.stack([self._far_db[:-1], self._far_db[1:]])
        played, source = pairs.max(axis=0), pairs.min(axis=0)
        audible = played > self.FAR_ACTIVE_DB
        if self._frames % self.UPDATE_EVERY == 1:
            self._estimate()
        self.speaker_audible = bool(audible.any())
        if not self.speaker_audible:
            self.echo_bound_db, self.likeness = SILENT_DB, 0.0
        else:
            coupling = np.maximum(self.coupling_by_delay_db, self.coupling_floor_db)
            self.echo_bound_db = float(np.max((played + coupling)[audible]))
            self.likeness = float(self._likeness.mean(axis=0).max())
        self._learn(level, source)
        return self._verdict(level, played, audible)

    def _verdict(self, level: float, played: np.ndarray, audible: np.ndarray) -> bool:
        louder_than_echo = level > self.echo_bound_db + self.ECHO_MARGIN_DB and level > self.noise_db + self.ABOVE_NOISE_DB
        if louder_than_echo and self.likeness >= self.ECHO_LIKENESS:
            measured = max(float(self.coupling_by_delay_db.max()), self.coupling_floor_db)
            self.coupling_floor_db = min(level - float(np.max(played[audible])), measured + self.FLOOR_STEP_DB)
            self._run = self._hangover = 0
            return False
        self._run = self._run + 1 if louder_than_echo else 0
        if self._run >= self.ONSET_FRAMES or (louder_than_echo and self._hangover):
            self._hangover = self.HANGOVER_FRAMES
            return True
        if self._hangover:
            self._hangover -= 1
            return True
        return False

    def _learn(self, level: float, source: np.ndarray) -> None:
        delays = np.flatnonzero(source > self.FAR_ACTIVE_DB)
        if delays.size:  # each delay keeps its own most recent evidence, in a ring
            self._evidence[self._next_row[delays], delays] = level - source[delays]
            self._next_row[delays] = (self._next_row[delays] + 1) % self.EVIDENCE_FRAMES
            self._evidence_count[delays] += 1
        elif self._far_db.max() <= self.FAR_ACTIVE_DB:  # no echo of anything can be arriving
            _push(self._quiet_levels, level)
            self._quiet_rows += 1

    def _estimate(self) -> None:
        """The coupling of every delay: a low percentile of its evidence, which the user's voice only raises."""
        if self._evidence_count.any():
            ordered = np.sort(self._evidence, axis=0)  # rows not yet written (inf) sort last
            counts = np.minimum(self._evidence_count, self.EVIDENCE_FRAMES)
            index = np.floor(self.COUPLING_PERCENTILE / 100 * np.maximum(counts - 1, 0)).astype(int)
            low = ordered[index, np.arange(self.lags)]
            self.coupling_by_delay_db = np.where(counts >= self.MIN_EVIDENCE, low, UNKNOWN_COUPLING_DB)
            self._measured = bool((counts >= self.MIN_EVIDENCE).all())
        if self._quiet_rows >= self.MIN_EVIDENCE:
            self.noise_db = float(np.nanpercentile(self._quiet_levels, 20))


def _push(ring: np.ndarray, row) -> None:
    """Shift a newest-first ring by one and put `row` in front."""
    ring[1:] = ring[:-1]
    ring[0] = row


def _level_db(samples: np.ndarray) -> float:
    power = float(np.mean(np.square(samples, dtype=np.float64))) if samples.size else 0.0
    return 10.0 * np.log10(power) if power > 1e-12 else SILENT_DB
