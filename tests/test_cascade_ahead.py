"""The cascade's reply stage making the next clause's audio while its reader still sends the
last one, and timing each clause, so a reply that runs dry can be traced to the LLM or TTS."""

import asyncio
import time
from contextlib import aclosing
from dataclasses import replace

import numpy as np

from voxloop.voice.cascade import CascadeResponder, ClauseTiming
from voxloop.voice.llm import GenerationSettings
from voxloop.voice.tts import OUTPUT_RATE

CLAUSES = ["The first sentence is here.", "A second one follows it.", "And then a third."]


class InstantLLM:
    name = "instant"

    async def stream(self, messages, settings, stats=None, gate=None):
        for clause in CLAUSES:
            yield clause + " "


class RecordingTTS:
    """Two 0.25 s chunks per clause, each taking 10 ms to make; records what it started and whether
    every synthesis it started was closed."""

    default_voice = "test"

    def __init__(self):
        self.started: list[str] = []
        self.needed_by: list[float] = []
        self.open = 0

    async def synthesize(self, text, voice=None, needed_by=None):
        self.started.append(text)
        self.needed_by.append(needed_by())
        self.open += 1
        try:
            for _ in range(2):
                await asyncio.sleep(0.01)
                yield np.full(OUTPUT_RATE // 4, 0.3, np.float32)
        finally:
            self.open -= 1


def settings(ahead: bool) -> GenerationSettings:
    return GenerationSettings(max_sentences=None, first_clause_max_chars=None, first_clause_phrases=False,
                              first_audio_first=False, synthesize_ahead=ahead)


async def read_paced(pieces, taken: list[float], stop_after: int | None = None) -> None:
    """Take each piece, then spend 50 ms sending it, as a session pacing its audio does."""
    async with aclosing(pieces) as stream:
        async for _ in stream:
            taken.append(time.monotonic())
            if stop_after is not None and len(taken) == stop_after:
                return
            await asyncio.sleep(0.05)


def reply(ahead: bool, tts: RecordingTTS | None = None, marks: dict | None = None) -> tuple[dict, list[float]]:
    marks = {} if marks is None else marks

    async def run():
        taken: list[float] = []
        await read_paced(CascadeResponder(InstantLLM(), tts or RecordingTTS()).respond([], settings(ahead), None, marks), taken)
        return marks, taken

    return asyncio.run(run())


def test_ahead_the_next_clause_is_synthesized_before_the_reader_has_taken_the_last():
    marks, taken = reply(ahead=True)
    first, second, third = marks["clauses"]
    assert second.synth_start < taken[1]  # the first clause's second chunk was still waiting to be taken
    assert third.synth_start < taken[3]


def test_in_lockstep_the_next_clause_waits_for_the_reader():
    marks, taken = reply(ahead=False)
    first, second, _ = marks["clauses"]
    assert second.synth_start >= taken[1]


def test_each_clause_is_timed_from_its_text_to_its_last_audio():
    marks, taken = reply(ahead=True)
    assert len(marks["clauses"]) == 3 and len(taken) == 6
    for clause in marks["clauses"]:
        assert clause.ready <= clause.synth_start <= clause.first_audio <= clause.synth_done
        assert np.isclose(clause.audio_s, 0.5)
    relative = marks["clauses"][1].relative_ms(marks["clauses"][0].ready)
    assert relative["audio_ms"] == 500.0 and relative["ready_ms"] >= 0


def test_closing_a_reply_that_runs_ahead_stops_its_synthesis():
    async def run():
        tts = RecordingTTS()
        taken: list[float] = []
        await read_paced(CascadeResponder(InstantLLM(), tts).respond([], settings(True), None, {}), taken, stop_after=1)
        await asyncio.sleep(0.1)  # long enough for the rest of the reply, had it gone on
        return tts

    tts = asyncio.run(run())
    assert tts.open == 0 and len(tts.started) < len(CLAUSES)


def test_tts_is_told_when_each_clause_is_needed():
    """The first clause when the listener began to wait (here, the text's arrival: no end of
    speech is marked); a later one when the audio before it has played, counted from the first audio."""
    tts = RecordingTTS()
    marks, _ = reply(ahead=True, tts=tts)
    first, second, third = marks["clauses"]
    assert tts.needed_by[0] == first.ready
    assert np.isclose(tts.needed_by[1], marks["tts_first_audio"] + 0.5)
    assert np.isclose(tts.needed_by[2], marks["tts_first_audio"] + 1.0)


def test_a_first_clause_is_needed_since_the_user_stopped_speaking():
    tts = RecordingTTS()
    stopped = time.monotonic() - 0.4
    reply(ahead=True, tts=tts, marks={"speech_paused": stopped, "speech_stopped": stopped + 0.2})
    assert tts.needed_by[0] == stopped  # the earliest: a reply started at the pause that ended the turn


class SlowSecondSentenceLLM:
    """A short first sentence at once, then a long one a word at a time."""

    name = "slow"
    SECOND = "The capital of France is Paris and it is lovely in the spring."

    async def stream(self, messages, settings, stats=None, gate=None):
        yield "Sure thing. "
        for word in self.SECOND.split():
            await asyncio.sleep(0.03)
            yield word + " "


def spoken_clauses(cut_early_below_s: float) -> tuple[list[str], list[ClauseTiming]]:
    async def run():
        marks: dict = {}
        replying = CascadeResponder(SlowSecondSentenceLLM(), RecordingTTS()).respond(
            [], replace(settings(True), first_clause_max_chars=24, first_clause_phrases=True, cut_early_below_s=cut_early_below_s),
            None, marks)
        texts = [piece.clause async for piece in replying if piece.clause]
        return texts, marks["clauses"]

    return asyncio.run(run())


def test_the_next_clause_is_cut_early_when_the_listener_is_about_to_wait_for_it():
    texts, clauses = spoken_clauses(cut_early_below_s=10.0)  # always about to wait, once TTS is idle
    assert texts[:2] == ["Sure thing.", "The capital of France"]  # a phrase, not the sentence
    assert " ".join(texts) == "Sure thing. " + SlowSecondSentenceLLM.SECOND
    assert not clauses[0].cut_early and clauses[1].cut_early
    assert all(len(text) <= 24 for text, clause in zip(texts, clauses) if clause.cut_early)

    texts, clauses = spoken_clauses(cut_early_below_s=0)
    assert texts == ["Sure thing.", SlowSecondSentenceLLM.SECOND]
    assert not any(clause.cut_early for clause in clauses)


def test_the_listener_is_about_to_wait_only_once_tts_has_spoken_every_clause_and_little_audio_is_left():
    now = time.monotonic()
    spoken = ClauseTiming(ready=now - 0.3, synth_done=now - 0.1, audio_s=0.6)
    marks = {"tts_first_audio": now - 0.2, "clauses": [spoken]}  # 0.4 s of audio left to play
    assert CascadeResponder._waiting_for_text(marks, within_s=0.5)
    assert not CascadeResponder._waiting_for_text(marks, within_s=0.3)
    assert not CascadeResponder._waiting_for_text(marks, within_s=0)
    speaking = {**marks, "clauses": [spoken, ClauseTiming(ready=now)]}  # TTS is still on the next clause
    assert not CascadeResponder._waiting_for_text(speaking, within_s=0.5)
    assert not CascadeResponder._waiting_for_text({}, within_s=0.5)  # nothing has played yet
