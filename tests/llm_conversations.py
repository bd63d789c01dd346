"""Conversations and first-token measurements shared by the embedded LLM's cache tests."""

from __future__ import annotations

from contextlib import aclosing

from voxloop.voice.history import Conversation, ConversationItem
from voxloop.voice.llm import GenerationSettings, LlamaCppLLM

SYSTEM = "You are a friendly voice assistant. Answer in one short sentence."


def conversation_after(turns: int) -> Conversation:
    conversation = Conversation()
    for turn in range(turns):
        conversation.add(ConversationItem(f"u{turn}", "user", f"Tell me something nice about the number {turn}, please."))
        conversation.add(ConversationItem(f"a{turn}", "assistant", f"The number {turn} is a fine number, friendly and round."))
    return conversation


async def first_token_stats(llm: LlamaCppLLM, messages: list[dict[str, str]]) -> dict:
    stats: dict = {}
    async with aclosing(llm.stream(messages, GenerationSettings(max_tokens=2), stats=stats)) as pieces:
        async for _ in pieces:
            break
    return stats


def next_turn(conversation: Conversation, text: str) -> list[dict[str, str]]:
    return conversation.chat_messages(SYSTEM, pending_user_text=text)
