"""The live microphone client against the real server, with a scripted sound card (no hardware):
a reply is played, the transcript is right, latency is measured, and barge-in silences the speaker and
truncates the reply at what was heard."""

from __future__ import annotations

import asyncio
import base64
import time
from contextlib import asynccontextmanager

import numpy as np
import pytest

from voxloop.bench.wer import word_error_rate
from voxloop.client.audio_io import WIRE_RATE
from voxloop.client.mic import LiveOptions, LiveTalk
from voxloop.client.realtime_client import RealtimeClient
from voxloop.client.scripted_audio import ScriptedAudio
from voxloop.codecs.audiofile import load_audio
from voxloop.codecs.pcm import pcm16_to_float
from reply_status import HEARD_OUT

pytestmark = pytest.mark.timeout(150)

TURN_TIMEOUT_S = 60  # two shared CPU cores: a turn can take many seconds under load
SHORT = LiveOptions(instructions="Answer in one short sentence.", max_output_tokens=24)


class RecordingClient(RealtimeClient):
    """The real client, keeping what went each way (with arrival times)."""

    def __init__(self, url: str):
        super().__init__(url)
        self.sent: list[tuple[float, dict]] = []
        self.received: list[tuple[float, dict]] = []

    async def send(self, event: dict) -> None:
        self.sent.append((time.monotonic(), event))
        await super().send(event)

    async def events(self):
        async for event in super().events():
            self.received.append((time.monotonic(), event))
            yield event

    def sent_of(self, kind: str) -> list[dict]:
        return [event for _, event in self.sent if event["type"] == kind]

    def received_of(self, kind: str) -> list[tuple[float, dict]]:
        return [(at, event) for at, event in self.received if event["type"] == kind]


@asynccontextmanager
async def conversation(url: str, device: ScriptedAudio, options: LiveOptions):
    async with RecordingClient(url) as client:
        talk = LiveTalk(client, device, options)
        running = asyncio.create_task(talk.run())
        try:
            await wait_for(lambda: talk.state.connection == "connected" or running.done(), 10, "the client to start")
            yield talk, client
        finally:
            talk.stop()
            await asyncio.wait_for(running, 10)
            device.close()


async def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def speech(clip) -> np.ndarray:
    return load_audio(clip.path, WIRE_RATE)


def test_reply_is_played_transcribed_and_timed(server, clips):
    clip = clips["arctic_a0039_1592747680"]
    device = ScriptedAudio()

    async def run():
        async with conversation(server.ws_url, device, SHORT) as (talk, client):
            device.say(speech(clip))
            await wait_for(lambda: talk.state.turns and talk.state.turns[0].finished, TURN_TIMEOUT_S, "the first turn")
            # A turn is finished within half a millisecond of its audio's end, so a few samples may still be queued.
            await wait_for(lambda: device.queued_ms == 0, 1.0, "the speaker to play the last samples")
            return talk, client

    talk, client = asyncio.run(run())
    turn = talk.state.turns[0]
    assert turn.user_final and word_error_rate(clip.transcript, turn.user_text) <= 0.25, turn.user_text
    assert turn.status in HEARD_OUT and turn.assistant_text.strip()

    # Every sample the server sent was played, in order, and nothing else.
    sent_audio = np.concatenate([pcm16_to_float(base64.b64decode(event["delta"]))
                                 for _, event in client.received_of("response.output_audio.delta")])
    assert sent_audio.size > 0.3 * WIRE_RATE
    np.testing.assert_array_equal(device.played_audio, sent_audio)

    # End of speech found from the mic level lies where the scripted speech ended (one block either way),
    # and the voice-to-voice latency brackets the server's own stage timings.
    assert turn.speech_end_source == "mic level"
    assert abs(turn.speech_end_at - device.said_until) <= 0.1
    stopped_at = client.received_of("input_audio_buffer.speech_stopped")[0][0]
    first_sent = turn.server_timings["first_audio_sent_ms"]
    assert turn.latency_ms >= first_sent + (stopped_at - turn.speech_end_at) * 1000 - 50
    assert turn.latency_ms <= first_sent + (stopped_at - turn.speech_end_at) * 1000 + 1000
    assert turn.latency_ms >= turn.server_timings["end_silence_ms"]  # the pause that ended the turn alone is this long
    print(f"voice-to-voice {turn.latency_ms:.0f} ms; server {turn.server_timings}")


def test_barge_in_silences_within_one_block_and_truncates(server, clips):
    first, second = clips["arctic_a0039_1592747680"], clips["1089-134691-0001"]
    device = ScriptedAudio()
    options = LiveOptions(instructions="Answer at length, in at least five full sentences.",
                          max_output_tokens=160)

    async def run():
        async with conversation(server.ws_url, device, options) as (talk, client):
            device.say(speech(first))
            await wait_for(lambda: device.played_ms > 100, TURN_TIMEOUT_S, "the reply to play")
            device.say(speech(second))
            await wait_for(lambda: talk.barge_ins, 20, "the barge-in")
            await wait_for(lambda: client.received_of("conversation.item.truncated"), 10, "the truncation to be confirmed")
            return talk, client

    talk, client = asyncio.run(run())
    starts = client.received_of("input_audio_buffer.speech_started")
    assert len(starts) == 2, [event["type"] for _, event in client.received]
    cut_at = starts[1][0]

    # The speaker went silent within one block of speech_started arriving.
    blocks_after = [content for at, content in device.blocks if at > cut_at and content]
    assert len(blocks_after) <= 1, blocks_after
    barge_in = talk.barge_ins[0]
    assert barge_in.at - cut_at < 0.05

    # The truncation names the reply's item and exactly the audio the speaker played of it.
    first_turn = talk.state.turns[0]
    truncate = client.sent_of("conversation.item.truncate")
    assert len(truncate) == 1
    assert truncate[0]["item_id"] == first_turn.assistant_item_id
    played_ms = device.played_audio.size * 1000 / WIRE_RATE
    assert abs(truncate[0]["audio_end_ms"] - played_ms) <= 1
    assert truncate[0]["audio_end_ms"] == barge_in.heard_ms == first_turn.heard_ms
    confirmed = client.received_of("conversation.item.truncated")[0][1]
    assert confirmed["audio_end_ms"] == truncate[0]["audio_end_ms"]
    assert not client.received_of("error"), client.received_of("error")

    # The cut fell inside the reply: its unplayed rest was dropped here (when it had all been sent already)
    # or the server stopped generating it; none of its audio was played after the cut.
    received_ms = sum(len(base64.b64decode(event["delta"])) // 2 for _, event in client.received_of("response.output_audio.delta")
                      if event["response_id"] == first_turn.response_id) * 1000 / WIRE_RATE
    done = [event["response"] for _, event in client.received_of("response.done")]
    if done[0]["status"] == "completed":  # all sent before the cut: the cut must have dropped the queued rest
        assert barge_in.dropped_ms > 0 and truncate[0]["audio_end_ms"] < received_ms - 100
    else:
        assert done[0]["status"] == "cancelled" and truncate[0]["audio_end_ms"] <= received_ms
    late = [event for at, event in client.received_of("response.output_audio.delta")
            if at > cut_at and event["response_id"] == first_turn.response_id]
    assert not late
    print(f"heard {barge_in.heard_ms} of {received_ms:.0f} ms received, dropped {barge_in.dropped_ms:.0f} ms queued; "
          f"reply {done[0]['status'] if done else 'still running'}")


def test_push_to_talk(server, clips):
    clip = clips["p301_102"]
    device = ScriptedAudio()
    options = LiveOptions(push_to_talk=True, instructions="Answer in one short sentence.", max_output_tokens=24)

    async def run():
        async with conversation(server.ws_url, device, options) as (talk, client):
            await wait_for(lambda: client.received_of("session.updated"), 10, "manual turn-taking")
            device.say(np.zeros(WIRE_RATE // 2, dtype=np.float32))  # not sent: the talk key is off
            await wait_for(lambda: not device.saying, 5, "the idle half second")
            await talk.toggle_talk()
            device.say(speech(clip))
            await wait_for(lambda: not device.saying, 15, "the speech to be said")
            await asyncio.sleep(0.1)
            await talk.toggle_talk()
            await wait_for(lambda: talk.state.turns and talk.state.turns[-1].finished, TURN_TIMEOUT_S, "the reply")
            return talk, client

    talk, client = asyncio.run(run())
    updated = client.received_of("session.updated")[-1][1]
    assert updated["session"]["audio"]["input"]["turn_detection"] is None
    assert not client.received_of("input_audio_buffer.speech_started")  # no server VAD
    kinds = [event["type"] for _, event in client.sent if event["type"] != "input_audio_buffer.append"]
    assert kinds[-2:] == ["input_audio_buffer.commit", "response.create"], kinds
    appended = sum(len(base64.b64decode(e["audio"])) // 2 for e in client.sent_of("input_audio_buffer.append"))
    assert abs(appended - speech(clip).size) < 0.2 * WIRE_RATE + 2 * device.block  # only the talk-key span
    turn = talk.state.turns[-1]
    assert word_error_rate(clip.transcript, turn.user_text) <= 0.25, turn.user_text
    assert turn.status in HEARD_OUT and device.played_audio.size > 0.3 * WIRE_RATE
    assert turn.speech_end_source == "push-to-talk key" and turn.latency_ms > 0
