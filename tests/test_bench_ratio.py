"""Two variants compared: percentile ratios with bootstrap intervals, and paired counts (bench/ratio.py)."""

import json

import numpy as np

from voxloop.bench.ratio import compare


def turns(latencies, clips=None):
    clips = clips or [f"clip{i}" for i in range(len(latencies))]
    return list(zip(clips, latencies))


def test_a_variant_exactly_a_fifth_faster_on_every_clip_is_0_8_with_no_doubt():
    first = np.linspace(300, 1200, 32)
    comparison = compare(turns(first), turns(first * 0.8))
    assert comparison.drawn_in_pairs and comparison.paired_turns == 32 and comparison.second_faster == 32
    for name in ("p50", "p95"):
        assert abs(getattr(comparison, name) - 0.8) < 1e-9
        low, high = getattr(comparison, f"{name}_interval")
        assert abs(low - 0.8) < 1e-9 and abs(high - 0.8) < 1e-9  # every draw of pairs keeps the ratio


def test_the_same_latencies_on_different_clips_are_drawn_side_by_side_and_leave_room_for_doubt():
    rng = np.random.default_rng(1)
    first = rng.lognormal(np.log(550), 0.3, 32)
    second = rng.lognormal(np.log(550), 0.3, 32)
    comparison = compare(turns(first, [f"a{i}" for i in range(32)]), turns(second, [f"b{i}" for i in range(32)]))
    assert not comparison.drawn_in_pairs and comparison.paired_turns == 0
    low, high = comparison.p50_interval
    assert low < comparison.p50 < high and low < 1.0 < high  # an A/A: no difference can be claimed
    assert high - low > 0.1  # 32 turns a side cannot pin a median down to a few percent
    p95_low, p95_high = comparison.p95_interval
    assert p95_high - p95_low > high - low  # the tail is known worse than the middle


def test_pairs_take_out_the_clips_own_spread():
    """Long clips are slow on both sides: drawn in pairs, a steady 10% gain is clear; drawn apart it is lost in the spread."""
    rng = np.random.default_rng(2)
    clip_cost = rng.uniform(350, 1100, 32)  # some clips end in a long hold, some after the short pause
    first = clip_cost * rng.normal(1.0, 0.03, 32)
    second = clip_cost * 0.9 * rng.normal(1.0, 0.03, 32)
    clips = [f"clip{i}" for i in range(32)]
    paired = compare(turns(first, clips), turns(second, clips))
    apart = compare(turns(first, clips), turns(second, [f"other{i}" for i in range(32)]))
    assert paired.p50_interval[1] < 1.0 < apart.p50_interval[1]
    assert paired.second_faster >= 28


def test_a_clip_played_more_often_on_one_side_pairs_as_far_as_it_goes_and_the_sides_are_drawn_apart():
    first = turns([500, 600, 700], ["jfk", "jfk", "arctic"])
    second = turns([450, 750], ["jfk", "arctic"])
    comparison = compare(first, second)
    assert comparison.paired_turns == 2 and comparison.second_faster == 1  # jfk's first turn 500 -> 450, arctic 700 -> 750
    assert not comparison.drawn_in_pairs and comparison.p50_interval is not None


def test_a_side_with_no_answered_turn_gives_no_ratio():
    comparison = compare([], turns([500.0]))
    assert comparison.p50 is None and comparison.p95 is None
    assert comparison.text() == "p50 –, p95 –"


def test_the_summary_line_shows_each_ratio_with_its_interval_and_the_paired_count():
    first = np.linspace(300, 1200, 32)
    text = compare(turns(first), turns(first * 0.8)).text()
    assert text.startswith("p50 0.80 (0.80–0.80), p95 0.80 (0.80–0.80); 95% bootstrap intervals over pairs")
    assert text.endswith("the second faster in 32 of 32 paired turns")


def test_the_bench_compares_the_answered_turns_of_its_two_variants():
    from voxloop.bench.cli import _comparison
    from voxloop.bench.turns import TurnMeasurement

    def measured(variant, latencies):
        # numpy floats, as the bench's own arithmetic gives them
        return [TurnMeasurement(clip=f"clip{i}", variant=variant, session=0, clip_s=3.0, speech_end_s=2.5,
                                voice_to_voice_ms=None if ms is None else np.float64(ms)) for i, ms in enumerate(latencies)]

    first = measured("a", [400.0, 500.0, 600.0, 700.0])
    second = measured("b", [300.0, 400.0, None, 800.0])  # one turn unanswered: it pairs with nothing
    comparison = _comparison(first, second)
    assert comparison.paired_turns == 3 and comparison.second_faster == 2
    assert comparison.p50 == np.percentile([300, 400, 800], 50) / np.percentile([400, 500, 600, 700], 50)
    assert json.loads(json.dumps(comparison.to_dict()))["second_faster"] == 2  # results.json takes it as it is


def test_past_runs_are_compared_again_from_their_results_json_and_plotted(tmp_path, capsys):
    from voxloop.bench.ratio import main

    run = tmp_path / "eager-64"
    run.mkdir()
    clips = [f"clip{i}" for i in range(8)]
    slow = [500.0 + 40 * i for i in range(8)]
    turns_json = ([{"variant": "a", "clip": c, "voice_to_voice_ms": ms} for c, ms in zip(clips, slow)]
                  + [{"variant": "b", "clip": c, "voice_to_voice_ms": ms * 0.9} for c, ms in zip(clips, slow)]
                  + [{"variant": "a x2", "clip": c, "voice_to_voice_ms": ms} for c, ms in zip(clips, slow)]
                  + [{"variant": "b x2", "clip": c, "voice_to_voice_ms": None} for c in clips]  # none answered
                  + [{"variant": v, "clip": c, "voice_to_voice_ms": ms} for v in ("a x3", "b x3") for c, ms in zip(clips, slow)])
    (run / "results.json").write_text(json.dumps({"variants": {"a": [], "b": []}, "turns": turns_json}))
    plot = tmp_path / "ratios.png"
    assert main([str(run), "--plot", str(plot)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| eager-64")]
    assert rows == ["| eager-64 | b / a | 1 | 0.90 (0.90–0.90) | 0.90 (0.90–0.90) | 8 of 8 |",  # no 2-session row: b answered none
                    "| eager-64 | b / a | 3 | 1.00 (1.00–1.00) | 1.00 (1.00–1.00) | 0 of 8 |"]
    assert plot.stat().st_size > 10_000


def test_one_run_s_percentiles_come_with_the_interval_they_might_as_well_have_landed_in():
    from voxloop.bench.ratio import percentile_interval

    assert percentile_interval([500.0] * 32, 50) == (500.0, 500.0)
    assert percentile_interval([500.0], 50) is None  # one turn says nothing of its spread
    rng = np.random.default_rng(3)
    latencies = rng.lognormal(np.log(520), 0.25, 32)
    low, high = percentile_interval(latencies, 50)
    assert low < np.median(latencies) < high and high - low > 40
    p95_low, p95_high = percentile_interval(latencies, 95)
    assert p95_high - p95_low > high - low


def test_the_summary_table_shows_the_p50_and_p95_with_their_intervals():
    from voxloop.bench.report import markdown_table, summarize
    from voxloop.bench.turns import TurnMeasurement

    turns = [TurnMeasurement(clip=f"clip{i}", variant="a", session=0, clip_s=3.0, speech_end_s=2.5,
                             voice_to_voice_ms=ms) for i, ms in enumerate([400.0, 500.0, 600.0])]
    summary = summarize(turns)
    low, high = summary["voice_to_voice_interval_ms"]["p50"]
    assert 400 <= low <= 500 <= high <= 600
    row = markdown_table({"a": summary}).splitlines()[2]
    assert row.startswith(f"| a | 1 | 3/3 | 500 ({low:.0f}–{high:.0f}) | 590 (")
    json.dumps(summary)  # results.json takes it as it is
    old = {key: value for key, value in summary.items() if key != "voice_to_voice_interval_ms"}
    assert markdown_table({"a": old}).splitlines()[2].startswith("| a | 1 | 3/3 | 500 | 590 |")  # a summary from before
