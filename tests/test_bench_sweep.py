"""Who runs the bench's concurrency sweep, for how long, and when a time budget stops it."""

import asyncio

from tqdm import tqdm

from voxloop.bench.cli import TimeBudget, Variant, _interleaved, _sweep_rounds


def test_one_variant_runs_the_sweep_once():
    a = Variant("a", [])
    assert _sweep_rounds([a], 5) == [(a, 5)]


def test_two_variants_alternate_a_b_b_a_and_share_the_turns_evenly():
    a, b = Variant("a", []), Variant("b", ["--x"])
    assert _sweep_rounds([a, b], 5) == [(a, 3), (b, 3), (b, 2), (a, 2)]
    assert _sweep_rounds([a, b], 1) == [(a, 1), (b, 1)]


def test_a_spent_time_budget_starts_no_turn_and_says_so():
    budget = TimeBudget(0)
    turns = asyncio.run(_interleaved([Variant("a", [], "ws://127.0.0.1:9/unreachable")], ["clip"], 4, 2, tqdm(disable=True), budget))
    assert turns == [] and budget.stopped_early


def test_no_time_budget_never_stops():
    budget = TimeBudget(None)
    assert not budget.spent() and not budget.stopped_early
