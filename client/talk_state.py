"""What the live client knows about the conversation: what the screen shows and the tests check."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

NOTICE_S = 10.0  # how long an error or hint stays on screen


@dataclass
class Turn:
    """One exchange: what the user said and what the assistant answered."""

    user_item_id: str | None = None
    user_text: str = ""
    user_final: bool = False
    response_id: str | None = None
    assistant_item_id: str | None = None
    assistant_text: str = ""
    status: str | None = None  # the response's final status: completed, incomplete (token cap), cancelled, failed
    speech_end_at: float | None = None  # time.monotonic() of the end of the user's speech
    speech_end_source: str | None = None  # "mic level", "server VAD" or "push-to-talk key"
    latency_ms: float | None = None  # voice-to-voice, see voice_latency
    server_timings: dict = field(default_factory=dict)
    heard_ms: float | None = None  # set when the user cut in: how much of the reply was played
    finished: bool = False


@dataclass
class TalkState:
    connection: str = "connecting"
    level_dbfs: float = -120.0
    mic: str = "live"  # live, muted, held (half-duplex), idle (push-to-talk), talking (push-to-talk)
    aec: bool = True
    echo_path_db: float | None = None  # how loud the speaker comes back into the mic, once measured
    push_to_talk: bool = False
    keys: bool = True
    user_speaking: bool = False
    assistant_speaking: bool = False
    turns: list[Turn] = field(default_factory=list)
    notices: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=3))  # (time.monotonic(), text)

    def notify(self, text: str) -> None:
        self.notices.append((time.monotonic(), text))

    def recent_notices(self, max_age_s: float = NOTICE_S) -> list[str]:
        now = time.monotonic()
        return [text for at, text in self.notices if now - at <= max_age_s]

    @property
    def current(self) -> Turn | None:
        return self.turns[-1] if self.turns else None

    @property
    def last_latency(self) -> Turn | None:
        return next((turn for turn in reversed(self.turns) if turn.latency_ms is not None), None)
