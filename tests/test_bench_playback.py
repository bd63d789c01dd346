"""How the bench models a client playing reply deltas: each plays on arrival, or right after
the previous one when that is still playing."""

import numpy as np

from voxloop.bench.turns import first_audible_play_time, playback_end, playback_stalls
from voxloop.codecs.pcm import WIRE_RATE


def seconds(duration_s: float, level: float = 0.0) -> np.ndarray:
    return np.full(int(duration_s * WIRE_RATE), level, np.float32)


def test_a_delta_that_arrives_while_the_previous_one_plays_waits_for_it():
    deltas = [(10.0, seconds(0.5)), (10.1, seconds(0.5, 0.1))]
    assert playback_end(deltas) == 11.0
    played, arrived = first_audible_play_time(deltas)
    assert (played, arrived) == (10.5, 10.1)  # queued behind half a second of silence


def test_a_delta_that_arrives_after_a_gap_plays_on_arrival():
    deltas = [(10.0, seconds(0.1)), (12.0, seconds(0.2, 0.1))]
    assert playback_end(deltas) == 12.2
    assert first_audible_play_time(deltas) == (12.0, 12.0)


def test_silence_alone_is_never_heard():
    assert first_audible_play_time([(1.0, seconds(1.0))]) is None
    assert playback_end([]) == 0.0


def test_a_reply_that_runs_dry_while_it_plays_stalls():
    steady = [(10.0, seconds(0.2, 0.1)), (10.1, seconds(0.2, 0.1)), (10.39, seconds(0.2, 0.1))]
    assert playback_stalls(steady) == []  # each delta came before the previous one had played out
    late = [(10.0, seconds(0.2, 0.1)), (10.25, seconds(0.2, 0.1)), (10.45, seconds(0.2, 0.1)), (10.7, seconds(0.1, 0.1))]
    assert np.allclose(playback_stalls(late), [0.05, 0.05])
    assert playback_stalls([(10.0, seconds(0.2)), (10.21, seconds(0.2))]) == []  # 10 ms: no break a listener hears
