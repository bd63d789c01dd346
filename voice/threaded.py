"""Running a blocking generator on a worker thread as an async iterator.

Model calls block for milliseconds to seconds, so they run on per-model worker threads and
never on the event loop. Closing the async iterator (a cancelled task does this) sets a stop
flag that the worker checks between items, so cancellation reaches the model promptly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import TypeVar

from voxloop.voice.priority_worker import PriorityWorker

T = TypeVar("T")
_END = object()


async def iterate_in_thread(executor: Executor, produce: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    loop = asyncio.get_running_loop()
    items: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def put(item: object) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the loop closed under us (server shutting down); nobody is listening
            stop.set()

    def work() -> None:
        try:
            if stop.is_set():  # abandoned while it waited for the worker
                return
            for item in produce():
                if stop.is_set():
                    break
                put(item)
        except BaseException as exc:  # handed to the awaiting side, which re-raises it
            put(exc)
        finally:
            put(_END)

    loop.run_in_executor(executor, work)
    try:
        while (item := await items.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


async def iterate_in_steps(worker: PriorityWorker, produce: Callable[[], Iterator[T]],
                           needed_by: Callable[[], float]) -> AsyncIterator[T]:
    """Like iterate_in_thread, but each item is a job of its own on `worker`, queued by
    `needed_by()` (the time.monotonic() by which that item is wanted), so that between two items
    of one stream the worker serves a stream that needs its next item sooner. Nothing runs ahead:
    the next item is asked for when this one is taken."""
    items: Iterator[T] | None = None

    def step():
        nonlocal items
        if items is None:
            items = produce()
        return next(items, _END)

    def close() -> None:
        if items is not None:
            items.close()

    try:
        while (item := await worker.run(step, deadline=needed_by())) is not _END:
            yield item
    finally:
        # On the worker, after any step still running there: a generator cannot be closed while it runs.
        worker.submit(close, deadline=float("-inf"))
