"""Eager end of turn: a turn's work, started in a short pause before the turn is confirmed.

When the user pauses, the session transcribes what it has and starts the reply (LLM and TTS)
at once, holding the reply's audio back. If the pause turns out to end the turn, the
transcript and the first audio are ready at that moment; if the user goes on, it is all
cancelled and the models' worker threads stop at their next step.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

import numpy as np

from voxloop.voice.cascade import SpeechPiece

_END = object()
# Words a finished sentence rarely ends on; a pause after them is the speaker thinking.
_CONTINUERS = {"and", "but", "or", "so", "because", "the", "a", "an", "to", "of", "with", "for", "that", "which",
               "uh", "um", "er", "like", "if", "when", "my", "your", "is", "are", "was", "in", "on", "at"}


def sounds_unfinished(text: str) -> bool:
    """Whether a transcript reads like the speaker stopped mid-sentence.

    Whisper punctuates what it hears: a pause inside a sentence mostly comes out without a
    final full stop, or ends on a word like "and"."""
    text = text.strip()
    if not text:
        return False
    last_word = re.sub(r"[^\w']", "", text.split()[-1].lower())
    return text[-1] not in ".?!" or last_word in _CONTINUERS


class PrefetchedReply:
    """A reply stream running ahead into a buffer, read out later by whoever sends it."""

    def __init__(self, stream: AsyncIterator[SpeechPiece]):
        self._queue: asyncio.Queue = asyncio.Queue()
        self._pump = asyncio.create_task(self._run(stream))

    async def _run(self, stream: AsyncIterator[SpeechPiece]) -> None:
        try:
            async with aclosing(stream) as pieces:
                async for piece in pieces:
                    self._queue.put_nowait(piece)
            self._queue.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._queue.put_nowait(exc)

    async def pieces(self) -> AsyncIterator[SpeechPiece]:
        while (piece := await self._queue.get()) is not _END:
            if isinstance(piece, Exception):
                raise piece
            yield piece

    async def cancel(self) -> None:
        self._pump.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)


@dataclass
class Speculation:
    audio_end_ms: int
    end_sample: int
    audio: np.ndarray
    marks: dict[str, float] = field(default_factory=dict)
    task: asyncio.Task | None = None  # transcribes, then may start `reply`; returns the Transcript
    reply: PrefetchedReply | None = None

    async def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.reply is not None:
            await self.reply.cancel()
