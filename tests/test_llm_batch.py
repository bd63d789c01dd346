"""The batched embedded LLM (voice/llm_batch.py) on the real SmolLM2: every session's request
decoded together, each conversation in a KV cache of its own."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import aclosing

import pytest
from llm_conversations import SYSTEM, conversation_after, first_token_stats, next_turn

from voxloop.voice.llm import GenerationSettings, WordsJudgment
from voxloop.voice.llm_batch import BatchedLlamaLLM

GREEDY = GenerationSettings(max_tokens=24, temperature=0.0, max_sentences=None)

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def llm():
    model = BatchedLlamaLLM(slots=2, slot_ctx=1024)
    yield model
    model.close()


async def reply(llm: BatchedLlamaLLM, messages, settings=GREEDY, stats: dict | None = None) -> str:
    async with aclosing(llm.stream(messages, settings, stats=stats)) as pieces:
        return "".join([piece async for piece in pieces])


def test_replies_decoded_together_are_the_replies_each_gets_alone(llm):
    questions = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
                 for text in ("What colour is the sky?", "Name a fruit that is yellow.")]

    async def run():
        alone = [await reply(llm, messages) for messages in questions]
        together = await asyncio.gather(*(reply(llm, messages) for messages in questions))
        return alone, together

    alone, together = asyncio.run(run())
    assert all(len(text.split()) >= 3 for text in alone), alone
    assert alone[0] != alone[1]
    # Greedy decoding: the same words, so neither conversation saw the other's tokens.
    assert together == alone


def test_each_conversation_keeps_its_own_cache_while_another_uses_the_model(llm):
    mine = conversation_after(4)
    theirs_messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is your favourite colour?"}]

    async def run():
        await first_token_stats(llm, next_turn(mine, "And what about nine?"))
        await reply(llm, theirs_messages)  # the other session's turn, in between
        return await first_token_stats(llm, next_turn(mine, "And what about ten?"))

    stats = asyncio.run(run())
    history_tokens = len(llm.prompt_prefix_tokens(mine.next_prompt_prefix(SYSTEM)))
    assert history_tokens > 100
    assert stats["llm_cached_tokens"] >= history_tokens  # only the new words were evaluated


def test_a_reply_held_by_its_gate_does_not_hold_up_another_conversations_judgment(llm):
    gate = threading.Event()  # never opened: the reply waits for its first audio
    words = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "I would like to book a table for two"}]

    async def run():
        held = llm.stream([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tell me a story."}],
                          GenerationSettings(max_tokens=40), gate=gate)
        first = await held.__anext__()
        gate.clear()
        start = time.monotonic()
        probability = await llm.sentence_end_probability(words, start_within_s=0.5)
        judged_after = time.monotonic() - start
        await held.aclose()
        return first, probability, judged_after

    first, probability, judged_after = asyncio.run(run())
    assert first
    assert probability is not None and 0.0 <= probability <= 1.0
    assert judged_after < 1.5  # the gate's safety net is 2 s: the judgment did not wait for it


def test_a_closed_stream_frees_its_slot_and_one_slot_serves_requests_in_turn():
    async def run():
        llm = BatchedLlamaLLM(slots=1, slot_ctx=512)
        try:
            messages = [{"role": "user", "content": "Count from one to twenty."}]
            async with aclosing(llm.stream(messages, GenerationSettings(max_tokens=80))) as pieces:
                async for _ in pieces:
                    break  # barge-in: the reply is dropped after its first piece
            both = await asyncio.wait_for(asyncio.gather(reply(llm, messages), reply(llm, messages)), timeout=60)
            return both, llm._slots[0].owner
        finally:
            llm.close()

    both, owner = asyncio.run(run())
    assert all(both) and both[0] == both[1]
    assert owner is None


def test_judging_the_words_leaves_them_in_the_conversations_cache_for_its_reply(llm):
    conversation = conversation_after(3)
    whole = next_turn(conversation, "Tell me about the number eight")
    half = next_turn(conversation, "Tell me about the")

    async def run():
        whole_p = await llm.sentence_end_probability(whole)
        half_p = await llm.sentence_end_probability(half)
        await llm.sentence_end_probability(whole)
        stats: dict = {}
        await reply(llm, next_turn(conversation, "Tell me about the number eight."), stats=stats)
        return whole_p, half_p, stats

    whole_p, half_p, stats = asyncio.run(run())
    assert whole_p > 10 * half_p
    words_tokens = len(llm.chat.words_tokens(whole))
    assert stats["llm_cached_tokens"] >= words_tokens - 1  # at most the last word's token again, with its full stop
    assert stats["llm_finish_reason"] in ("stop", "length")


def test_a_prewarm_gives_way_to_a_real_request_and_a_capped_one_leaves_a_long_prompt_alone(llm):
    conversation = conversation_after(6)
    prefix = conversation.next_prompt_prefix(SYSTEM)

    async def run():
        stranger = [{"role": "system", "content": "You speak only of the weather."}] + prefix[1:]
        capped = await llm.prewarm(stranger, max_new_tokens=8)
        warming = asyncio.ensure_future(llm.prewarm(prefix))
        await asyncio.sleep(0.02)
        stats: dict = {}
        text = await reply(llm, next_turn(conversation, "And what about seven?"), stats=stats)
        held = await warming
        return capped, held, text, stats

    capped, held, text, stats = asyncio.run(run())
    prefix_tokens = len(llm.prompt_prefix_tokens(prefix))
    assert capped < 10  # it shares only the chat template's first tokens with any cache, and is not evaluated
    assert 0 < held <= prefix_tokens
    assert text
    assert stats["llm_cached_tokens"] >= held - 1  # the reply started from what the pre-warm had done


def test_a_new_sessions_words_are_prewarmed_onto_its_system_prompt(llm):
    system = [{"role": "system", "content": "You are a patient voice assistant who loves the sea."}]
    words = system + [{"role": "user", "content": "Tell me how the tides"}]

    async def run():
        held_system = await llm.prewarm(system)
        held_words = await llm.prewarm(words, max_new_tokens=24)
        return held_system, held_words

    held_system, held_words = asyncio.run(run())
    assert held_system == len(llm.prompt_prefix_tokens(system))
    assert held_words == len(llm.prompt_prefix_tokens(words)) > held_system


def test_a_reply_ends_at_a_control_token_as_at_the_end_of_its_message(llm):
    tokenize = llm.llama.tokenize
    opens_message = tokenize(b"<|im_start|>", add_bos=False, special=True)
    assert len(opens_message) == 1
    assert llm.ends_reply(llm.chat.message_end_token())
    assert llm.ends_reply(opens_message[0])  # the model opening the next message has finished its own
    assert not any(llm.ends_reply(token) for token in tokenize(b" assistant. Hello", add_bos=False, special=False))


def test_a_gguf_without_its_own_chat_template_is_served_one_request_at_a_time(monkeypatch):
    from voxloop.voice.chat_prompt import ChatPrompt
    from voxloop.voice.llm import LlamaCppLLM
    from voxloop.voice.models import ModelOptions, build_llm

    assert isinstance(batched := build_llm(ModelOptions()), BatchedLlamaLLM)
    batched.close()
    monkeypatch.setattr(ChatPrompt, "available", property(lambda self: False))
    llm = build_llm(ModelOptions())
    assert isinstance(llm, LlamaCppLLM)
    llm.close()


def test_a_reply_judges_its_words_in_the_decode_that_gives_its_first_token(llm):
    conversation = conversation_after(2)
    cases = {"Tell me about the number eight": "Tell me about the number eight.",  # a whole sentence
             "Tell me about the": "Tell me about the."}  # half of one, as Whisper may punctuate it

    async def run():
        results = {}
        for words, transcript in cases.items():
            alone = await llm.sentence_end_probability(next_turn(conversation, words))
            llm._ctx.kv_cache_seq_rm(-1, 0, -1)  # nothing cached: the reply evaluates its whole prompt
            for slot in llm._slots:
                slot.tokens.clear()
            judgment = WordsJudgment(next_turn(conversation, words))
            stats: dict = {}
            first_piece_at = None
            async with aclosing(llm.stream(next_turn(conversation, transcript), GREEDY, stats=stats,
                                           judgment=judgment)) as pieces:
                async for _ in pieces:
                    first_piece_at = first_piece_at or time.monotonic()
            in_reply = await judgment.probability()
            results[words] = (alone, in_reply, stats, first_piece_at)
        return results

    results = asyncio.run(run())
    (whole_alone, whole_in_reply, stats, _), (half_alone, half_in_reply, _, _) = results.values()
    # The same logits, from a decode of the whole prompt instead of one that ends at the words.
    assert whole_in_reply == pytest.approx(whole_alone, rel=0.05)
    assert half_in_reply == pytest.approx(half_alone, rel=0.05, abs=1e-4)
    assert whole_in_reply > 10 * half_in_reply
    assert stats["llm_cached_tokens"] == 0


def test_a_reply_dropped_before_its_first_decode_answers_its_judgment_with_none():
    async def run():
        llm = BatchedLlamaLLM(slots=1, slot_ctx=512)
        try:
            busy_gate = threading.Event()  # held: the only slot stays taken
            busy = llm.stream([{"role": "user", "content": "Count from one to twenty."}], GenerationSettings(max_tokens=40),
                              gate=busy_gate)
            await busy.__anext__()
            judgment = WordsJudgment([{"role": "user", "content": "Tell me a story"}])
            waiting = llm.stream([{"role": "user", "content": "Tell me a story."}], GREEDY, judgment=judgment)
            pending = asyncio.ensure_future(waiting.__anext__())
            not_started = await judgment.probability(start_within_s=0.2)  # the slot is taken: no verdict in time
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
            await waiting.aclose()  # the request is dropped without ever being decoded
            answered = await asyncio.wait_for(judgment.probability(), timeout=5)
            await busy.aclose()
            return not_started, answered
        finally:
            llm.close()

    assert asyncio.run(run()) == (None, None)
