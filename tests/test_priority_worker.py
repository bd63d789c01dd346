"""The model worker that serves urgent jobs (a turn's final transcription) before background ones."""

import asyncio
import os
import sys
import threading
import time
from contextlib import aclosing

import pytest

from voxloop.voice.priority_worker import PriorityWorker
from voxloop.voice.threaded import iterate_in_steps


def test_a_queued_urgent_job_runs_before_queued_background_ones():
    worker = PriorityWorker("test")
    ran: list[str] = []
    release = threading.Event()
    try:
        worker.submit(release.wait)  # holds the worker while the others queue
        futures = [worker.submit(ran.append, "partial-1", urgent=False), worker.submit(ran.append, "partial-2", urgent=False),
                   worker.submit(ran.append, "final-1"), worker.submit(ran.append, "final-2")]
        release.set()
        for future in futures:
            future.result(timeout=5)
    finally:
        worker.shutdown()
    assert ran == ["final-1", "final-2", "partial-1", "partial-2"]


def test_a_cancelled_wait_drops_the_job_and_errors_reach_the_caller():
    worker = PriorityWorker("test")
    ran: list[str] = []
    release = threading.Event()

    def fail():
        raise ValueError("bad audio")

    async def scenario():
        worker.submit(release.wait)
        abandoned = asyncio.create_task(worker.run(ran.append, "abandoned", urgent=False))
        await asyncio.sleep(0.05)
        abandoned.cancel()
        await asyncio.gather(abandoned, return_exceptions=True)
        release.set()
        with pytest.raises(ValueError, match="bad audio"):
            await worker.run(fail)
        return await worker.run(lambda: "still serving")

    try:
        assert asyncio.run(scenario()) == "still serving"
    finally:
        worker.shutdown()
    assert ran == []


def test_shutdown_drops_waiting_jobs_and_stops_the_thread():
    worker = PriorityWorker("test")
    worker.submit(time.sleep, 0.1)
    waiting = worker.submit(lambda: "never")
    time.sleep(0.02)
    worker.shutdown()
    assert waiting.cancelled()
    assert not worker._thread.is_alive()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread CPU priority is a Linux facility")
def test_a_niced_worker_lowers_only_its_own_thread_and_the_threads_it_starts():
    baseline = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    worker = PriorityWorker("test", nice=19)
    try:
        own = worker.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result(timeout=5)

        def child_priority() -> int:
            seen: list[int] = []
            child = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
            child.start()
            child.join()
            return seen[0]

        inherited = worker.submit(child_priority).result(timeout=5)
    finally:
        worker.shutdown()
    assert own == 19 and inherited == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == baseline


def test_jobs_of_one_priority_run_in_the_order_of_their_deadlines():
    worker = PriorityWorker("test")
    ran: list[str] = []
    release = threading.Event()
    try:
        worker.submit(release.wait)
        futures = [worker.submit(ran.append, name, deadline=deadline) for name, deadline in (("late", 3.0), ("soon", 1.0), ("next", 2.0))]
        release.set()
        for future in futures:
            future.result(timeout=5)
    finally:
        worker.shutdown()
    assert ran == ["soon", "next", "late"]


def stream_order(deadline_a: float, deadline_b: float) -> tuple[list[str], list[str]]:
    """Two streams in steps on one held worker, A asked for first; (the order their first items
    were made, the streams whose generators were closed on the worker)."""
    worker = PriorityWorker("steps")
    made: list[str] = []
    closed: list[str] = []
    release = threading.Event()

    def produce(name: str):
        try:
            for index in range(3):
                made.append(f"{name}{index}")
                yield index
        finally:
            closed.append(f"{name} on {threading.current_thread().name}")

    async def take_first(name: str, deadline: float) -> None:
        async with aclosing(iterate_in_steps(worker, lambda: produce(name), lambda: deadline)) as items:
            await anext(items)  # then abandoned, as a barge-in abandons a clause

    async def scenario():
        worker.submit(release.wait)
        first = asyncio.create_task(take_first("A", deadline_a))
        await asyncio.sleep(0.02)
        second = asyncio.create_task(take_first("B", deadline_b))
        await asyncio.sleep(0.02)
        release.set()
        await asyncio.gather(first, second)
        await asyncio.to_thread(worker.submit(lambda: None).result, 5)  # the closes ran before it

    try:
        asyncio.run(scenario())
    finally:
        worker.shutdown()
    return made, closed


def test_a_stream_whose_items_are_needed_sooner_is_served_first():
    made, closed = stream_order(deadline_a=10.0, deadline_b=1.0)
    assert made[0] == "B0" and "A0" in made
    assert sorted(closed) == ["A on steps", "B on steps"]  # abandoned streams are closed, on the worker


def test_streams_needed_at_the_same_time_are_served_first_asked_first():
    made, _ = stream_order(deadline_a=1.0, deadline_b=1.0)
    assert made[0] == "A0"
