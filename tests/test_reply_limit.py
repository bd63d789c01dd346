"""Where a spoken reply ends: its sentence budget, a repeated clause, the token cap's tail."""

import asyncio
from contextlib import aclosing

import numpy as np
import pytest

from voxloop.voice.cascade import CascadeResponder
from voxloop.voice.llm import GenerationSettings, LlamaCppLLM
from voxloop.voice.reply_limit import SpokenReplyLimit


def admitted(limit: SpokenReplyLimit, clauses: list[str]) -> list[str]:
    return [clause for clause in clauses if limit.admit(clause)]


def test_a_reply_ends_after_its_sentences():
    limit = SpokenReplyLimit(max_sentences=2)
    assert admitted(limit, ["Sure,", "that is fine.", "It costs less!", "And more."]) == ["Sure,", "that is fine.",
                                                                                          "It costs less!"]
    assert limit.ended and limit.end_reason == "sentences"


def test_a_sentence_in_quotes_or_brackets_counts_as_ended():
    limit = SpokenReplyLimit(max_sentences=2)
    assert admitted(limit, ['She said "go."', "(I went.)", "Then more."]) == ['She said "go."', "(I went.)"]


def test_without_a_sentence_limit_the_whole_reply_is_spoken():
    clauses = ["One.", "Two.", "Three.", "Four."]
    assert admitted(SpokenReplyLimit(None), clauses) == clauses
    assert admitted(SpokenReplyLimit(0), clauses) == clauses


def test_a_reply_ends_before_a_clause_it_already_said():
    limit = SpokenReplyLimit(max_sentences=5)
    said = admitted(limit, ["You're very clever.", "You are very clever!", "you're very clever.", "Bye."])
    assert said == ["You're very clever.", "You are very clever!"]
    assert limit.end_reason == "repeat"


def test_a_phrase_may_recur_where_a_sentence_may_not():
    limit = SpokenReplyLimit(max_sentences=5)
    said = admitted(limit, ["I think", "it rains.", "I think", "it snows.", "I think", "it rains."])
    assert said == ["I think", "it rains.", "I think", "it snows.", "I think"]
    assert limit.end_reason == "repeat"


def test_the_token_caps_unfinished_tail_is_dropped_after_a_whole_sentence():
    limit = SpokenReplyLimit(max_sentences=3)
    assert limit.admit("That is a good point.")
    assert not limit.admit_tail("And I'm here", cut_by_token_cap=True)
    assert limit.ended and limit.end_reason == "token_cap"


def test_a_tail_is_kept_when_the_model_stopped_or_nothing_whole_was_said():
    assert SpokenReplyLimit(2).admit_tail("Sure thing", cut_by_token_cap=True)  # better than silence
    limit = SpokenReplyLimit(2)
    assert limit.admit("Hello there.") and limit.admit_tail("Sure thing", cut_by_token_cap=False)


class LoopingLLM:
    """Writes one sentence over and over, the way SmolLM2 loops, and counts what was read."""

    name = "looping"

    def __init__(self, finish_reason: str = "length"):
        self.pieces_read = 0
        self.closed = False
        self.finish_reason = finish_reason

    async def stream(self, messages, settings, stats=None, gate=None):
        try:
            for piece in ["That is ", "a fine idea. ", "I like ", "it a lot. "] + ["You're ", "clever. "] * 40:
                self.pieces_read += 1
                yield piece
            if stats is not None:
                stats["llm_finish_reason"] = self.finish_reason
        finally:
            self.closed = True


class RecordingTTS:
    default_voice = "test"

    def __init__(self):
        self.spoken: list[str] = []

    async def synthesize(self, text, voice=None, needed_by=None):
        self.spoken.append(text)
        yield np.full(240, 0.3, np.float32)


def respond(llm, settings: GenerationSettings) -> tuple[list[str], dict]:
    async def run():
        tts, marks = RecordingTTS(), {}
        async with aclosing(CascadeResponder(llm, tts).respond([], settings, None, marks)) as pieces:
            async for _ in pieces:
                await asyncio.sleep(0)
        return tts.spoken, marks

    return asyncio.run(run())


def test_the_cascade_speaks_two_sentences_and_stops_the_llm():
    llm = LoopingLLM()
    spoken, marks = respond(llm, GenerationSettings(first_clause_max_chars=None))
    assert " ".join(spoken) == "That is a fine idea. I like it a lot."
    assert marks["reply_end"] == "sentences"
    # The stream was closed long before the model's own end: the cores go back to the next turn.
    assert llm.closed and llm.pieces_read < 10


def test_the_cascade_stops_a_loop_when_sentences_are_unlimited():
    llm = LoopingLLM()
    spoken, marks = respond(llm, GenerationSettings(first_clause_max_chars=None, max_sentences=None))
    assert " ".join(spoken) == "That is a fine idea. I like it a lot. You're clever."
    assert marks["reply_end"] == "repeat" and llm.pieces_read < 12


@pytest.mark.models
def test_the_embedded_llm_reports_when_the_token_cap_cut_it():
    llm = LlamaCppLLM()
    try:
        async def finish_reason(max_tokens: int):
            stats: dict = {}
            messages = [{"role": "user", "content": "Tell me a long story about a dragon."}]
            async with aclosing(llm.stream(messages, GenerationSettings(max_tokens=max_tokens), stats=stats)) as pieces:
                async for _ in pieces:
                    pass
            return stats.get("llm_finish_reason")

        assert asyncio.run(finish_reason(3)) == "length"
    finally:
        llm.close()


def test_the_sentence_limit_holds_the_default_instructions_only():
    from voxloop.voice.config import SessionConfig

    assert SessionConfig().reply_settings().max_sentences == GenerationSettings().max_sentences == 2
    assert SessionConfig(instructions="Tell long stories.").reply_settings().max_sentences is None
