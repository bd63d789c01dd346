"""The one-request embedded LLM (voice/llm.py) on the real model: pre-evaluating the next prompt's
start, the prompt accounting that shows it (how many prompt tokens a request found in the KV
cache), and the tokens a reply may not sample."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from llm_conversations import SYSTEM, conversation_after, first_token_stats, next_turn

from voxloop.voice.history import Conversation, ConversationItem
from voxloop.voice.llm import LlamaCppLLM, cached_prefix_tokens, common_prefix_length



def test_cached_prefix_counts_the_common_start_and_replays_the_last_token_of_a_fully_cached_prompt():
    assert cached_prefix_tokens([], [1, 2, 3]) == 0
    assert cached_prefix_tokens([1, 2, 9, 9], [1, 2, 3]) == 2
    assert cached_prefix_tokens([1, 2, 3, 4], [1, 2, 3]) == 2
    assert cached_prefix_tokens([5], [1, 2]) == 0


@pytest.fixture(scope="module")
def llm():
    # Without copies of displaced caches (tests/test_kv_snapshots.py; off by default too): these
    # tests displace the cache on purpose, to see what the pre-warm alone evaluates.
    model = LlamaCppLLM(cache_copies_mib=0)
    yield model
    model.close()


@pytest.mark.models
def test_a_prewarmed_prefix_is_served_from_the_cache_on_the_next_turn(llm):
    async def run():
        # Something unrelated in the cache first: the next prompt shares none of it.
        await first_token_stats(llm, [{"role": "user", "content": "Say a word about the sea."}])
        conversation = conversation_after(5)
        cold = await first_token_stats(llm, next_turn(conversation, "And what about seven?"))

        await first_token_stats(llm, [{"role": "user", "content": "Say a word about the sea."}])
        prefix = conversation.next_prompt_prefix(SYSTEM)
        held = await llm.prewarm(prefix)
        warm = await first_token_stats(llm, next_turn(conversation, "And what about seven?"))
        return cold, held, warm, len(llm.prompt_prefix_tokens(prefix))

    cold, held, warm, prefix_tokens = asyncio.run(run())
    assert cold["llm_cached_tokens"] < 10  # only the chat template's first tokens, at most
    assert held == prefix_tokens > 100
    assert warm["llm_prompt_tokens"] == cold["llm_prompt_tokens"]
    # The whole pre-evaluated prefix was matched: only the new user words were evaluated.
    assert warm["llm_cached_tokens"] >= prefix_tokens
    assert warm["llm_prompt_tokens"] - warm["llm_cached_tokens"] < 30


@pytest.mark.models
def test_prewarm_resumes_from_what_the_cache_already_holds(llm):
    async def run():
        conversation = conversation_after(3)
        await llm.prewarm(conversation.next_prompt_prefix(SYSTEM))
        conversation.add(ConversationItem("u9", "user", "One more question."))
        conversation.add(ConversationItem("a9", "assistant", "Happy to help."))
        prefix = conversation.next_prompt_prefix(SYSTEM)
        held = await llm.prewarm(prefix)
        warm = await first_token_stats(llm, next_turn(conversation, "Thanks!"))
        return held, warm, len(llm.prompt_prefix_tokens(prefix))

    held, warm, prefix_tokens = asyncio.run(run())
    assert held == prefix_tokens
    assert warm["llm_cached_tokens"] >= prefix_tokens


@pytest.mark.models
def test_prewarm_stops_as_soon_as_a_real_request_is_waiting(llm):
    """The pre-warm is queued behind a generation; a real request queued after it must not
    wait for it: the pre-warm finds the request waiting and gives up the worker unevaluated."""
    release = threading.Event()

    async def run():
        await first_token_stats(llm, [{"role": "user", "content": "Say a word about the sky."}])
        held_before = llm.llama.n_tokens
        blocker = asyncio.get_running_loop().run_in_executor(llm._executor, release.wait)
        prewarm = asyncio.create_task(llm.prewarm(conversation_after(8).next_prompt_prefix(SYSTEM)))
        request = asyncio.create_task(first_token_stats(llm, [{"role": "user", "content": "Say a word about the sky."}]))
        await asyncio.sleep(0.2)  # both are queued behind the blocker now
        release.set()
        await blocker
        held = await prewarm
        stats = await request
        return held_before, held, stats

    held_before, held, stats = asyncio.run(run())
    assert held <= held_before  # nothing of the long prefix was evaluated
    assert stats["llm_cached_tokens"] > 0  # and the request found its own earlier prompt still cached


@pytest.mark.models
def test_a_cancelled_prewarm_leaves_the_worker_free(llm):
    async def run():
        prewarm = asyncio.create_task(llm.prewarm(conversation_after(20).next_prompt_prefix(SYSTEM)))
        await asyncio.sleep(0.05)
        prewarm.cancel()
        await asyncio.gather(prewarm, return_exceptions=True)
        return await first_token_stats(llm, [{"role": "user", "content": "Hello!"}])

    stats = asyncio.run(run())
    assert stats["llm_prompt_tokens"] > 0


@pytest.mark.models
def test_the_llm_finds_a_sentence_end_likelier_after_a_whole_sentence_than_after_half_of_one(llm):
    """The turn-completion signal on the embedded model, on words as Whisper heard them in the
    shared clips (final punctuation removed, as the session does)."""
    finished = ["And so my fellow Americans ask not what your country can do for you ask what you can do for your country",
                "Hopefully we can learn from our mistakes", "It was a combination of Canadian capital quickly organized "
                "and petitioned for the same privileges"]
    halves = ["And so my fellow Americans ask not what", "It is of the first importance that the",
              "It was my reports from the north with"]

    async def run():
        return [await llm.sentence_end_probability(next_turn(Conversation(), text)) for text in finished + halves]

    scores = asyncio.run(run())
    assert all(0.0 <= p <= 1.0 for p in scores)
    assert min(scores[:3]) > 0.05 > 0.005 > max(scores[3:])


@pytest.mark.models
def test_judging_the_words_leaves_them_in_the_cache_for_the_reply(llm):
    async def run():
        conversation = conversation_after(2)
        await llm.sentence_end_probability(next_turn(conversation, "And what about seven"))
        return await first_token_stats(llm, next_turn(conversation, "And what about seven?"))

    stats = asyncio.run(run())
    # Only the final "?" and the template's closing tokens were left to evaluate.
    assert stats["llm_prompt_tokens"] - stats["llm_cached_tokens"] <= 8


@pytest.mark.models
def test_a_capped_prewarm_only_evaluates_a_few_new_tokens_and_leaves_another_prompt_alone(llm):
    conversation = conversation_after(3)

    async def run():
        await llm.prewarm(conversation.next_prompt_prefix(SYSTEM))
        history_tokens = llm.llama.n_tokens
        words = next_turn(conversation, "And what about the number seven")
        held_words = await llm.prewarm(words, max_new_tokens=16)  # a few words past the cached history
        await first_token_stats(llm, [{"role": "user", "content": "Say a word about the sea."}])  # another session
        held_other = await llm.prewarm(words, max_new_tokens=16)  # the whole prompt would be new: skipped
        still_cached = common_prefix_length(llm.llama._input_ids, llm.prompt_prefix_tokens(words))
        return history_tokens, held_words, len(llm.prompt_prefix_tokens(words)), held_other, still_cached

    history_tokens, held_words, words_tokens, held_other, still_cached = asyncio.run(run())
    assert held_words == words_tokens > history_tokens
    assert held_other == still_cached < 10  # nothing of the words' prompt was evaluated


@pytest.mark.models
def test_a_judgment_the_busy_worker_cannot_start_in_time_gives_none_and_leaves_the_model_working(llm):
    messages = next_turn(Conversation(), "I would like to go home")

    async def run():
        idle = await llm.sentence_end_probability(messages, start_within_s=0.05)
        busy = llm._executor.submit(threading.Event().wait, 0.5)  # another session's request
        late = await llm.sentence_end_probability(messages, start_within_s=0.05)
        busy.result()
        after = await llm.sentence_end_probability(messages)
        return idle, late, after

    idle, late, after = asyncio.run(run())
    assert late is None
    assert idle is not None and after is not None and abs(after - idle) < 1e-3


def test_a_reply_never_opens_the_next_chat_message(llm):
    """SmolLM2 sometimes samples `<|im_start|>` instead of closing its message: that token is never sampled,
    the one that closes the message still is."""
    opening = llm.llama.tokenize(b"<|im_start|>", add_bos=False, special=True)
    closing = llm.chat.message_end_token()
    assert len(opening) == 1 and closing is not None
    scores = llm._without_control_tokens(None, np.zeros(llm.llama.n_vocab(), np.float32))
    assert np.isneginf(scores[opening[0]]) and scores[closing] == 0
    assert np.isfinite(scores).sum() > llm.llama.n_vocab() - 64  # only the few control tokens
