"""Copies of the embedded LLM's KV cache, for conversations another session's request displaced."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from llm_conversations import conversation_after, first_token_stats, next_turn

from voxloop.voice.kv_snapshots import common_prefix_length
from voxloop.voice.llm import LlamaCppLLM


def test_common_prefix_length_of_token_arrays_and_lists():
    assert common_prefix_length(np.array([1, 2, 3]), np.array([1, 2, 4, 5])) == 2
    assert common_prefix_length(np.array([1, 2]), np.array([1, 2, 3])) == 2
    assert common_prefix_length(np.array([], dtype=np.intc), np.array([1])) == 0
    assert common_prefix_length(np.array([7, 8, 9], dtype=np.intc), [7, 8, 0]) == 2
    assert common_prefix_length([], []) == 0


def another_session(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are a terse pirate."}, {"role": "user", "content": text * 6}]


@pytest.mark.models
def test_a_conversation_displaced_by_another_session_comes_back_from_its_copy():
    with_copies, without = LlamaCppLLM(cache_copies_mib=64), LlamaCppLLM(cache_copies_mib=0)
    conversation = conversation_after(6)
    question = next_turn(conversation, "And what about seven?")

    async def next_turn_after_another_session(llm: LlamaCppLLM) -> dict:
        await first_token_stats(llm, question)
        await first_token_stats(llm, another_session("Where is the treasure buried? "))
        return await first_token_stats(llm, question)

    try:
        restored = asyncio.run(next_turn_after_another_session(with_copies))
        evaluated = asyncio.run(next_turn_after_another_session(without))
        copies = with_copies.llama.snapshots
        assert copies.saved >= 1 and copies.loaded == 1
        assert restored["llm_prompt_tokens"] > 150
        assert restored["llm_prompt_tokens"] - restored["llm_cached_tokens"] <= 1  # all of it came back
        assert evaluated["llm_cached_tokens"] < 10  # without the copy, all of it was evaluated again

        # The loaded state is the one the prompt would have produced: the same next-token view.
        words = next_turn(conversation, "And what about seven")
        async def judged(llm: LlamaCppLLM) -> float:
            await llm.sentence_end_probability(words)
            await first_token_stats(llm, another_session("Hoist the sails! "))
            return await llm.sentence_end_probability(words)
        from_copy, from_scratch = asyncio.run(judged(with_copies)), asyncio.run(judged(without))
        assert copies.loaded == 2
        assert from_copy == pytest.approx(from_scratch, abs=2e-3)
    finally:
        with_copies.close()
        without.close()


@pytest.mark.models
def test_copies_are_kept_within_their_memory_budget():
    llm = LlamaCppLLM(cache_copies_mib=64)
    copies = llm.llama.snapshots

    async def displace(turns: int, text: str) -> None:
        await first_token_stats(llm, next_turn(conversation_after(turns), text))
        await first_token_stats(llm, another_session(text))

    try:
        asyncio.run(displace(6, "Seven? "))
        one_copy = copies.bytes_held
        assert one_copy > 0
        copies.budget_bytes = int(1.5 * one_copy)  # room for one conversation's copy, not two
        asyncio.run(displace(5, "Eight? "))
        asyncio.run(displace(4, "Nine? "))
        assert 0 < copies.bytes_held <= copies.budget_bytes
        assert copies.saved >= 3
    finally:
        llm.close()
