"""Turn detection: a state machine over per-frame speech probabilities.

It is pure (no model, no clock), so it is tested exactly. Times are milliseconds of input
audio since the session started, the same clock as the protocol's `audio_start_ms`.

Besides start and stop it reports *pauses*: a short silence inside a turn (`eager_after_ms`)
after which the session starts the turn's work speculatively, and *resumes* when the user
goes on talking, so that work is thrown away. How long a pause must last to end the turn can
be changed while the pause runs (`hold_pause`), once the session knows whether the words so
far sound finished.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


UNFINISHED_RULES = ("punctuation", "evidence", "llm")  # see TurnDetectionConfig.unfinished_rule
TURN_DETECTION_TYPES = ("server_vad", "semantic_vad")
EAGERNESS = ("low", "medium", "high", "auto")


@dataclass
class TurnDetectionConfig:
    """The Realtime API's `server_vad` settings, with its defaults, plus voxloop's extensions.

    `semantic_vad` (the Realtime API's other type) is the same machine with its pauses set by
    `eagerness` (see `semantic_vad`)."""

    type: str = "server_vad"
    eagerness: str = "auto"  # semantic_vad only
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    # Extension: speech must last this long before it counts, so coughs and clicks neither
    # open a turn nor interrupt the assistant.
    min_speech_ms: int = 160
    # Extension: after this much silence the turn's transcription and reply start
    # speculatively (0 turns it off); they are discarded if the user goes on. Counted in the
    # VAD's 32 ms frames: 100 meant 128. Starting sooner pays where the work after the eager
    # start outlasts the pause that ends the turn: on the 2-core EPYC, 64 against 100 gave
    # p50 0.84, p95 0.94, faster in 27 of 32 paired turns, with as many speculative starts (53
    # -> 54); on the faster Xeon it was neutral (0.99, 1.10). 32 against 64 was within the
    # noise (0.93, 1.04; faster in 19 of 32) (bench/RESULTS.md, `eager-64-epyc`, `eager-32-epyc`, `eager-64`).
    eager_after_ms: int = 64
    # Extension: the pause that ends a turn whose words sound unfinished ("... and", no
    # final punctuation), instead of silence_duration_ms.
    unfinished_silence_ms: int = 900
    # Extension: how a transcript is judged unfinished (voice/speculation.py). "evidence": a
    # continuer word ("and", "the") or trailing comma holds unfinished_silence_ms, a missing
    # final stop alone holds unpunctuated_silence_ms, and a full stop after a word that often
    # ends sentences ("that.", "so.") ends the turn normally. "punctuation" (the first rule):
    # no final punctuation, or any continuer word even after a full stop, holds
    # unfinished_silence_ms.
    # "llm": as "evidence" for continuer words, but otherwise the LLM judges the words without
    # their final punctuation: a sentence end (".", "?", "!" or the end of the message) less
    # likely than sentence_end_threshold as the next token holds unfinished_silence_ms, and a
    # likelier one ends the turn normally, punctuated or not.
    unfinished_rule: str = "llm"
    unpunctuated_silence_ms: int = 900
    # Picked offline on the 32 paused clips (`python -m voxloop.bench.turn_judge`), so optimistic:
    # with the bundled model as the server loads it (Q6_K) 0.015 holds 22 of 32 half sentences and
    # ends all 32 whole ones (the lowest whole scores 0.020). For the shipped Q4_1 it was 0.01 (21 and
    # 32); the Q6_K copy scores four halves between 0.010 and 0.014, so at 0.01 it held only 18.
    sentence_end_threshold: float = 0.015
    # Extension: the pause that ends a turn whose words sound clearly finished, instead of
    # silence_duration_ms (0: off). Clearly finished means two signals agree: Whisper put a
    # final ".", "?" or "!" after them, and the LLM (rule "llm") finds a sentence end after the
    # words at least finished_threshold likely. What it risks is ending a turn at a pause between
    # two whole sentences. Over the 32 clips (so optimistic) no natural pause inside a turn is
    # both 350 ms long and clearly finished at 0.4 (the nearest: 480 ms after "...new and strange."
    # at 0.35, 320 ms at 0.78), and in the voice loop about half the turns end after 350 ms:
    # end-of-turn wait 581 -> 451 ms at the median, p50 0.97, p95 0.88, cut off early 3/32 -> 2/32
    # (`finished-350`, with eager_after_ms 100; bench/RESULTS.md).
    finished_silence_ms: int = 350
    finished_threshold: float = 0.4
    # Extension: the words also count as clearly finished when Whisper itself found a final
    # stop at least this likely after them (0: off), whatever the LLM's score, unless the LLM
    # holds them as unfinished (below sentence_end_threshold). Whisper hears how the words were
    # said: offline (`python -m voxloop.bench.turn_judge`), 25 of the 32 whole clips scored at
    # least 0.85 (the two that stop at a comma 0.49 and 0.10), and 1 of their 32 halves, cut at a
    # mid-sentence pause and heard 100 ms into it as the server judges them, did. In the
    # voice loop 28 of 32 turns ended after the finished pause instead of 12: p50 0.87, p95 0.90,
    # cut off early 2/32 -> 3/32 (`heard-stop`); on the paused-speech set p50 0.98, p95 0.82,
    # sentences cut at the inserted pause 16/32 -> 14/32 (`paused-heard-stop`; bench/RESULTS.md).
    heard_stop_threshold: float = 0.85
    # Extension: a heard stop at least this likely overrules the LLM's hold (a sentence end below
    # sentence_end_threshold): the two judges disagree, so the turn ends after
    # silence_duration_ms, neither held to unfinished_silence_ms nor ended after the finished
    # pause (0: off). The LLM misjudges garbled words: "...the letter used should be fine and
    # form." scored 0.011 in the voice loop, heard 0.93, and was held 900 ms. Offline no half
    # sentence the LLM holds that ends on a written stop is heard above 0.84 (0.83 "...from the
    # North.", 0.71 "...in passing."), so the margin is thin. In the voice loop that turn went 1072 ->
    # 651 ms and the rest stayed within the noise: p50 1.04, p95 0.91 (`heard-overrule`); on the
    # paused-speech set it applied to no turn (0.99, 0.98; bench/RESULTS.md).
    heard_stop_overrule_threshold: float = 0.9
    # Extension: while the words before a pause are being judged (transcribed, and scored by the
    # LLM with rule "llm"), the pause ends the turn no sooner than the judgment, and at the
    # longest hold at most. It costs no reply time, as the reply needs that transcript anyway;
    # without it, a judgment that comes after silence_duration_ms cannot hold the pause.
    end_after_judgment: bool = True
    # Extension: the LLM's judgment (rule "llm") must start before the pause reaches
    # silence_duration_ms, or the words alone judge (rule "evidence"). One LLM serves every
    # session, one request at a time: behind another session's reply the judgment came after
    # the longest hold, so under load every turn was held to it.
    judge_by_words_when_llm_busy: bool = True


# What semantic_vad's eagerness sets. The Realtime API says only that "low" waits longer for the
# user to go on and "high" answers sooner; here the judge of the words (the LLM's sentence-end
# probability and Whisper's punctuation) decides, and eagerness sets how long each verdict waits.
# "high" ends a clearly finished sentence after 200 ms. Measured when it also started the reply
# after 100 ms of silence, sooner than the default then (both now start at the default): on the
# H100 p50 0.66x, with 3 of 8 turns cut before the speaker finished against 1 of 8 (bench/RESULTS.md,
# "The cascade on a GPU", session 5); on the 2-core Xeon, now that the turn's
# work about fits the pause, p50 0.86 with 18 of 32 turns cut at a mid-sentence pause against 15
# (`semantic-high-xeon`, session 10). "auto" and "medium" are server_vad's defaults (a clearly
# finished sentence ends after 350 ms). "low" is not measured: it only waits longer, which costs
# latency by construction, and never ends a turn sooner for sounding finished.
SEMANTIC_EAGERNESS: dict[str, dict[str, int | float]] = {
    "low": {"silence_duration_ms": 800, "unfinished_silence_ms": 1500, "unpunctuated_silence_ms": 1500,
            "finished_silence_ms": 0, "eager_after_ms": 160},
    "medium": {},
    "auto": {},
    "high": {"finished_silence_ms": 200, "finished_threshold": 0.2},
}


def semantic_vad(eagerness: str = "auto", **overrides) -> TurnDetectionConfig:
    """semantic_vad at `eagerness`: server_vad's defaults with that eagerness's pauses, then `overrides`."""
    if eagerness not in SEMANTIC_EAGERNESS:
        raise ValueError(f"eagerness must be one of {', '.join(EAGERNESS)}, not {eagerness!r}")
    config = TurnDetectionConfig(type="semantic_vad", eagerness=eagerness, unfinished_rule="llm")
    return replace(config, **{**SEMANTIC_EAGERNESS[eagerness], **overrides})


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechPaused:
    audio_end_ms: int  # where the speech before the pause ended


@dataclass(frozen=True)
class SpeechResumed:
    audio_end_ms: int  # where the speech before the pause ended
    silence_ms: int  # how long the pause lasted


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int
    silence_ms: int = 0  # the pause that ended the turn: silence_duration_ms, or what hold_pause asked for


TurnEvent = SpeechStarted | SpeechPaused | SpeechResumed | SpeechStopped


class TurnDetector:
    # Leaving speech needs the probability to drop clearly below the threshold (hysteresis),
    # or a voice hovering around it would flicker between states.
    HYSTERESIS = 0.15

    def __init__(self, config: TurnDetectionConfig, frame_ms: float):
        self.config = config
        self.frame_ms = frame_ms
        self.in_speech = False
        self._elapsed_ms = 0.0
        self._run_start_ms: float | None = None  # start of the current candidate speech run
        self._silence_start_ms: float | None = None
        self._paused = False
        self._pause_target_ms: float | None = None

    def reset(self) -> None:
        self.in_speech = False
        self._run_start_ms = None
        self._end_pause()

    @property
    def elapsed_ms(self) -> float:
        return self._elapsed_ms

    @property
    def silence_ms(self) -> float:
        """How long the current in-turn pause has lasted (0 when the user is speaking)."""
        if not self.in_speech or self._silence_start_ms is None:
            return 0.0
        return self._elapsed_ms - self._silence_start_ms

    def hold_pause(self, silence_ms: float) -> None:
        """End the turn only once the current pause has lasted `silence_ms`."""
        if self._silence_start_ms is not None:
            self._pause_target_ms = silence_ms

    def _end_pause(self) -> None:
        self._silence_start_ms = None
        self._paused = False
        self._pause_target_ms = None

    def process(self, probability: float) -> TurnEvent | None:
        frame_start = self._elapsed_ms
        self._elapsed_ms += self.frame_ms
        cfg = self.config
        if not self.in_speech:
            if probability >= cfg.threshold:
                if self._run_start_ms is None:
                    self._run_start_ms = frame_start
                if self._elapsed_ms - self._run_start_ms >= cfg.min_speech_ms:
                    self.in_speech = True
                    self._end_pause()
                    return SpeechStarted(int(self._run_start_ms))
            elif probability < cfg.threshold - self.HYSTERESIS:
                self._run_start_ms = None
            return None

        if probability >= cfg.threshold - self.HYSTERESIS:
            resumed = None
            if self._paused:
                resumed = SpeechResumed(int(self._silence_start_ms), int(frame_start - self._silence_start_ms))
            self._end_pause()
            return resumed
        if self._silence_start_ms is None:
            self._silence_start_ms = frame_start
        silence = self._elapsed_ms - self._silence_start_ms
        target = self._pause_target_ms if self._pause_target_ms is not None else cfg.silence_duration_ms
        if silence >= target:
            end = self._silence_start_ms
            self.reset()
            self._run_start_ms = None
            return SpeechStopped(int(end), int(target))
        if not self._paused and cfg.eager_after_ms and silence >= cfg.eager_after_ms:
            self._paused = True
            return SpeechPaused(int(self._silence_start_ms))
        return None
