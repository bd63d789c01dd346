"""Who runs the bench's concurrency sweep, and for how long."""

from voxloop.bench.cli import Variant, _sweep_rounds


def test_one_variant_runs_the_sweep_once():
    a = Variant("a", [])
    assert _sweep_rounds([a], 5) == [(a, 5)]


def test_two_variants_alternate_a_b_b_a_and_share_the_turns_evenly():
    a, b = Variant("a", []), Variant("b", ["--x"])
    assert _sweep_rounds([a, b], 5) == [(a, 3), (b, 3), (b, 2), (a, 2)]
    assert _sweep_rounds([a, b], 1) == [(a, 1), (b, 1)]
