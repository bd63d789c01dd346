"""How far to trust a latency percentile, and the ratio of two variants' percentiles in one run.

With 32 turns a side, the p50 of one side moves by several percent between two runs of the same
code (bench/RESULTS.md, `settle-sentences`), and the p95 is the second-slowest turn. So each ratio
comes with a bootstrap interval: the turns are drawn again with replacement many times, and the
interval holds the middle 95% of the ratios those draws give. Where both sides played the same
clips, as `--compare` does, a turn of one side is paired with the other side's turn on the same
clip and pairs are drawn together, so a long clip weighs on both sides of every draw; otherwise
each side is drawn on its own. The pairs also give the plainest evidence of all: in how many of
them the second variant answered sooner. The same drawing gives one run's own p50 and p95 an
interval (`percentile_interval`), shown beside them in every summary table.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np

QUANTILES = {"p50": 50, "p95": 95}
RESAMPLES = 4000
CONFIDENCE = 0.95


@dataclass
class Comparison:
    """The second variant's latency over the first's."""

    p50: float | None
    p95: float | None
    p50_interval: tuple[float, float] | None = None
    p95_interval: tuple[float, float] | None = None
    paired_turns: int = 0  # turns of the two sides matched by clip
    second_faster: int = 0  # of those pairs, how many the second variant answered sooner
    drawn_in_pairs: bool = False  # the interval came from pairs, not from each side on its own

    def to_dict(self) -> dict:
        return asdict(self)

    def shown(self, name: str) -> str:
        """The ratio at quantile `name` ("p50", "p95") with its interval: "0.98 (0.86–1.10)", or "–"."""
        ratio, interval = getattr(self, name), getattr(self, f"{name}_interval")
        if ratio is None:
            return "–"
        return f"{ratio:.2f}" + (f" ({interval[0]:.2f}–{interval[1]:.2f})" if interval else "")

    def text(self) -> str:
        """One line for the summary: ratios, their intervals, and the paired count."""
        line = ", ".join(f"{name} {self.shown(name)}" for name in QUANTILES)
        if any(getattr(self, f"{name}_interval") for name in QUANTILES):
            drawn = "pairs of turns on the same clip" if self.drawn_in_pairs else "each side's turns"
            line += f"; {CONFIDENCE:.0%} bootstrap intervals over {drawn}"
        if self.paired_turns:
            line += f"; the second faster in {self.second_faster} of {self.paired_turns} paired turns"
        return line


def compare(first: list[tuple[str, float]], second: list[tuple[str, float]], resamples: int = RESAMPLES,
            seed: int = 0) -> Comparison:
    """`first`, `second`: (clip, voice-to-voice ms) of each answered turn of the two variants."""
    a = np.array([ms for _, ms in first], dtype=float)
    b = np.array([ms for _, ms in second], dtype=float)
    if not a.size or not b.size:
        return Comparison(None, None)
    ratios = {name: _ratio(np.percentile(a, q), np.percentile(b, q)) for name, q in QUANTILES.items()}
    pairs = _pairs(first, second)
    comparison = Comparison(**ratios, paired_turns=len(pairs),
                            second_faster=sum(int(later < earlier) for earlier, later in pairs))
    if a.size < 2 or b.size < 2 or resamples <= 0:
        return comparison
    rng = np.random.default_rng(seed)
    if len(pairs) == a.size == b.size:  # every turn has its partner: draw the pairs
        drawn = rng.integers(0, len(pairs), size=(resamples, len(pairs)))
        paired = np.array(pairs)
        a_draws, b_draws = paired[:, 0][drawn], paired[:, 1][drawn]
        comparison.drawn_in_pairs = True
    else:
        a_draws = a[rng.integers(0, a.size, size=(resamples, a.size))]
        b_draws = b[rng.integers(0, b.size, size=(resamples, b.size))]
    for name, q in QUANTILES.items():
        draws = np.percentile(b_draws, q, axis=1) / np.percentile(a_draws, q, axis=1)
        setattr(comparison, f"{name}_interval", _middle(draws))
    return comparison


def percentile_interval(values: list[float], q: float, resamples: int = RESAMPLES,
                        seed: int = 0) -> tuple[float, float] | None:
    """The bootstrap interval of the `q`-th percentile of `values` (None for fewer than two):
    where one run's p50 or p95 might as well have landed."""
    values = np.asarray(values, dtype=float)
    if values.size < 2 or resamples <= 0:
        return None
    drawn = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
    return _middle(np.percentile(values[drawn], q, axis=1))


def _middle(draws: np.ndarray) -> tuple[float, float]:
    """The middle CONFIDENCE of the draws."""
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def _ratio(first: float, second: float) -> float | None:
    return float(second / first) if first and second else None


def _pairs(first: list[tuple[str, float]], second: list[tuple[str, float]]) -> list[tuple[float, float]]:
    """(first ms, second ms) for each clip's n-th turn on both sides."""
    seconds: dict[str, list[float]] = defaultdict(list)
    for clip, ms in second:
        seconds[clip].append(ms)
    taken: dict[str, int] = defaultdict(int)
    pairs = []
    for clip, ms in first:
        if taken[clip] < len(seconds[clip]):
            pairs.append((ms, seconds[clip][taken[clip]]))
            taken[clip] += 1
    return pairs


def comparisons(results: dict) -> dict[str, Comparison]:
    """Each comparison a `--compare` run's results.json holds: "1" for its interleaved turns, then
    "2", "4", ... for its concurrency sweep, each the second variant over the first."""
    names = list(results["variants"])
    if len(names) != 2:
        return {}
    by_variant: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for turn in results["turns"]:
        if turn.get("voice_to_voice_ms") is not None:
            by_variant[turn["variant"]].append((turn["clip"], turn["voice_to_voice_ms"]))
    sweep = sorted({int(variant.rsplit(" x", 1)[1]) for variant in by_variant
                    if variant.startswith(names[0] + " x") and variant.rsplit(" x", 1)[1].isdigit()})
    found = {}
    for label, suffix in [("1", "")] + [(str(n), f" x{n}") for n in sweep]:
        first, second = by_variant.get(names[0] + suffix), by_variant.get(names[1] + suffix)
        if first and second:
            found[label] = compare(first, second)
    return found


def plot_intervals(rows: list[tuple[str, Comparison]], path, title: str) -> None:
    """A forest plot: each comparison's p50 and p95 ratio with its interval, beside a line at 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(QUANTILES), figsize=(11, 0.28 * len(rows) + 1.4), sharey=True)
    positions = np.arange(len(rows))[::-1]
    for ax, name in zip(axes, QUANTILES):
        for y, (_, comparison) in zip(positions, rows):
            ratio, interval = getattr(comparison, name), getattr(comparison, f"{name}_interval")
            if ratio is None:
                continue
            clear = interval is not None and not interval[0] <= 1.0 <= interval[1]
            color = "tab:blue" if clear else "grey"
            if interval is not None:
                ax.plot(interval, [y, y], color=color, linewidth=1.6)
            ax.plot([ratio], [y], "o", color=color, markersize=4)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xticks([0.5, 0.7, 0.85, 1.0, 1.2, 1.5])
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(f"{name} ratio, second / first (blue: 95% interval clear of 1)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(positions)
    axes[0].set_yticklabels([label for label, _ in rows], fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Print the comparisons of past `--compare` runs as a Markdown table, and plot them if asked."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description="ratios with bootstrap intervals for --compare runs' results.json")
    parser.add_argument("results", nargs="+", type=Path, help="results.json files, or the folders that hold them")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="also draw the ratios and their intervals here")
    args = parser.parse_args(argv)
    print("| run | second / first | sessions | p50 (95% interval) | p95 (95% interval) | second faster, paired turns |")
    print("|---|---|---|---|---|---|")
    plotted = []
    for path in args.results:
        path = path / "results.json" if path.is_dir() else path
        results = json.loads(path.read_text())
        names = list(results["variants"])
        for sessions, comparison in comparisons(results).items():
            paired = f"{comparison.second_faster} of {comparison.paired_turns}" if comparison.paired_turns else "–"
            print(f"| {path.parent.name} | {names[1]} / {names[0]} | {sessions} | {comparison.shown('p50')} | "
                  f"{comparison.shown('p95')} | {paired} |")
            plotted.append((f"{path.parent.name}, {names[1]} / {names[0]}, {sessions} session{'s' * (sessions != '1')}",
                            comparison))
    if args.plot and plotted:
        plot_intervals(plotted, args.plot, "Voice-to-voice ratios of --compare runs, with 95% bootstrap intervals")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
