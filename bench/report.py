"""Summaries of benchmark measurements: percentiles, Markdown, and plots."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from voxloop.bench.ratio import QUANTILES, percentile_interval
from voxloop.bench.turns import TurnMeasurement

STAGES = [("end_of_turn_ms", "end-of-turn wait"), ("asr_ms", "ASR final"), ("llm_ms", "LLM first token"),
          ("tts_ms", "TTS first audio"), ("send_ms", "server send"), ("transport_ms", "transport"),
          ("lead_in_ms", "silence before first audible sample")]


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "mean": None}
    array = np.asarray(values, dtype=float)
    return {"n": int(array.size), "p50": float(np.percentile(array, 50)), "p95": float(np.percentile(array, 95)),
            "p99": float(np.percentile(array, 99)), "mean": float(array.mean())}


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import os

    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, GPU: {gpu}, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def summarize(turns: list[TurnMeasurement]) -> dict:
    ok = [t for t in turns if t.voice_to_voice_ms is not None]
    latencies = [t.voice_to_voice_ms for t in ok]
    summary = {"turns": len(turns), "answered": len(ok), "voice_to_voice_ms": percentiles(latencies),
               # Where the p50 and p95 might as well have landed: 32 turns pin them down only so far.
               "voice_to_voice_interval_ms": {name: percentile_interval(latencies, q) for name, q in QUANTILES.items()},
               "wer": percentiles([t.wer for t in turns if t.wer is not None])["mean"], "stages": {},
               "false_end_turns": sum(1 for t in turns if t.false_ends),
               # A conversation stuck repeating one short reply is cheap to voice and flatters latency.
               "reply_s_median": percentiles([t.reply_audio_ms / 1000 for t in ok if t.reply_audio_ms])["p50"],
               "distinct_replies": len({t.reply.strip().lower() for t in ok if t.reply.strip()}),
               # Audio that runs dry mid-reply is a break the user hears, whatever the first audio's latency.
               "stalled_replies": sum(1 for t in ok if t.playback_stall_ms),
               "playback_stall_ms_max": max((t.playback_stall_ms or 0.0 for t in ok), default=None),
               "stall_s_by_cause": _stall_seconds_by_cause(ok),
               # A reply the token cap cut short sounds broken however soon it started.
               "replies_cut_mid_sentence": sum(1 for t in ok if t.reply_status != "cancelled" and t.reply.strip()
                                               and not _ends_a_sentence(t.reply))}
    for key, _ in STAGES:
        summary["stages"][key] = percentiles([getattr(t, key) for t in ok if getattr(t, key) is not None])
    return summary


def _stall_seconds_by_cause(turns: list[TurnMeasurement]) -> dict[str, float]:
    """All the stalls added up, by what they waited for (turns.stall_waits)."""
    by_cause: dict[str, float] = {}
    for turn in turns:
        for stall in turn.playback_stalls:
            for cause, ms in stall["waited_for_ms"].items():
                by_cause[cause] = by_cause.get(cause, 0.0) + ms / 1000
    return {cause: round(seconds, 2) for cause, seconds in sorted(by_cause.items())}


def _ends_a_sentence(text: str) -> bool:
    return text.rstrip().rstrip("\"')]")[-1:] in (".", "?", "!")


def _stalls(summary: dict) -> str:
    if summary.get("stalled_replies") is None:  # a summary from before the bench counted them
        return "–"
    stalled = f"{summary['stalled_replies']} ({_fmt(summary.get('playback_stall_ms_max'))})"
    by_cause = summary.get("stall_s_by_cause")
    if by_cause:
        stalled += "; " + ", ".join(f"{cause} {seconds:.1f} s" for cause, seconds in by_cause.items())
    return stalled


def _fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _with_interval(summary: dict, name: str) -> str:
    """A latency percentile with its bootstrap interval: "538 (509–571)"."""
    value = _fmt(summary["voice_to_voice_ms"][name])
    interval = summary.get("voice_to_voice_interval_ms", {}).get(name)
    return value if interval is None else f"{value} ({interval[0]:.0f}–{interval[1]:.0f})"


def markdown_table(summaries: dict[str, dict]) -> str:
    lines = ["| configuration | sessions | turns answered | p50 ms (95% interval) | p95 ms (95% interval) | p99 ms | mean ms | ASR WER | cut off early "
             "| replies that stalled (longest ms; all stalls by what they waited for) | distinct replies | reply s (median) | replies cut mid-sentence |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        v = s["voice_to_voice_ms"]
        lines.append(f"| {name} | {s.get('sessions', 1)} | {s['answered']}/{s['turns']} | {_with_interval(s, 'p50')} | "
                     f"{_with_interval(s, 'p95')} | "
                     f"{_fmt(v['p99'])} | {_fmt(v['mean'])} | {_fmt(s['wer'], 3)} | {s.get('false_end_turns', 0)}/{s['turns']} | "
                     f"{_stalls(s)} | {s.get('distinct_replies', '–')} | {_fmt(s.get('reply_s_median'), 1)} | "
                     f"{s.get('replies_cut_mid_sentence', '–')} |")
    return "\n".join(lines)


# Server facts (response.done's voxloop.timings) that explain a slow turn.
_DIAGNOSTICS = [("end_silence_ms", "pause needed"), ("unfinished", "held because"), ("speculation", "speculation"),
                ("speculations", "pauses"), ("llm_start_ms", "LLM start"), ("llm_prompt_tokens", "prompt tok"),
                ("llm_cached_tokens", "cached tok")]


def slow_turns_table(turns: list[TurnMeasurement], over_ms: float) -> str:
    """One row per turn slower than `over_ms`: its stages and why the server took its time."""
    slow = sorted((t for t in turns if t.voice_to_voice_ms is not None and t.voice_to_voice_ms > over_ms),
                  key=lambda t: -t.voice_to_voice_ms)
    if not slow:
        return f"No turn took longer than {over_ms:.0f} ms."
    header = ["clip", "variant", "ms", "end-of-turn", "ASR", "LLM", "TTS", *(label for _, label in _DIAGNOSTICS), "transcript end"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in slow:
        facts = [t.server_timings.get(key) for key, _ in _DIAGNOSTICS]
        cells = [t.clip, t.variant, _fmt(t.voice_to_voice_ms), _fmt(t.end_of_turn_ms), _fmt(t.asr_ms), _fmt(t.llm_ms), _fmt(t.tts_ms),
                 *("–" if f is None else _fmt(f) if isinstance(f, float) else str(f) for f in facts),
                 "…" + t.transcript[-30:].replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stage_table(summaries: dict[str, dict]) -> str:
    names = list(summaries)
    lines = ["| stage (median ms) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label in STAGES:
        lines.append(f"| {label} | " + " | ".join(_fmt(summaries[n]["stages"][key]["p50"]) for n in names) + " |")
    return "\n".join(lines)


# The server's per-turn marks, in the order the turn's work passes them; ms relative to
# speech_stopped (negative: before the turn was confirmed, i.e. speculative work).
CHAIN = [("speech_paused_ms", "pause reported (eager start)"), ("asr_started_ms", "Whisper waiting for the model"),
         ("transcript_final_ms", "Whisper"),
         ("llm_start_ms", "LLM queue (and a separate judgment)"), ("llm_first_token_ms", "first token"),
         ("llm_first_clause_ms", "first clause"), ("tts_first_audio_ms", "TTS first audio")]


def chain_table(groups: dict[str, list[TurnMeasurement]]) -> str:
    """Median time of each step of the turn's work after the previous one, from the server's
    marks. The stage table counts work done before the turn was confirmed as 0; this shows what
    that work costs, and how early the first audio was ready."""
    names = list(groups)
    lines = ["| step (median ms) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def median_step(turns, before: str, after: str) -> float | None:
        steps = [t.server_timings[after] - t.server_timings[before] for t in turns
                 if t.server_timings and t.server_timings.get(before) is not None and t.server_timings.get(after) is not None]
        return float(np.median(steps)) if steps else None

    def median_mark(turns, mark: str) -> float | None:
        marks = [t.server_timings[mark] for t in turns if t.server_timings and t.server_timings.get(mark) is not None]
        return float(np.median(marks)) if marks else None

    first_key, first_label = CHAIN[0]
    lines.append(f"| {first_label}, relative to `speech_stopped` | "
                 + " | ".join(_fmt(median_mark(groups[n], first_key)) for n in names) + " |")
    for (before, _), (after, label) in zip(CHAIN, CHAIN[1:]):
        lines.append(f"| {label} | " + " | ".join(_fmt(median_step(groups[n], before, after)) for n in names) + " |")
    lines.append("| first audio ready, relative to `speech_stopped` | "
                 + " | ".join(_fmt(median_mark(groups[n], CHAIN[-1][0])) for n in names) + " |")
    return "\n".join(lines)


def plot_cdf(groups: dict[str, list[TurnMeasurement]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, turns in groups.items():
        values = np.sort([t.voice_to_voice_ms for t in turns if t.voice_to_voice_ms is not None])
        if values.size:
            ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", label=f"{name} (p50 {np.median(values):.0f} ms)")
    ax.axvline(300, color="grey", linestyle=":", linewidth=1)
    ax.text(305, 0.03, "300 ms", color="grey", fontsize=8)
    ax.set_xlabel("voice-to-voice latency (ms), true end of speech → first audible reply sample")
    ax.set_ylabel("fraction of turns")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_stages(summaries: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summaries)
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.5 * len(names)))
    left = np.zeros(len(names))
    colors = plt.get_cmap("tab10").colors
    for index, (key, label) in enumerate(STAGES):
        widths = np.array([summaries[n]["stages"][key]["p50"] or 0.0 for n in names])
        ax.barh(names, widths, left=left, color=colors[index % len(colors)], label=label)
        left += np.maximum(widths, 0)
    ax.set_xlabel("median ms after the true end of speech")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
