"""How the bench models a client playing reply deltas: each plays on arrival, or right after
the previous one when that is still playing."""

import numpy as np

from voxloop.bench.turns import first_audible_play_time, playback_breaks, playback_end, stall_waits
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


def stall_seconds(deltas) -> list[float]:
    return [gap.wait_s for gap in playback_breaks(deltas)]


def test_a_reply_that_runs_dry_while_it_plays_stalls():
    steady = [(10.0, seconds(0.2, 0.1)), (10.1, seconds(0.2, 0.1)), (10.39, seconds(0.2, 0.1))]
    assert stall_seconds(steady) == []  # each delta came before the previous one had played out
    late = [(10.0, seconds(0.2, 0.1)), (10.25, seconds(0.2, 0.1)), (10.45, seconds(0.2, 0.1)), (10.7, seconds(0.1, 0.1))]
    assert np.allclose(stall_seconds(late), [0.05, 0.05])
    assert stall_seconds([(10.0, seconds(0.2)), (10.21, seconds(0.2))]) == []  # 10 ms: no break a listener hears


def test_a_break_between_clauses_waited_for_text_until_the_llm_finished_the_next_clause():
    # Two clauses of 0.2 s: the second one's audio arrives 0.3 s after the first ran dry at 10.2.
    deltas = [(10.0, seconds(0.2, 0.1)), (10.5, seconds(0.2, 0.1))]
    [gap] = playback_breaks(deltas)
    assert (gap.ran_dry, gap.at_audio_s) == (10.2, 0.2) and np.isclose(gap.wait_s, 0.3)
    reference_unix = 9.0  # the server's clause times are ms after it

    def waits(second_ready_unix: float) -> dict[str, float]:
        clauses = [{"ready_ms": 500.0, "audio_ms": 200.0},
                   {"ready_ms": 1000 * (second_ready_unix - reference_unix), "audio_ms": 200.0}]
        return {cause: round(seconds, 3) for cause, seconds in stall_waits(gap, clauses, reference_unix).items()}

    assert waits(10.4) == {"text": 0.2, "speech": 0.1}  # the text came 0.2 s into the break, its audio 0.1 s later
    assert waits(10.1) == {"text": 0.0, "speech": 0.3}  # the text was there: it waited for TTS
    assert waits(10.6) == {"text": 0.3, "speech": 0.0}
    assert stall_waits(gap, [], reference_unix) == {"unknown": gap.wait_s}


def test_a_break_inside_a_clause_waited_for_speech():
    deltas = [(10.0, seconds(0.1, 0.1)), (10.3, seconds(0.1, 0.1))]
    [gap] = playback_breaks(deltas)
    assert stall_waits(gap, [{"ready_ms": 0.0, "audio_ms": 200.0}], 9.0) == {"speech": gap.wait_s}
