"""One worker thread for a model, with urgent jobs served before background ones.

Whisper serves two kinds of work: the transcription that ends a turn, which someone is waiting
for, and partial transcripts while users speak, which only refresh captions and the LLM's
pre-warm. With a plain queue, four sessions' partials keep the model busy and each final pass
waits behind them. Here a queued final pass runs next, and a background job whose caller has
given up (cancelled) is dropped without running.

Within a priority, jobs run in the order of their `deadline` (by default, of submission): TTS
queues each step of a clause by when its audio will be needed, so the sessions' clauses
interleave and the one about to run dry goes first.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")

URGENT, BACKGROUND = 0, 1


class PriorityWorker:
    def __init__(self, name: str, nice: int = 0):
        """`nice`: the thread's CPU priority on Linux (19 is the lowest), inherited by the threads its
        jobs start. Elsewhere it is ignored: there a process-wide setting is all there is."""
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()  # first in, first out within a priority
        self._nice = nice if sys.platform.startswith("linux") else 0
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args, urgent: bool = True, deadline: float = 0.0) -> Future:
        future: Future = Future()
        self._jobs.put((URGENT if urgent else BACKGROUND, deadline, next(self._order), fn, args, future))
        return future

    async def run(self, fn: Callable[..., T], *args, urgent: bool = True, deadline: float = 0.0) -> T:
        """Await `fn(*args)` on the worker; cancelling the await drops the job if it has not started."""
        return await asyncio.wrap_future(self.submit(fn, *args, urgent=urgent, deadline=deadline))

    def shutdown(self) -> None:
        """Finish the running job, drop the waiting ones, and stop the thread."""
        with self._jobs.mutex:
            dropped = [job[-1] for job in self._jobs.queue if job[-1] is not None]
            self._jobs.queue.clear()
        for future in dropped:
            future.cancel()
        self._jobs.put((-1, 0.0, -1, None, (), None))
        self._thread.join()

    def _serve(self) -> None:
        if self._nice:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)  # this thread only
        while True:
            _, _, _, fn, args, future = self._jobs.get()
            if fn is None:
                return
            if not future.set_running_or_notify_cancel():
                continue  # its caller stopped waiting while it queued
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # the awaiting side re-raises it
                future.set_exception(exc)
