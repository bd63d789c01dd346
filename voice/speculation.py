"""Eager end of turn: a turn's work, started in a short pause before the turn is confirmed.

When the user pauses, the session transcribes what it has and starts the reply (LLM and TTS)
at once, holding the reply's audio back. If the pause turns out to end the turn, the
transcript and the first audio are ready at that moment; if the user goes on, it is all
cancelled and the models' worker threads stop at their next step.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import numpy as np

from voxloop.voice.asr import Transcript
from voxloop.voice.cascade import SpeechPiece
from voxloop.voice.run_ahead import RunAhead
from voxloop.voice.settled_speech import after_settled
from voxloop.voice.turns import UNFINISHED_RULES, TurnDetectionConfig

# Words a sentence practically never ends on: a pause after them is the speaker thinking, even
# when Whisper put a full stop after them.
_STRONG_CONTINUERS = {"and", "but", "or", "nor", "because", "the", "a", "an", "of", "with", "from", "uh", "um", "er",
                      "erm", "if", "my", "your", "our", "their"}
# Words that often end a finished sentence too ("I think so.", "accept that.", "what for?"): they
# only count as unfinished without final punctuation.
_WEAK_CONTINUERS = {"so", "to", "that", "which", "like", "for", "when", "is", "are", "was", "in", "on", "at"}
_PUNCTUATION_RULE_CONTINUERS = {"and", "but", "or", "so", "because", "the", "a", "an", "to", "of", "with", "for", "that",
                                "which", "uh", "um", "er", "like", "if", "when", "my", "your", "is", "are", "was", "in",
                                "on", "at"}
_TRAILING = (",", ";", ":", "-", "\u2014", "...", "\u2026")

# Why a transcript sounds unfinished, strongest evidence first.
CONTINUER = "continuer"  # ends on a word like "and", or on a comma or ellipsis: hold the long pause
UNPUNCTUATED = "unpunctuated"  # only the final punctuation is missing, which Whisper tiny often drops
UNLIKELY_END = "unlikely_end"  # the LLM finds a sentence end improbable after these words


def unfinished_reason(text: str) -> str | None:
    """Whether, and why, a transcript reads like the speaker stopped mid-sentence.

    Whisper punctuates what it hears: a pause inside a sentence mostly comes out without a final
    full stop, or ends on a word like "and". But tiny models also leave the full stop off many
    finished sentences, so a missing stop alone is weaker evidence than a continuer word."""
    text = text.strip()
    if not text:
        return None
    last_word = re.sub(r"[^\w']", "", text.split()[-1].lower())
    if text.endswith(_TRAILING) or last_word in _STRONG_CONTINUERS:
        return CONTINUER
    if text[-1] in ".?!":
        return None
    return CONTINUER if last_word in _WEAK_CONTINUERS else UNPUNCTUATED


def sounds_unfinished(text: str) -> bool:
    """The original rule, kept as the `punctuation` turn rule: any continuer word, or no final
    punctuation, counts as unfinished, even after a full stop ("... accept that.")."""
    text = text.strip()
    if not text:
        return False
    last_word = re.sub(r"[^\w']", "", text.split()[-1].lower())
    return text[-1] not in ".?!" or last_word in _PUNCTUATION_RULE_CONTINUERS


def without_final_punctuation(text: str) -> str:
    """The words as the LLM judges them: Whisper's final stop is no evidence either way."""
    return re.sub(r"[^\w']+$", "", text.strip())


def unfinished_hold(text: str, config: TurnDetectionConfig, sentence_end_probability: float | None = None,
                    heard_stop_p: float | None = None) -> tuple[str | None, int]:
    """(why the words sound unfinished or None, the pause that should end the turn).

    `sentence_end_probability`: the LLM's probability that the words, without their final
    punctuation, end a sentence (rule "llm"; without it that rule falls back to "evidence").
    `heard_stop_p`: Whisper's probability of a final stop after the words (`Transcript.stop_p`)."""
    if config.unfinished_rule == "punctuation":
        reason = "unfinished" if sounds_unfinished(text) else None
    elif config.unfinished_rule in ("evidence", "llm"):
        reason = unfinished_reason(text)
        if config.unfinished_rule == "llm" and reason != CONTINUER and sentence_end_probability is not None:
            reason = UNLIKELY_END if sentence_end_probability < config.sentence_end_threshold else None
            if (reason == UNLIKELY_END and _ends_on_stop(text)
                    and _heard_at_least(config.heard_stop_overrule_threshold, heard_stop_p)):
                return None, config.silence_duration_ms
    else:
        raise ValueError(f"unfinished_rule must be one of {', '.join(UNFINISHED_RULES)}, not {config.unfinished_rule!r}")
    if reason is None:
        if config.finished_silence_ms and clearly_finished(text, config, sentence_end_probability, heard_stop_p):
            return None, min(config.finished_silence_ms, config.silence_duration_ms)
        return None, config.silence_duration_ms
    hold = config.unpunctuated_silence_ms if reason == UNPUNCTUATED else config.unfinished_silence_ms
    return reason, max(hold, config.silence_duration_ms)


def clearly_finished(text: str, config: TurnDetectionConfig, sentence_end_probability: float | None,
                     heard_stop_p: float | None = None) -> bool:
    """Whisper's final stop and a second signal both say the sentence ended. The stop alone is
    weak: tiny Whisper puts one on half sentences. The second is the LLM's judgment of the bare
    words (which finds many a half sentence a plausible whole one, and many a whole one not), or
    Whisper's own confidence in that stop, which hears whether the voice sounded finished."""
    if config.unfinished_rule != "llm" or not _ends_on_stop(text):
        return False
    judged = sentence_end_probability is not None and sentence_end_probability >= config.finished_threshold
    return judged or _heard_at_least(config.heard_stop_threshold, heard_stop_p)


def _ends_on_stop(text: str) -> bool:
    """Whisper wrote a final ".", "?" or "!" after the words."""
    return text.strip()[-1:] in (".", "?", "!")


def _heard_at_least(threshold: float, heard_stop_p: float | None) -> bool:
    """Whisper was at least `threshold` sure of the final stop it wrote (a threshold of 0: never)."""
    return bool(threshold) and heard_stop_p is not None and heard_stop_p >= threshold


def longest_hold(config: TurnDetectionConfig) -> int:
    """The longest pause `unfinished_hold` can ask for under `config`."""
    return max(config.silence_duration_ms, config.unfinished_silence_ms, config.unpunctuated_silence_ms)


@dataclass
class Speculation:
    audio_end_ms: int
    end_sample: int
    audio: np.ndarray  # the turn's audio after its settled start (voice/settled_speech.py), up to end_sample
    settled_words: list[str] = field(default_factory=list)  # the words of the audio before `audio`
    settled_samples: int = 0  # how much audio those words settled
    heard_words: list[str] = field(default_factory=list)  # the latest partial transcript of the whole turn
    marks: dict[str, float] = field(default_factory=dict)
    task: asyncio.Task | None = None  # transcribes, then may start `reply`; returns the Transcript
    reply: RunAhead[SpeechPiece] | None = None  # held in its buffer until the turn is confirmed
    unfinished: str | None = None  # why its transcript sounded unfinished, if it did (the pause was held)
    sentence_end: float | None = None  # the LLM's sentence-end probability for its words (rule "llm")
    transcript: Transcript | None = None  # of the whole turn, once its pass finished

    def whole_turn(self, transcript: Transcript) -> Transcript:
        """`transcript`, of `audio`, with the settled words in front."""
        return after_settled(self.settled_words, self.settled_samples, transcript, self.heard_words)

    async def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.reply is not None:
            await self.reply.cancel()
