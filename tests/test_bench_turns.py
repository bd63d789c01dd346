"""The benchmark's conversation against a real server: each turn is measured, and each reply is
heard out before the next turn, so the conversation the LLM sees stays a real one."""

import asyncio
import time

from voxloop.bench.server_process import ServerProcess
from voxloop.bench.speech import clip as find_clip
from voxloop.bench.turns import run_session
from reply_status import HEARD_OUT

CLIPS = ("arctic_a0039_1592747680", "1089-134691-0000")


def test_turns_are_measured_and_every_reply_is_heard_out(server: ServerProcess) -> None:
    clips = [find_clip(name) for name in CLIPS]
    started = time.monotonic()
    turns = asyncio.run(run_session(server.ws_url, clips, "default", 0))
    elapsed = time.monotonic() - started

    assert [t.clip for t in turns] == list(CLIPS)
    for turn in turns:
        assert turn.error is None, turn.error
        assert 0 < turn.voice_to_voice_ms < 10_000, turn
        assert turn.end_of_turn_ms is not None and turn.end_of_turn_ms > 0, turn
        # Heard out, not cut off at its first sound: the server kept the whole reply.
        assert turn.reply_status in HEARD_OUT and turn.reply.strip(), turn
        assert turn.reply_audio_ms > 300, turn
    spoken_s = sum(c.duration_s for c in clips)
    replies_s = sum(t.reply_audio_ms for t in turns) / 1000
    assert elapsed >= spoken_s + replies_s, (elapsed, spoken_s, replies_s)


def test_the_bench_opens_a_new_conversation_every_few_turns(server: ServerProcess) -> None:
    from tqdm import tqdm

    from voxloop.bench.cli import Variant, _interleaved

    def sessions_opened() -> int:
        return server.log().count("opened from")

    clips = [find_clip(name) for name in CLIPS]
    before = sessions_opened()
    with tqdm(total=3, disable=True) as bar:
        turns = asyncio.run(_interleaved([Variant("v", [], server.ws_url)], clips, 3, 2, bar))
    assert [t.clip for t in turns] == [CLIPS[0], CLIPS[1], CLIPS[0]]
    assert all(t.error is None for t in turns), [t.error for t in turns]
    assert sessions_opened() - before == 2  # turns 1-2 in one conversation, turn 3 in the next
