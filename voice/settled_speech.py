"""The start of a long turn, transcribed for good while the user is still speaking.

Whisper's final pass at the end of a turn transcribes the whole utterance: on a 10 s turn most
of its 400 ms goes to words that have been clear for seconds. With `--settle-pauses`, a pause
inside the turn can split it. The words before the pause are transcribed on their own: by the pause's
speculative pass, or by the next partial pass when the user went on before that one finished.
Once a later partial transcript of the growing utterance starts with those same words (local
agreement), the audio up to the pause is settled. Every later pass at a pause or at the end of
the turn transcribes only what follows it and puts the settled words in front.

A pause is a clean place to cut, as no word straddles it, but the pass on the rest loses the
sentence it continues, and tiny Whisper then guesses its first words from less context. In two
interleaved runs on the 2-core EPYC it answered p50 0.95 and 0.89, p95 1.00 and 0.82 of the
whole-turn pass, for the same four words more wrong in 458 ("beat self-dick" for "beat Celtic"
after "football", "maybe consider it" for "may be considered"): WER +0.009 (bench/RESULTS.md,
`settle-pauses`, `settle-any-2`). So the partial passes go on over the whole turn, and the
latest one's words for the audio after the pause, heard in their sentence, replace the final
pass's as far as they go (`with_context`). In a third run (`settle-context`) that won back "Celtic"
and "may be considered", but two other words were lost (WER 0.049 -> 0.059), and over all 32
turns the latency was within the noise (p50 1.03, p95 1.00), though Whisper's step on the turns
that settled took 287 -> 201 ms at the median. The settled words keep the partial
transcript's punctuation, which heard both sides of the pause. Settling only where the partial
transcript ended a sentence would also keep the context, but settled 1 turn in 32 (`settle-sentences`).
Settling is off by default: the issue's targets allow no WER regression.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from difflib import SequenceMatcher

from voxloop.voice.asr import SAMPLE_RATE, Transcript

# A shorter pause may be a soft word ending that the VAD took for silence.
MIN_PAUSE_MS = 160
MIN_PAUSE_SAMPLES = MIN_PAUSE_MS * SAMPLE_RATE // 1000
# Settling less is not worth a pass, and a word or two alone is where Whisper guesses worst.
MIN_HEAD_S = 1.5
# The most of a pause that goes with the words before it: as the end of a turn keeps
# (TRAILING_CONTEXT_MS), for Silero calls soft word endings silence early.
HEAD_TRAILING_MS = 100
HEAD_TRAILING_SAMPLES = HEAD_TRAILING_MS * SAMPLE_RATE // 1000

_NON_WORD = re.compile(r"[^\w']")


def same_word(a: str, b: str) -> bool:
    """The same word, whatever its case and punctuation."""
    return normalized([a]) == normalized([b])


def normalized(words: list[str]) -> list[str]:
    """The words in lower case, without punctuation."""
    return [_NON_WORD.sub("", word.lower()) for word in words]


def agreed_prefix(a: list[str], b: list[str]) -> int:
    """How many words the two transcripts agree on from the start."""
    count = 0
    for x, y in zip(a, b):
        if not same_word(x, y):
            break
        count += 1
    return count


@dataclass
class _Candidate:
    """A pause the settled start may move to, once the words before it agree with a later partial."""

    end_sample: int
    words: list[str] | None = None  # the turn's words up to end_sample; None: not yet transcribed


class SettledSpeech:
    """One turn's settled start: its audio before `end_sample` is `words`.

    Positions are samples on the session's audio clock, as the turn's `start_sample` is."""

    def __init__(self, start_sample: int):
        self.end_sample = start_sample
        self.words: list[str] = []
        # The latest partial transcript of the whole turn: its words after the settled start were
        # heard with the sentence they continue (see `after_settled`).
        self.heard: list[str] = []
        self._candidate: _Candidate | None = None

    def paused(self, pause_start: int, resumed: int, transcribed: tuple[int, Transcript] | None = None) -> None:
        """The user went on at `resumed` after a pause that began at `pause_start`.

        `transcribed`: (end sample, transcript of the whole turn up to it), if the pause's
        speculative pass finished; it is used if it ends within the pause."""
        silence = resumed - pause_start
        if silence < MIN_PAUSE_SAMPLES:
            return
        usable = transcribed is not None and bool(transcribed[1].text)  # no words: a rejected pass says nothing
        if usable and pause_start <= transcribed[0] <= resumed - MIN_PAUSE_SAMPLES // 2:
            candidate = _Candidate(transcribed[0], transcribed[1].text.split())
        else:
            candidate = _Candidate(pause_start + min(silence // 2, HEAD_TRAILING_SAMPLES))
        if (candidate.end_sample - self.end_sample) / SAMPLE_RATE < MIN_HEAD_S:
            return
        if candidate.words is None and self._candidate is not None and self._candidate.words is not None:
            return  # the older pause costs no pass to settle
        self._candidate = candidate

    def untranscribed_pause(self) -> int | None:
        """The end sample of a pause whose words a partial pass should transcribe next, if any:
        from `end_sample` to it."""
        if self._candidate is not None and self._candidate.words is None:
            return self._candidate.end_sample
        return None

    def transcribed_pause(self, end_sample: int, transcript: Transcript) -> None:
        """A partial pass transcribed the audio from the settled start to the pause that ends at `end_sample`."""
        if self._candidate is None or self._candidate.end_sample != end_sample:
            return
        if not transcript.text:
            self._candidate = None
        else:
            self._candidate.words = self.words + transcript.text.split()

    def agree(self, words: list[str]) -> None:
        """`words`, a partial transcript of the whole turn so far, settles the pending pause if it agrees
        with all of that pause's words and goes on past them. Until one does (tiny Whisper wavers:
        "ten days" in one pass, "10 days" in the next), the pause waits, or a later one replaces it."""
        self.heard = list(words)
        candidate = self._candidate
        if candidate is None or candidate.words is None:
            return
        count = len(candidate.words)
        if len(words) > count and agreed_prefix(candidate.words, words) == count:
            self._candidate = None
            self.end_sample, self.words = candidate.end_sample, words[:count]

    def snapshot(self) -> tuple[int, list[str]]:
        """Where a pass over the turn starts now, and the words it goes after."""
        return self.end_sample, list(self.words)


def after_settled(settled_words: list[str], settled_samples: int, transcript: Transcript,
                  heard: list[str] = ()) -> Transcript:
    """`transcript`, of the audio after the settled start, as a transcript of the whole turn.

    `heard`: the latest partial transcript of the whole turn. Its first words after the settled
    ones were heard with the sentence they continue, which `transcript` was not, so they replace
    its own (see `with_context`)."""
    if not settled_words:
        return transcript
    words = settled_words + with_context(settled_words, heard, transcript.text.split())
    return replace(transcript, text=" ".join(words), rejected=None,
                   audio_seconds=transcript.audio_seconds + settled_samples / SAMPLE_RATE)


def with_context(settled_words: list[str], heard: list[str], rest: list[str]) -> list[str]:
    """The words after the settled start: `heard`'s as far as it goes, then `rest`'s.

    Cut off from its sentence, a pass on the rest of a turn guesses its first words from less
    context ("beat self-dick" for "beat Celtic" after "football"), while the partial pass, on the
    whole turn, stopped short of its end. The two are joined at a word they share. The partial's
    last word may have been cut off mid-word, so it joins where it begins a word of `rest`
    ("ag" in "again"), if the words between match in number, give or take one; otherwise the
    join is at the last whole word they share. Without one, or when `heard` does not start with
    the settled words, `rest` stands alone."""
    if agreed_prefix(settled_words, heard) < len(settled_words) or len(heard) == len(settled_words):
        return rest
    heard_after = heard[len(settled_words):]
    ours, theirs = normalized(heard_after), normalized(rest)
    shared = [block for block in SequenceMatcher(None, ours[:-1], theirs, autojunk=False).get_matching_blocks() if block.size]
    heard_end, rest_end = (shared[-1].a + shared[-1].size, shared[-1].b + shared[-1].size) if shared else (0, 0)
    between = len(ours) - 1 - heard_end  # heard's words after the last shared one, before its last
    last = ours[-1]
    # The word the last one begins lies as many words after the join in `rest`, give or take one.
    for completed in range(rest_end + max(0, between - 1), min(len(theirs), rest_end + between + 2)):
        if last and theirs[completed].startswith(last):
            return heard_after[:-1] + rest[completed:]
    return heard_after[:heard_end] + rest[rest_end:] if shared else rest
