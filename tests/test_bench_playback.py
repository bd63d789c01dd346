"""How the bench models a client playing reply deltas: each plays on arrival, or right after
the previous one when that is still playing."""

import numpy as np

from voxloop.bench.turns import first_audible_play_time, playback_breaks, playback_end, playback_stalls, stall_cause
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


def test_a_break_between_clauses_waited_for_text_only_if_the_llm_finished_it_after_the_audio_ran_dry():
    # Two clauses of 0.2 s: the second one's audio arrives 0.3 s after the first ran dry at 10.2.
    deltas = [(10.0, seconds(0.2, 0.1)), (10.5, seconds(0.2, 0.1))]
    [gap] = playback_breaks(deltas)
    assert (gap.ran_dry, gap.at_audio_s) == (10.2, 0.2) and np.isclose(gap.wait_s, 0.3)
    reference_unix = 9.0  # the server's clause times are ms after it

    def clauses(second_ready_unix: float) -> list[dict]:
        return [{"ready_ms": 500.0, "audio_ms": 200.0},
                {"ready_ms": 1000 * (second_ready_unix - reference_unix), "audio_ms": 200.0}]

    assert stall_cause(gap, clauses(10.4), reference_unix) == "text"
    assert stall_cause(gap, clauses(10.1), reference_unix) == "speech"  # the text waited for TTS
    assert stall_cause(gap, [], reference_unix) == "unknown"


def test_a_break_inside_a_clause_waited_for_speech():
    deltas = [(10.0, seconds(0.1, 0.1)), (10.3, seconds(0.1, 0.1))]
    [gap] = playback_breaks(deltas)
    assert stall_cause(gap, [{"ready_ms": 0.0, "audio_ms": 200.0}], 9.0) == "speech"
