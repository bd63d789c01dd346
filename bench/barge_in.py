"""How soon the server hears a barge-in through the client's echo canceller, and whether the assistant's own
voice ever passes for one.

The user cuts in over the assistant's first reply of a session, so the canceller starts fresh (the hard
case: AEC3 has not converged). The reply is the bundled Piper voice, the user a real clip from the shared
speech set, and between them an echo path: none (headphones), a laptop (one reflection), or a reverberant
room. The microphone signal goes block by block through each canceller, as `LiveTalk` sends it, and then
through the server's own VAD and turn detector, which decide when `speech_started` would fire.

Reported per echo path, cut-in time and canceller:
- heard: cut-ins that fired `speech_started` at all;
- extra delay: when it fired, minus when it fires for the same clip on a silent speaker with no canceller;
- false barge-ins: replies alone (nobody talking) that fired it, the assistant cutting itself off;
- a path change: a reply on headphones, then one over a speaker, as when the headphones come off.

    python -m voxloop.bench.barge_in --out bench/out/barge-in
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from voxloop.bench.speech import load_clips
from voxloop.client.aec import EchoCanceller
from voxloop.client.audio_io import BLOCK_MS, WIRE_RATE
from voxloop.codecs.audiofile import load_audio
from voxloop.codecs.resample import resample

REPLIES = [
    "Sure. The ship should arrive within a week, depending on the weather and the port schedule. I can check the details for you.",
    "Paris is the capital of France. It is known for its museums, its cafes, and the Eiffel Tower, which was built in eighteen eighty nine.",
    "That is a great question. Photosynthesis is how plants turn sunlight, water, and carbon dioxide into sugar and oxygen.",
    "Here is a short plan. First, make a list of what you need. Then pick a day, and finally ask a friend to help you carry things.",
    "I am sorry to hear that. A warm drink and some rest usually help, but if it gets worse, please see a doctor.",
    "The answer is forty two. Many people know it from a science fiction novel, where it is the answer to everything.",
    "Good morning! Today will be sunny with a light breeze, and the temperature should reach about twenty degrees.",
    "To boil an egg, put it in boiling water for about seven minutes, then cool it under cold water before you peel it.",
    "The meeting is at three o'clock in the small room on the second floor. Bring the report if you can.",
    "Yes, you can. Just open the settings, choose the sound tab, and pick the headphones as your output device.",
    "The river is about six hundred kilometers long. It starts in the mountains and ends in a wide, slow delta.",
    "No problem at all. I have added milk, bread, and two lemons to your shopping list. Anything else?",
]
LEAD_IN_S = 3.0  # the session runs this long before the reply: the canceller has heard only silence
MIC_NOISE_DBFS = -65.0


@dataclass(frozen=True)
class EchoPath:
    """The speaker reaching the microphone: `gain_db` below the played level, `delay_ms` late."""

    name: str
    gain_db: float | None  # None: no echo at all
    reverberant: bool = False
    delay_ms: float = 60.0

    def echo(self, played: np.ndarray, seed: int = 0) -> np.ndarray:
        if self.gain_db is None:
            return np.zeros_like(played)
        if self.reverberant:  # a direct path and a diffuse tail, RT60 0.3 s
            rng = np.random.default_rng(seed)
            t = np.arange(int(0.4 * WIRE_RATE)) / WIRE_RATE
            response = rng.normal(0.0, 1.0, t.size) * np.exp(-6.9 * t / 0.3)
            response[0] = 3.0
        else:  # a direct path and one reflection 17 ms later
            response = np.zeros(int(0.017 * WIRE_RATE) + 1)
            response[0], response[-1] = 1.0, 0.4
        response *= 10 ** (self.gain_db / 20) / np.linalg.norm(response)
        heard = np.convolve(played, response)[:played.size]
        shift = int(self.delay_ms * WIRE_RATE / 1000)
        return np.concatenate([np.zeros(shift), heard[:played.size - shift]]).astype(np.float32)


HEADPHONES, LAPTOP, ROOM = EchoPath("headphones", None), EchoPath("laptop -6 dB", -6.0), EchoPath("room -6 dB", -6.0, reverberant=True)
PATHS = [HEADPHONES, LAPTOP, ROOM, EchoPath("room 0 dB", 0.0, reverberant=True)]

CANCELLERS: dict[str, Callable[[], EchoCanceller | None]] = {
    "no AEC": lambda: None,
    "AEC3": lambda: EchoCanceller(WIRE_RATE, double_talk=False),
    "AEC3 + double talk": lambda: EchoCanceller(WIRE_RATE),
}


def through(canceller: EchoCanceller | None, played: np.ndarray, mic: np.ndarray) -> np.ndarray:
    """What the client sends: block by block, the speaker's block before the mic's."""
    if canceller is None:
        return mic
    block = WIRE_RATE * BLOCK_MS // 1000
    sent = []
    for start in range(0, mic.size - block + 1, block):
        canceller.far_end(played[start:start + block])
        sent.append(canceller.process(mic[start:start + block]))
    return np.concatenate(sent)


class ServerEars:
    """The server's VAD and turn detector (default settings), over a whole recording."""

    def __init__(self):
        from voxloop.voice.vad import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, SileroVAD

        self._vad, self._frame, self._frame_ms, self._rate = SileroVAD(), FRAME_SAMPLES, FRAME_MS, SAMPLE_RATE

    def speech_started_s(self, audio: np.ndarray, after_s: float = 0.0) -> float | None:
        """When `speech_started` would fire (the end of the frame that decides it), first at or after `after_s`."""
        from voxloop.voice.turns import SpeechStarted, TurnDetectionConfig, TurnDetector

        stream, detector = self._vad.stream(), TurnDetector(TurnDetectionConfig(), self._frame_ms)
        samples = resample(audio, WIRE_RATE, self._rate)
        for start in range(0, samples.size - self._frame + 1, self._frame):
            event = detector.process(stream.probability(samples[start:start + self._frame]))
            at = (start + self._frame) / self._rate
            if isinstance(event, SpeechStarted) and at >= after_s:
                return at
        return None

    def onset_s(self, user: np.ndarray, seed: int = 0) -> float | None:
        """When `speech_started` fires for `user` alone (a second of mic noise before it), from its first sample:
        the reference that a canceller's extra delay is measured against."""
        lead = np.zeros(WIRE_RATE, np.float32)
        fired = self.speech_started_s(np.concatenate([lead, user]) + noise(lead.size + user.size, seed))
        return None if fired is None else fired - 1.0


@dataclass(frozen=True)
class CutIn:
    path: str
    cut_in_s: float  # into the reply
    canceller: str
    clip: str
    heard: bool
    extra_delay_ms: float | None


@dataclass(frozen=True)
class ReplyAlone:
    scenario: str  # an echo path's name, or the path change
    canceller: str
    reply: int
    false_barge_in: bool


def synthesize_replies() -> list[np.ndarray]:
    import onnxruntime

    from voxloop.voice.tts import PiperSynthesizer

    onnxruntime.set_seed(0)  # Piper samples its prosody: the same replies on every run
    tts = PiperSynthesizer()

    async def speak(text: str) -> np.ndarray:
        return np.concatenate([chunk async for chunk in tts.synthesize(text)])

    return [asyncio.run(speak(text)) for text in REPLIES]


def session(reply: np.ndarray, user: np.ndarray | None, path: EchoPath, cut_in_s: float, seed: int):
    """The speaker's and the mic's signals: silence, the reply (and the user from `cut_in_s` into it), 1 s more."""
    lead = int(LEAD_IN_S * WIRE_RATE)
    played = np.zeros(lead + reply.size + WIRE_RATE, dtype=np.float32)
    played[lead:lead + reply.size] = reply
    mic = path.echo(played, seed) + noise(played.size, seed)
    user_start = lead + int(cut_in_s * WIRE_RATE)
    if user is not None:
        said = user[:played.size - user_start]
        mic[user_start:user_start + said.size] += said
    return played, mic, user_start / WIRE_RATE


def noise(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 10 ** (MIC_NOISE_DBFS / 20), size).astype(np.float32)


def measure(clip_limit: int | None, cut_ins: list[float], bar: tqdm | None = None) -> tuple[list[CutIn], list[ReplyAlone]]:
    bar = tqdm(disable=True) if bar is None else bar
    ears = ServerEars()
    replies = synthesize_replies()
    clips = load_clips()[:clip_limit]
    users = [load_audio(clip.path, WIRE_RATE) for clip in clips]
    cut_in_results: list[CutIn] = []
    for k, (clip, user) in enumerate(zip(clips, users)):
        reference = ears.onset_s(user, seed=k)
        for path in PATHS:
            for cut_in in cut_ins:
                played, mic, user_start = session(replies[k % len(replies)], user, path, cut_in, seed=k)
                for name, make in CANCELLERS.items():
                    if name == "no AEC" and path.gain_db is not None:
                        continue  # the echo cuts in before the user does: see the replies alone
                    fired = ears.speech_started_s(through(make(), played, mic), after_s=user_start)
                    heard = fired is not None and reference is not None
                    delay = 1000 * (fired - user_start - reference) if heard else None
                    cut_in_results.append(CutIn(path.name, cut_in, name, clip.name, fired is not None, delay))
                    bar.update()
    alone: list[ReplyAlone] = []
    for k, reply in enumerate(replies):
        for path in PATHS[1:]:
            played, mic, _ = session(reply, None, path, 0.0, seed=k)
            for name, make in CANCELLERS.items():
                alone.append(ReplyAlone(path.name, name, k, ears.speech_started_s(through(make(), played, mic)) is not None))
                bar.update()
        played, mic, second_starts = path_change(reply, replies[(k + 1) % len(replies)], k)
        for name, make in CANCELLERS.items():
            fired = ears.speech_started_s(through(make(), played, mic), after_s=second_starts)
            alone.append(ReplyAlone(f"headphones, then {ROOM.name}", name, k, fired is not None))
            bar.update()
    return cut_in_results, alone


def path_change(first: np.ndarray, second: np.ndarray, seed: int):
    """A reply on headphones, a second of quiet, then a reply over a speaker in a room, nobody talking."""
    gap = np.zeros(WIRE_RATE, dtype=np.float32)
    before = np.concatenate([np.zeros(int(LEAD_IN_S * WIRE_RATE), np.float32), first, gap])
    played = np.concatenate([before, second, gap])
    over_the_speaker = played.copy()
    over_the_speaker[:before.size] = 0.0
    mic = ROOM.echo(over_the_speaker, seed) + noise(played.size, seed)
    return played, mic, before.size / WIRE_RATE


def total_work(clips: int, cut_ins: int) -> int:
    echo_paths = sum(path.gain_db is not None for path in PATHS)
    cut_in_trials = clips * cut_ins * (len(PATHS) * len(CANCELLERS) - echo_paths)  # no "no AEC" over an echo
    return cut_in_trials + len(REPLIES) * (echo_paths + 1) * len(CANCELLERS)  # each echo path alone, the path change


def summary(cut_ins: list[CutIn], alone: list[ReplyAlone]) -> dict:
    rows = []
    for key in dict.fromkeys((c.path, c.cut_in_s, c.canceller) for c in cut_ins):
        trials = [c for c in cut_ins if (c.path, c.cut_in_s, c.canceller) == key]
        delays = sorted(c.extra_delay_ms for c in trials if c.extra_delay_ms is not None)
        rows.append({"path": key[0], "cut_in_s": key[1], "canceller": key[2], "heard": sum(c.heard for c in trials),
                     "trials": len(trials), "median_ms": statistics.median(delays) if delays else None,
                     "p95_ms": delays[min(len(delays) - 1, int(0.95 * len(delays)))] if delays else None})
    false_rows = []
    for key in dict.fromkeys((a.scenario, a.canceller) for a in alone):
        trials = [a for a in alone if (a.scenario, a.canceller) == key]
        false_rows.append({"scenario": key[0], "canceller": key[1], "false": sum(a.false_barge_in for a in trials),
                           "replies": len(trials)})
    return {"cut_ins": rows, "replies_alone": false_rows}


def markdown(result: dict) -> str:
    names = list(CANCELLERS)
    lines = ["Barge-in over the session's first reply: `speech_started` heard / cut-ins, and its delay beyond the same "
             "clip on a silent speaker (median / p95 ms).", "",
             "| Echo path | Cut in at | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    rows = result["cut_ins"]
    for path, cut_in in dict.fromkeys((r["path"], r["cut_in_s"]) for r in rows):
        cells = []
        for name in names:
            r = next((r for r in rows if (r["path"], r["cut_in_s"], r["canceller"]) == (path, cut_in, name)), None)
            if r is None:
                cells.append("(the echo cuts in first)")
                continue
            delay = f"{r['median_ms']:.0f} / {r['p95_ms']:.0f}" if r["median_ms"] is not None else "–"
            cells.append(f"{r['heard']}/{r['trials']}: {delay}")
        lines.append(f"| {path} | {cut_in:g} s | " + " | ".join(cells) + " |")
    lines += ["", "The assistant cutting itself off: replies alone that fired `speech_started`.", "",
              "| Echo path | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    alone = result["replies_alone"]
    for scenario in dict.fromkeys(r["scenario"] for r in alone):
        cells = [next(f"{r['false']}/{r['replies']}" for r in alone if (r["scenario"], r["canceller"]) == (scenario, name))
                 for name in names]
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Left, when the cut-in was heard: median extra delay per scenario, one bar per canceller, p95 as a
    whisker, misses written above. Right, the replies alone that cut themselves off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(CANCELLERS)
    colors = dict(zip(names, ["tab:gray", "tab:orange", "tab:green"]))
    width = 0.8 / len(names)
    fig, (delays, false) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 1.2]})
    rows = result["cut_ins"]
    scenarios = list(dict.fromkeys((r["path"], r["cut_in_s"]) for r in rows))
    for i, name in enumerate(names):
        offset = (i - (len(names) - 1) / 2) * width
        for x, scenario in enumerate(scenarios):
            r = next((r for r in rows if (r["path"], r["cut_in_s"], r["canceller"]) == (*scenario, name)), None)
            if r is None or r["median_ms"] is None:
                continue
            whisker = max(0.0, r["p95_ms"] - r["median_ms"])
            delays.bar(x + offset, r["median_ms"], width, yerr=[[0.0], [whisker]], capsize=3, color=colors[name],
                       label=name if x == 0 or name != "no AEC" and x == 2 else None)
            if r["heard"] < r["trials"]:
                delays.annotate(f"{r['trials'] - r['heard']} missed", (x + offset, r["p95_ms"]), ha="center",
                                va="bottom", fontsize=7, color="tab:red", rotation=90)
    delays.set_xticks(range(len(scenarios)), [f"{p}\nat {c:g} s" for p, c in scenarios], fontsize=8)
    delays.set_ylim(top=delays.get_ylim()[1] * 1.12)  # room for the misses written above the whiskers
    delays.set_ylabel("speech_started later than on a silent speaker, ms")
    delays.set_title("User cuts in over the session's first reply", fontsize=10)
    delays.grid(axis="y", alpha=0.3)
    handles, labels = delays.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    delays.legend(unique.values(), unique.keys(), fontsize=8)
    alone = result["replies_alone"]
    kinds = list(dict.fromkeys(r["scenario"] for r in alone))
    for i, name in enumerate(names):
        shares = [next(100 * r["false"] / r["replies"] for r in alone if (r["scenario"], r["canceller"]) == (k, name))
                  for k in kinds]
        false.bar(np.arange(len(kinds)) + (i - (len(names) - 1) / 2) * width, shares, width, color=colors[name])
    false.set_xticks(range(len(kinds)), [k.replace(", then ", ",\nthen ") for k in kinds], fontsize=7)
    false.set_ylabel("replies that cut themselves off, %")
    false.set_title("Nobody talking: the echo alone", fontsize=10)
    false.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(result: dict, out: Path | None) -> str:
    report = markdown(result)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "barge_in.json").write_text(json.dumps(result, indent=1))
        (out / "barge_in.md").write_text(report)
        plot(result, out / "barge_in.png")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voxloop.bench.barge_in", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=None, help="use only the first N clips (default: all)")
    parser.add_argument("--cut-in", type=float, nargs="+", default=[0.1, 1.0], help="seconds into the reply")
    parser.add_argument("--out", type=Path, default=None, help="write barge_in.json, barge_in.md and barge_in.png here")
    parser.add_argument("--from-json", type=Path, default=None, help="measure nothing: redraw an earlier barge_in.json")
    args = parser.parse_args(argv)
    if args.from_json:
        print(write_report(json.loads(args.from_json.read_text()), args.out))
        return 0
    clips = len(load_clips()[:args.clips])
    with tqdm(total=total_work(clips, len(args.cut_in)), desc="barge-in trials", unit="trial") as bar:
        cut_ins, alone = measure(args.clips, args.cut_in, bar)
    result = summary(cut_ins, alone)
    result["trials"] = {"cut_ins": [asdict(c) for c in cut_ins], "replies_alone": [asdict(a) for a in alone]}
    print(write_report(result, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
