"""Running an async stream ahead of its reader.

A reply's audio is made by the LLM and TTS and read by a session that sends it at a pace, or,
for a reply started speculatively, not at all until the turn is confirmed. A stream that only
advanced when read would leave TTS idle while its audio waited to be sent, and the next clause
would start late. Here a task of the stream's own drains it into a buffer from the moment it is
made; cancelling that task closes the stream, which stops its models at their next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Generic, TypeVar

T = TypeVar("T")
_END = object()


class RunAhead(Generic[T]):
    def __init__(self, stream: AsyncIterator[T], on_end: Callable[[], None] | None = None):
        """`on_end`: called once the stream has ended, however it ended (even cancelled before it began)."""
        self._made: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.create_task(self._drain(stream))
        if on_end is not None:
            self._task.add_done_callback(lambda _task: on_end())

    async def _drain(self, stream: AsyncIterator[T]) -> None:
        try:
            async with aclosing(stream) as items:
                async for item in items:
                    self._made.put_nowait(item)
            self._made.put_nowait(_END)
        except Exception as exc:  # handed to the reader, which re-raises it
            self._made.put_nowait(exc)

    async def items(self) -> AsyncIterator[T]:
        """What the stream made, as soon as it is made; raises what the stream raised."""
        while (item := await self._made.get()) is not _END:
            if isinstance(item, Exception):
                raise item
            yield item

    async def cancel(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
