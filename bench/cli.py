"""`voxloop bench`: voice-to-voice latency, per stage, over the real protocol.

It starts the servers it measures (or uses `--url`), speaks the shared clips to them paced in
real time, and writes raw JSON, a Markdown summary and plots. With two variants (`--compare`)
the turns alternate between them, so machine noise falls on both alike, and the ratio of their
percentiles comes with a bootstrap interval (bench/ratio.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import shutil
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from voxloop.bench import report
from voxloop.bench.ratio import Comparison, compare
from voxloop.bench.server_process import ServerProcess, start_server
from voxloop.bench.speech import load_clips
from voxloop.bench.turns import PacedMicrophone, TurnMeasurement, run_session, speak_turn
from voxloop.client.realtime_client import RealtimeClient


@dataclass
class Variant:
    name: str
    serve_args: list[str]
    url: str | None = None
    server: ServerProcess | None = None


def parse_variant(spec: str) -> Variant:
    name, _, args = spec.partition("=")
    return Variant(name.strip() or "default", shlex.split(args))


class TimeBudget:
    """When to stop starting turns: a run with a hard time limit (a lent GPU machine's call) ends
    with the turns it measured written out, instead of being killed with nothing written."""

    def __init__(self, seconds: float | None):
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.stopped_early = False

    def spent(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stopped_early = True
        return self.stopped_early


async def _interleaved(variants: list[Variant], clips, turns: int, conversation_turns: int, bar: tqdm,
                       budget: TimeBudget | None = None) -> list[TurnMeasurement]:
    """One conversation per variant at a time, each `conversation_turns` long; turn i goes to
    each variant in an order that alternates, so neither always runs first. Each clip is
    spoken to every variant before the budget is checked, so both have the same clips."""
    budget = budget or TimeBudget(None)
    results: list[TurnMeasurement] = []
    for first in range(0, turns, conversation_turns):
        if budget.spent():
            break
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(RealtimeClient(v.url)) for v in variants]
            mics = [PacedMicrophone(client) for client in clients]
            for mic in mics:
                mic.start()
                stack.push_async_callback(mic.stop)
            for index in range(first, min(turns, first + conversation_turns)):
                if budget.spent():
                    break
                clip = clips[index % len(clips)]
                order = list(range(len(variants)))
                if index % 2:
                    order.reverse()
                for v in order:
                    turn = await speak_turn(clients[v], mics[v], clip, variants[v].name, 0)
                    results.append(turn)
                    bar.set_postfix_str(f"{turn.variant} {clip.name}: "
                                        + ("no reply" if turn.voice_to_voice_ms is None else f"{turn.voice_to_voice_ms:.0f} ms"))
                    bar.update()
    return results


async def _concurrent(variant: Variant, clips, sessions: int, turns_per_session: int, bar: tqdm) -> list[TurnMeasurement]:
    def tick(turn: TurnMeasurement) -> None:
        bar.update()

    async def one(index: int):
        await asyncio.sleep(index * 0.7)  # people do not all stop talking in the same instant
        start = (index * turns_per_session) % len(clips)
        chosen = [clips[(start + k) % len(clips)] for k in range(turns_per_session)]
        return await run_session(variant.url, chosen, f"{variant.name} x{sessions}", index, on_turn=tick)

    per_session = await asyncio.gather(*(one(i) for i in range(sessions)))
    return [turn for session in per_session for turn in session]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxloop bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="measure a running server instead of starting one")
    parser.add_argument("--serve-args", default="", help="arguments for the server this command starts, e.g. '--asr-model small.en'")
    parser.add_argument("--label", help="name of the configuration in tables and plots (default: its serve arguments "
                        "when short, else 'voxloop')")
    parser.add_argument("--compare", nargs=2, metavar="NAME=ARGS",
                        help="two server variants, interleaved turn by turn; the concurrency sweep runs both, alternating A B B A")
    parser.add_argument("--turns", type=int, default=32, help="turns per variant at one session (default: 32, one per clip)")
    parser.add_argument("--conversation-turns", type=int, default=6,
                        help="turns per conversation before the bench opens a new one (default: 6). The embedded 135 M "
                             "LLM copies its earlier replies, so one reply cut short by a barge-in (\"The\") can turn a "
                             "long conversation into one-word answers, which are cheap to say and flatter the figures")
    parser.add_argument("--sessions", default="1,2,4", help="concurrency sweep, sessions at once (default: 1,2,4; 0 to skip)")
    parser.add_argument("--sweep-turns", type=int, default=5, help="turns per session in the concurrency sweep")
    parser.add_argument("--paused-speech", action="store_true",
                        help="speak the clips with a 600-700 ms pause inserted mid-sentence (bench/paused_speech.py), "
                             "to count turns cut off before the speaker finished")
    parser.add_argument("--no-rtf", action="store_true", help="skip the in-process real-time-factor pass")
    parser.add_argument("--time-budget-s", type=float,
                        help="start no new turn after this many seconds (counted once the servers are up), skip what "
                             "remains and write what was measured; for machines that end a command at a hard limit")
    parser.add_argument("--quick", action="store_true", help="smoke run: 6 turns, sweep 1,2 with 2 turns each")
    parser.add_argument("--out", type=Path, help="output folder (default: bench/out/<time>)")
    parser.add_argument("--publish", type=Path, metavar="RESULTS_MD",
                        help="also write this run into a Markdown report (e.g. bench/RESULTS.md), plots beside it")
    parser.add_argument("--name", default="main", help="the report section this run replaces (default: main)")
    args = parser.parse_args(argv)
    if args.quick:
        args.turns, args.sessions, args.sweep_turns = 6, "1,2", 2

    out = args.out or Path("bench/out") / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    if args.paused_speech:
        from voxloop.bench.paused_speech import load_paused_clips

        clips = load_paused_clips()
    else:
        clips = load_clips()
    if args.compare:
        variants = [parse_variant(spec) for spec in args.compare]
    else:
        label = args.label or (args.serve_args if 0 < len(args.serve_args) <= 40 else "voxloop")
        variants = [Variant(label, shlex.split(args.serve_args), args.url)]

    try:
        for variant in variants:
            if variant.url is None:
                print(f"starting server {variant.name!r}: voxloop serve {' '.join(variant.serve_args)}", flush=True)
                variant.server = start_server(variant.serve_args, out, name=variant.name.replace(" ", "_").replace("/", "_"))
                variant.url = variant.server.ws_url
        results = _run(args, variants, clips, out)
    finally:
        for variant in variants:
            if variant.server:
                variant.server.stop()
    print((out / "summary.md").read_text())
    print(f"raw measurements, summary and plots in {out}/")
    if args.publish:
        _publish(args.publish, out, argv if argv is not None else sys.argv[2:], args.name)
        print(f"published {args.publish}")
    return 0 if results else 1


def _run(args, variants: list[Variant], clips, out: Path) -> dict:
    started = time.time()
    sweep = [int(n) for n in args.sessions.split(",") if int(n) > 0]
    total = args.turns * len(variants) + len(variants) * sum(n * args.sweep_turns for n in sweep if n > 1)
    budget = TimeBudget(args.time_budget_s)
    with tqdm(total=total, desc="turns", unit="turn") as bar:
        main_turns = asyncio.run(_interleaved(variants, clips, args.turns, max(1, args.conversation_turns), bar, budget))
        by_variant = {v.name: [t for t in main_turns if t.variant == v.name] for v in variants}
        sweep_turns = {(v.name, 1): by_variant[v.name] for v in variants}
        for sessions in (n for n in sweep if n > 1 and not budget.spent()):
            for variant, turns in _sweep_rounds(variants, args.sweep_turns):
                measured = asyncio.run(_concurrent(variant, clips, sessions, turns, bar))
                sweep_turns.setdefault((variant.name, sessions), []).extend(measured)

    summaries = {name: report.summarize(turns) for name, turns in by_variant.items()}
    sweep_summaries = {f"{name} x{n}": {**report.summarize(turns), "sessions": n} for (name, n), turns in sweep_turns.items()}
    sweep_ratios = None
    if len(variants) == 2:
        sweep_ratios = {n: _comparison(*(sweep_turns[(v.name, n)] for v in variants))
                        for n in sorted({n for _, n in sweep_turns if n > 1})}

    rtf = None
    if not args.no_rtf and variants[0].server is not None and not budget.spent():
        rtf = _stage_rtf(variants[0].serve_args, clips)

    ratios = _comparison(*(by_variant[v.name] for v in variants)) if len(variants) == 2 else None

    results = {"machine": report.machine_description(), "started_unix": started, "duration_s": time.time() - started,
               "variants": {v.name: v.serve_args for v in variants}, "summaries": summaries, "sweep": sweep_summaries,
               "stopped_by_time_budget": budget.stopped_early,
               "stage_rtf": rtf, "ratios_second_over_first": ratios and ratios.to_dict(),
               "sweep_ratios_second_over_first": sweep_ratios and {n: c.to_dict() for n, c in sweep_ratios.items()},
               "turns": [t.to_dict() for t in main_turns] + [t.to_dict() for (_, n), ts in sweep_turns.items() if n > 1 for t in ts]}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    report.plot_cdf({**by_variant, **{f"{name} x{n}": ts for (name, n), ts in sweep_turns.items() if n > 1}},
                    out / "latency_cdf.png", "Voice-to-voice latency")
    report.plot_stages({**summaries, **{k: v for k, v in sweep_summaries.items() if v["sessions"] > 1}},
                       out / "stages.png", "Where the time goes (medians)")
    (out / "summary.md").write_text(_summary_markdown(results, summaries, sweep_summaries, rtf, ratios, variants, main_turns,
                                                      sweep_ratios))
    return results


def _comparison(first: list[TurnMeasurement], second: list[TurnMeasurement]) -> Comparison:
    """Second over first, for the p50 and p95 of the answered turns' voice-to-voice latency."""
    def answered(turns):
        return [(t.clip, t.voice_to_voice_ms) for t in turns if t.voice_to_voice_ms is not None]

    return compare(answered(first), answered(second))


def _sweep_rounds(variants: list[Variant], turns: int) -> list[tuple[Variant, int]]:
    """Who runs the concurrency sweep, and for how many turns per session each time: one variant
    alone; two in the order A, B, B, A with the turns split in halves, so drift in the machine's
    load falls on both."""
    if len(variants) == 1:
        return [(variants[0], turns)]
    first, second = turns - turns // 2, turns // 2
    rounds = [(variants[0], first), (variants[1], first), (variants[1], second), (variants[0], second)]
    return [(variant, n) for variant, n in rounds if n > 0]


def _publish(results_md: Path, out: Path, argv: list[str], section: str) -> None:
    """Write this run into a committed report as one named section, with the exact command and
    its plots beside the report. Other sections and any hand-written text are kept."""
    plots = results_md.parent / "results"
    plots.mkdir(parents=True, exist_ok=True)
    for name in ("latency_cdf.png", "stages.png"):
        shutil.copy(out / name, plots / f"{section}-{name}")
    command = "voxloop bench " + " ".join(shlex.quote(a) for a in argv)
    body = (f"<!-- run:{section} -->\n### {section}\n\nMeasured {time.strftime('%Y-%m-%d %H:%M')} with:\n\n"
            f"```bash\n{command}\n```\n\n" + (out / "summary.md").read_text()
            + f"\n![latency CDF](results/{section}-latency_cdf.png)\n\n![stage breakdown](results/{section}-stages.png)\n"
            f"<!-- /run:{section} -->")
    text = results_md.read_text() if results_md.exists() else "# Benchmark results\n"
    start, end = f"<!-- run:{section} -->", f"<!-- /run:{section} -->"
    if start in text and end in text:
        text = text[:text.index(start)] + body + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    results_md.write_text(text)


def _stage_rtf(serve_args: list[str], clips) -> dict:
    from voxloop.bench.stage_rtf import PROMPTS, measure_stage_rtf
    from voxloop.client.cli import build_parser, _model_options
    from voxloop.voice.models import load_cascade

    options = _model_options(build_parser().parse_args(["serve", *serve_args]))
    models = load_cascade(options)
    with tqdm(total=len(clips) + len(PROMPTS), desc="stage RTF", unit="item") as bar:
        return measure_stage_rtf(models, clips, progress=bar.update)


def _summary_markdown(results, summaries, sweep_summaries, rtf, ratios, variants, main_turns, sweep_ratios=None) -> str:
    parts = [f"Machine: {results['machine']}", ""]
    if results.get("stopped_by_time_budget"):
        parts += ["**Stopped by `--time-budget-s`**: the turns below are all that were measured; what remained "
                  "(turns, concurrency sweep, real-time factors) was skipped.", ""]
    parts += ["Voice-to-voice latency: the first audible sample of the reply (as a client that plays deltas on arrival "
              "would hear it) minus the true end of speech in the clip (offline VAD + energy, cached). "
              "Every turn streams a real clip in 20 ms blocks paced in real time.", "",
              report.markdown_table(summaries), "", "Stages (median ms after the true end of speech):", "",
              report.stage_table(summaries)]
    parts += ["", "The turn's work step by step (server marks; negative: done before the turn was confirmed):", "",
              report.chain_table({v.name: [t for t in main_turns if t.variant == v.name] for v in variants})]
    slow_ms = 800
    parts += ["", f"Turns over {slow_ms} ms (server facts from `response.done.response.voxloop.timings`):", "",
              report.slow_turns_table(main_turns, slow_ms)]
    if ratios:
        parts += ["", f"Ratio {variants[1].name} / {variants[0].name} (same run, interleaved): " + ratios.text()]
    if any(v["sessions"] > 1 for v in sweep_summaries.values()):
        parts += ["", "Concurrency sweep (sessions talking at once to one server):", "", report.markdown_table(sweep_summaries)]
    for n, ratio in (sweep_ratios or {}).items():
        parts += ["", f"Ratio {variants[1].name} / {variants[0].name} at {n} sessions (same run, alternating A B B A): "
                  + ratio.text()]
    if rtf:
        parts += ["", "Real-time factor per stage (compute time / audio duration, in-process, same models):", "",
                  "| stage | median RTF | p95 RTF |", "|---|---|---|"]
        parts += [f"| {stage} | {v['median']:.3f} | {v['p95']:.3f} |" for stage, v in rtf.items()]
    return "\n".join(parts) + "\n"
