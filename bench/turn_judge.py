"""Offline check of the turn-completion judge: does it tell half a sentence from a whole one?

For each paused-speech clip (bench/paused_speech.py) Whisper transcribes the audio up to the
inserted pause, plus 100 ms of silence as the server holds it at that moment, and the whole
clip. The session's judge scores both: the words-only rule (`unfinished_reason`), the LLM's
sentence-end probability, and Whisper's own probability of the final stop it heard. A good
judge holds the halves and ends the wholes, and calls only the wholes clearly finished.

    python -m voxloop.bench.turn_judge [--threshold 0.015] [--heard-stop-threshold 0.85]
        [--heard-stop-overrule-threshold 0.9]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict, dataclass, replace

import numpy as np
from tqdm import tqdm

from voxloop.voice.asr import WINDOW_PADDING_S
from voxloop.voice.turns import TurnDetectionConfig

RATE = 16000
HELD_SILENCE_S = 0.1  # what the server holds of the pause when it judges the words (TRAILING_CONTEXT_MS)


@dataclass
class JudgedClip:
    clip: str
    half: str  # Whisper's words up to the pause
    whole: str
    half_rule: str | None  # unfinished_reason: None means "finished"
    whole_rule: str | None
    half_p: float | None  # the LLM's sentence-end probability
    whole_p: float | None
    half_heard: float | None = None  # Whisper's probability of a final stop after the words (Transcript.stop_p)
    whole_heard: float | None = None


def separation(halves: list[float], wholes: list[float]) -> float:
    """Area under the ROC curve: the chance a whole sentence scores above a half one (ties count half)."""
    pairs = [(w > h) + 0.5 * (w == h) for w in wholes for h in halves]
    return float(np.mean(pairs)) if pairs else float("nan")


def held_and_ended(clips: list[JudgedClip], threshold: float | None) -> tuple[int, int]:
    """(halves held, wholes ended) under the session's rule: the words-only rule when `threshold`
    is None, else the LLM rule (continuer words hold; otherwise P below `threshold` holds)."""
    from voxloop.voice.speculation import CONTINUER

    def holds(rule: str | None, p: float | None) -> bool:
        if threshold is None or p is None:
            return rule is not None
        return rule == CONTINUER or p < threshold

    held = sum(holds(c.half_rule, c.half_p) for c in clips)
    ended = sum(not holds(c.whole_rule, c.whole_p) for c in clips)
    return held, ended


def clearly_finished_counts(clips: list[JudgedClip], config: TurnDetectionConfig) -> tuple[int, int]:
    """(halves, wholes) the session's rule calls clearly finished, so ends after the shorter
    finished pause: a half there is a sentence cut off at a mid-sentence pause."""
    from voxloop.voice.speculation import unfinished_hold

    def finished(text: str, p: float | None, heard: float | None) -> bool:
        return unfinished_hold(text, config, p, heard)[1] < config.silence_duration_ms

    return (sum(finished(c.half, c.half_p, c.half_heard) for c in clips),
            sum(finished(c.whole, c.whole_p, c.whole_heard) for c in clips))


def overruled_counts(clips: list[JudgedClip], config: TurnDetectionConfig) -> tuple[int, int]:
    """(halves, wholes) the LLM holds as unfinished but Whisper's heard stop releases
    (`heard_stop_overrule_threshold`): a half there ends after the usual pause, not the long one."""
    from voxloop.voice.speculation import UNLIKELY_END, unfinished_hold

    def overruled(text: str, p: float | None, heard: float | None) -> bool:
        return (unfinished_hold(text, config, p, heard)[0] is None
                and unfinished_hold(text, replace(config, heard_stop_overrule_threshold=0.0), p, heard)[0] == UNLIKELY_END)

    return (sum(overruled(c.half, c.half_p, c.half_heard) for c in clips),
            sum(overruled(c.whole, c.whole_p, c.whole_heard) for c in clips))


def judge_clips(asr_window_s: float = WINDOW_PADDING_S) -> list[JudgedClip]:
    """`asr_window_s`: as `voxloop serve --asr-window` (0: Whisper's 30 s window)."""
    from voxloop.bench.paused_speech import build_paused_clips
    from voxloop.codecs.audiofile import load_audio
    from voxloop.voice.asr import WhisperTranscriber
    from voxloop.voice.config import DEFAULT_INSTRUCTIONS
    from voxloop.voice.llm import LlamaCppLLM
    from voxloop.voice.models import ModelOptions, llm_gguf_path
    from voxloop.voice.speculation import unfinished_reason, without_final_punctuation

    placements = json.loads((build_paused_clips() / "placements.json").read_text())
    # The server's LLM: the bundled model as the server loads it (re-quantized, voice/llm_quant.py).
    asr, llm = WhisperTranscriber(window_padding_s=asr_window_s or None), LlamaCppLLM(llm_gguf_path(ModelOptions()))

    async def probability(text: str) -> float | None:
        if not text:
            return None
        messages = [{"role": "system", "content": DEFAULT_INSTRUCTIONS},
                    {"role": "user", "content": without_final_punctuation(text)}]
        return await llm.sentence_end_probability(messages)

    judged = []
    for name, placement in tqdm(placements.items(), desc="judging", unit="clip"):
        audio = load_audio(placement["source"], RATE)
        cut = int(placement["at_s"] * RATE)
        half = asr.transcribe(np.concatenate([audio[:cut], np.zeros(int(HELD_SILENCE_S * RATE), np.float32)]))
        whole = asr.transcribe(audio)
        judged.append(JudgedClip(name.removesuffix("-paused.wav"), half.text, whole.text, unfinished_reason(half.text),
                                 unfinished_reason(whole.text), asyncio.run(probability(half.text)),
                                 asyncio.run(probability(whole.text)), half.stop_p, whole.stop_p))
    llm.close()
    return judged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=TurnDetectionConfig.sentence_end_threshold,
                        help="the LLM rule's sentence-end threshold (default: %(default)s, the server's)")
    parser.add_argument("--asr-window", type=float, default=WINDOW_PADDING_S, metavar="SECONDS",
                        help="Whisper's silence after the utterance, as `voxloop serve --asr-window` "
                             f"(default: {WINDOW_PADDING_S:g}; 0: the 30 s window)")
    parser.add_argument("--finished-threshold", type=float, default=TurnDetectionConfig.finished_threshold,
                        help="the LLM's sentence-end probability from which words count as clearly finished "
                             "(default: %(default)s, the server's)")
    parser.add_argument("--heard-stop-threshold", type=float, default=TurnDetectionConfig.heard_stop_threshold,
                        help="Whisper's final-stop probability from which words count as clearly finished "
                             "(default: %(default)s, the server's; 0: off)")
    parser.add_argument("--heard-stop-overrule-threshold", type=float,
                        default=TurnDetectionConfig.heard_stop_overrule_threshold,
                        help="Whisper's final-stop probability from which the LLM's hold no longer applies "
                             "(default: %(default)s, the server's; 0: off)")
    parser.add_argument("--json", help="also write every clip's transcripts and scores here")
    args = parser.parse_args(argv)
    clips = judge_clips(args.asr_window)
    scored = [c for c in clips if c.half_p is not None and c.whole_p is not None]
    print(f"{len(clips)} clips; LLM separation (AUC) {separation([c.half_p for c in scored], [c.whole_p for c in scored]):.3f}")
    for label, threshold in (("words-only rule", None), (f"LLM rule, threshold {args.threshold}", args.threshold)):
        held, ended = held_and_ended(clips, threshold)
        print(f"{label}: halves held {held}/{len(clips)}, wholes ended {ended}/{len(clips)}")
    heard = [c for c in clips if c.half_heard is not None and c.whole_heard is not None]
    print(f"Whisper's heard stop: separation (AUC) {separation([c.half_heard for c in heard], [c.whole_heard for c in heard]):.3f}")
    for heard_threshold in (0.0, args.heard_stop_threshold):
        config = TurnDetectionConfig(sentence_end_threshold=args.threshold, finished_threshold=args.finished_threshold,
                                     heard_stop_threshold=heard_threshold)
        halves, wholes = clearly_finished_counts(clips, config)
        print(f"clearly finished (LLM at {args.finished_threshold}, heard stop at {heard_threshold or 'off'}): "
              f"halves {halves}/{len(clips)}, wholes {wholes}/{len(clips)}")
    config = TurnDetectionConfig(sentence_end_threshold=args.threshold, heard_stop_threshold=args.heard_stop_threshold,
                                 heard_stop_overrule_threshold=args.heard_stop_overrule_threshold)
    halves, wholes = overruled_counts(clips, config)
    print(f"the LLM's hold overruled (heard stop at {args.heard_stop_overrule_threshold or 'off'}): "
          f"halves {halves}/{len(clips)}, wholes {wholes}/{len(clips)}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([asdict(c) for c in clips], handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
