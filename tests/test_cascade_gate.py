"""The cascade's reply stage holding the LLM from its first clause until the first audio."""

import asyncio
import threading
from contextlib import aclosing

import numpy as np

from voxloop.voice.cascade import CascadeResponder
from voxloop.voice.llm import GenerationSettings


class RecordingLLM:
    """Streams fixed pieces and records, before each piece after the first, whether the gate
    let it run, the way the embedded LLM waits between tokens."""

    name = "recording"

    def __init__(self, pieces: list[str]):
        self.pieces = pieces
        self.gate_open_before: list[bool] = []

    async def stream(self, messages, settings, stats=None, gate: threading.Event | None = None):
        for index, piece in enumerate(self.pieces):
            if index and gate is not None:
                self.gate_open_before.append(gate.is_set())
                await asyncio.to_thread(gate.wait, 2.0)
            yield piece


class SlowTTS:
    default_voice = "test"

    def __init__(self, audible: bool = True):
        self.audible = audible
        self.spoken: list[str] = []

    async def synthesize(self, text: str, voice=None, needed_by=None):
        self.spoken.append(text)
        await asyncio.sleep(0.05)  # the first audio takes a while
        yield np.full(2400, 0.3 if self.audible else 0.0, np.float32)


PIECES = ["Sure, ", "that is ", "fine. ", "And ", "more ", "words ", "follow."]


def reply(llm, tts, first_audio_first: bool) -> tuple[list, dict]:
    async def run():
        marks: dict = {}
        settings = GenerationSettings(first_audio_first=first_audio_first, first_clause_max_chars=None)
        async with aclosing(CascadeResponder(llm, tts).respond([], settings, None, marks)) as pieces:
            return [p async for p in pieces], marks

    return asyncio.run(run())


def test_the_llm_waits_from_its_first_clause_until_the_first_audio():
    llm, tts = RecordingLLM(PIECES), SlowTTS()
    pieces, marks = reply(llm, tts, first_audio_first=True)
    assert "tts_first_audio" in marks and tts.spoken[0] == "Sure, that is fine."
    # The gate closed once the first clause was out, and the whole reply was still spoken.
    assert False in llm.gate_open_before
    assert " ".join(tts.spoken).replace("  ", " ") == "Sure, that is fine. And more words follow."


def test_without_the_option_the_llm_never_waits():
    llm, tts = RecordingLLM(PIECES), SlowTTS()
    reply(llm, tts, first_audio_first=False)
    assert llm.gate_open_before == []


def test_a_silent_first_clause_reopens_the_gate_so_the_reply_goes_on():
    llm, tts = RecordingLLM(PIECES), SlowTTS(audible=False)
    pieces, marks = reply(llm, tts, first_audio_first=True)
    assert "tts_first_audio" not in marks and len(tts.spoken) == 2
    # Closed only until the silent clause was synthesized; left closed, every later piece would find it so (4).
    assert llm.gate_open_before.count(False) <= 2 and llm.gate_open_before[-1]
