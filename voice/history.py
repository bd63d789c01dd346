"""The conversation as the user actually heard it.

An assistant item remembers which words were spoken over which stretch of its audio, so that
cutting it at a playback position (barge-in, or the client's `conversation.item.truncate`)
keeps exactly the words the user heard, and the LLM never believes it said the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A reply the user talked over within its first second was a false start (the turn had not
# really ended), not an answer they heard. The LLM does not see it: a one-word reply such as
# "The" in the history teaches a small model to answer in one word.
FALSE_START_MS = 1000


@dataclass
class SpokenSegment:
    text: str
    start_ms: float
    end_ms: float


@dataclass
class ConversationItem:
    id: str
    role: str  # "user", "assistant" or "system"
    text: str = ""
    status: str = "completed"
    from_audio: bool = False
    segments: list[SpokenSegment] = field(default_factory=list)
    truncated_at_ms: float | None = None

    @property
    def audio_ms(self) -> float:
        return self.segments[-1].end_ms if self.segments else 0.0

    def add_spoken(self, text: str, duration_ms: float) -> None:
        start = self.audio_ms
        self.segments.append(SpokenSegment(text, start, start + duration_ms))
        self.text = " ".join(s.text for s in self.segments)

    @property
    def false_start(self) -> bool:
        return self.role == "assistant" and self.truncated_at_ms is not None and self.truncated_at_ms < FALSE_START_MS

    def truncate(self, audio_end_ms: float) -> None:
        """Keep only the words spoken before `audio_end_ms` of this item's audio."""
        self.truncated_at_ms = audio_end_ms
        self.text = heard_text(self.segments, audio_end_ms)


def heard_text(segments: list[SpokenSegment], until_ms: float) -> str:
    words: list[str] = []
    for segment in segments:
        if segment.end_ms <= until_ms:
            words.extend(segment.text.split())
        elif segment.start_ms < until_ms:
            # Within a clause, assume words are spoken at an even rate of characters.
            fraction = (until_ms - segment.start_ms) / max(segment.end_ms - segment.start_ms, 1e-6)
            budget = fraction * len(segment.text)
            spoken = 0
            for word in segment.text.split():
                spoken += len(word) + 1
                if spoken > budget + 1:
                    break
                words.append(word)
    return " ".join(words)


class Conversation:
    def __init__(self, max_items: int = 24, window: str = "stable") -> None:
        """`max_items`: how much history the LLM sees. `window`: "stable" drops old items half a
        window at a time, so the prompt's beginning (and the LLM's cached KV state for it) stays
        the same for many turns; "sliding" drops one at a time, which changes the beginning, and
        so re-evaluates the whole prompt, on every turn once the history is full."""
        if window not in ("stable", "sliding"):
            raise ValueError(f"history window must be 'stable' or 'sliding', not {window!r}")
        self.items: list[ConversationItem] = []
        self.max_items = max_items
        self.window = window

    def _window_start(self, pending_items: int = 0) -> int:
        overflow = len(self.items) + pending_items - self.max_items
        if overflow <= 0:
            return 0
        if self.window == "sliding":
            return overflow
        step = max(1, self.max_items // 2)
        return (overflow + step - 1) // step * step

    def add(self, item: ConversationItem) -> str | None:
        """Append an item; return the id of the item before it (the protocol's previous_item_id)."""
        previous = self.items[-1].id if self.items else None
        self.items.append(item)
        return previous

    def get(self, item_id: str) -> ConversationItem | None:
        return next((item for item in self.items if item.id == item_id), None)

    def delete(self, item_id: str) -> bool:
        item = self.get(item_id)
        if item is not None:
            self.items.remove(item)
        return item is not None

    def chat_messages(self, instructions: str, pending_user_text: str | None = None) -> list[dict[str, str]]:
        """Chat-completion messages: system prompt, then recent turns, same-role turns merged,
        replies cut off as false starts left out (so the user's words around one join up).
        `pending_user_text` is a user turn not yet in the history (a speculative one); it counts
        towards the window as the item it will become, so the speculative prompt and the one
        made after the commit start alike."""
        return self._messages(instructions, pending_user_text, pending_items=1 if pending_user_text else 0)

    def next_prompt_prefix(self, instructions: str) -> list[dict[str, str]]:
        """The messages the next user turn's prompt will start with: the window as it will be
        once that turn is added, without the turn (what an LLM can evaluate ahead of time)."""
        return self._messages(instructions, None, pending_items=1)

    def _messages(self, instructions: str, pending_user_text: str | None, pending_items: int) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": instructions}] if instructions else []
        turns = [(item.role, item.text) for item in self.items[self._window_start(pending_items):] if not item.false_start]
        if pending_user_text:
            turns.append(("user", pending_user_text))
        for role, text in turns:
            if not text.strip():
                continue
            if messages and messages[-1]["role"] == role and role != "system":
                messages[-1]["content"] += " " + text
            else:
                messages.append({"role": role, "content": text})
        return messages
