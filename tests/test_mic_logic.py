"""The live client's logic against a scripted server (events pushed by the test) and a scripted sound card:
mute, half-duplex, barge-in with audio queued, transcripts, push-to-talk, the latency definition, and the
server going away. Fast: no models."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from voxloop.client.audio_io import WIRE_RATE
from voxloop.client.mic import HALF_DUPLEX_HANGOVER_S, LiveOptions, LiveTalk
from voxloop.client.scripted_audio import ScriptedAudio
from voxloop.codecs.pcm import encode_base64_pcm16

pytestmark = pytest.mark.timeout(60)


class ScriptedServer:
    """Stands in for the RealtimeClient: keeps what the client sends, and gives it the events the test pushes."""

    def __init__(self):
        self.sent: list[tuple[float, dict]] = []
        self.appended: list[tuple[float, np.ndarray]] = []
        self._events: asyncio.Queue = asyncio.Queue()

    async def send(self, event: dict) -> None:
        self.sent.append((time.monotonic(), event))

    async def append_audio(self, samples: np.ndarray) -> None:
        self.appended.append((time.monotonic(), np.array(samples)))

    async def events(self):
        while (event := await self._events.get()) is not None:
            yield event

    def push(self, event: dict | None) -> None:
        self._events.put_nowait(event)

    def sent_of(self, kind: str) -> list[dict]:
        return [event for _, event in self.sent if event["type"] == kind]

    def reply(self, response_id: str, item_id: str, audio: np.ndarray, text: str = "Hello there.") -> None:
        self.push({"type": "response.created", "response": {"id": response_id, "status": "in_progress"}})
        self.push({"type": "response.output_item.added", "response_id": response_id, "item": {"id": item_id}})
        self.push({"type": "response.output_audio_transcript.delta", "response_id": response_id, "item_id": item_id,
                   "delta": text})
        for start in range(0, audio.size, WIRE_RATE // 10):
            self.push({"type": "response.output_audio.delta", "response_id": response_id, "item_id": item_id,
                       "delta": encode_base64_pcm16(audio[start:start + WIRE_RATE // 10])})


def tone(seconds: float, dbfs: float = -20.0, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * WIRE_RATE)) / WIRE_RATE
    return (10 ** (dbfs / 20) * np.sqrt(2) * np.sin(2 * np.pi * hz * t)).astype(np.float32)


async def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def converse(script, options: LiveOptions | None = None, device: ScriptedAudio | None = None):
    """Run the client with `script(talk, server, device)` driving it; returns (talk, server, device)."""
    server, device = ScriptedServer(), device or ScriptedAudio()

    async def run():
        talk = LiveTalk(server, device, options or LiveOptions(aec=False))
        running = asyncio.create_task(talk.run())
        try:
            await wait_for(lambda: talk.state.connection == "connected", 5, "start")
            await script(talk, server, device)
        finally:
            talk.stop()
            await asyncio.wait_for(running, 5)
            device.close()
        return talk

    talk = asyncio.run(run())
    return talk, server, device


def test_mute_sends_silence_and_unmute_restores():
    marks = {}

    async def script(talk, server, device):
        device.say(tone(1.5))
        await asyncio.sleep(0.3)
        talk.handle_key("m")
        marks["muted"] = time.monotonic()
        await asyncio.sleep(0.5)
        assert talk.state.mic == "muted" and talk.state.level_dbfs > -30  # the meter still shows the room
        talk.handle_key("m")
        marks["unmuted"] = time.monotonic()
        await asyncio.sleep(0.3)

    talk, server, _ = converse(script)
    muted = [audio for at, audio in server.appended if marks["muted"] + 0.05 < at < marks["unmuted"]]
    after = [audio for at, audio in server.appended if at > marks["unmuted"] + 0.05]
    before = [audio for at, audio in server.appended if at < marks["muted"]]
    assert len(muted) >= 15 and all(not audio.any() for audio in muted)  # ~25 blocks of 20 ms, all zeros
    assert before and after and all(np.abs(audio).max() > 0.05 for audio in before[-3:] + after[:3])
    assert talk.state.mic == "live"


def test_half_duplex_holds_the_mic_while_the_assistant_speaks():
    marks = {}

    async def script(talk, server, device):
        device.say(tone(3.0, dbfs=-30, hz=330))  # the user's room noise, constantly
        await asyncio.sleep(0.2)
        marks["reply"] = time.monotonic()
        server.reply("resp_1", "item_a", tone(0.6))
        await wait_for(lambda: device.played_ms > 0, 2, "playback")
        await wait_for(lambda: device.queued_ms == 0, 3, "playback to end")
        marks["played"] = time.monotonic()
        await asyncio.sleep(HALF_DUPLEX_HANGOVER_S + 0.3)

    _, server, _ = converse(script, LiveOptions(aec=False, half_duplex=True), ScriptedAudio(echo_gain=0.5))
    during = [audio for at, audio in server.appended if marks["reply"] + 0.1 < at < marks["played"]]
    after = [audio for at, audio in server.appended if at > marks["played"] + HALF_DUPLEX_HANGOVER_S + 0.05]
    assert len(during) >= 20 and all(not audio.any() for audio in during)  # neither the echo nor the user
    assert after and all(audio.any() for audio in after)


def test_barge_in_drops_queued_audio_and_truncates_at_what_was_played():
    marks = {}

    async def script(talk, server, device):
        server.push({"type": "input_audio_buffer.speech_started", "item_id": "user_1"})
        server.push({"type": "input_audio_buffer.speech_stopped", "item_id": "user_1"})
        server.push({"type": "conversation.item.input_audio_transcription.completed", "item_id": "user_1",
                     "transcript": "Tell me a story."})
        server.reply("resp_1", "item_a", tone(3.0))  # all of it sent at once: 3 s queued
        await wait_for(lambda: device.played_ms >= 400, 3, "400 ms played")
        server.push({"type": "input_audio_buffer.speech_started", "item_id": "user_2"})
        await wait_for(lambda: talk.barge_ins, 2, "the barge-in")
        marks["cut"] = talk.barge_ins[0].at
        # A late delta of the interrupted reply must not play.
        server.push({"type": "response.output_audio.delta", "response_id": "resp_1", "item_id": "item_a",
                     "delta": encode_base64_pcm16(tone(0.5))})
        await asyncio.sleep(0.3)

    talk, server, device = converse(script)
    after_cut = [content for at, content in device.blocks if at > marks["cut"] and content]
    assert len(after_cut) <= 1
    barge_in = talk.barge_ins[0]
    assert barge_in.dropped_ms > 2000
    played_ms = device.played_audio.size * 1000 / WIRE_RATE
    assert 400 <= played_ms < 600
    truncate = server.sent_of("conversation.item.truncate")
    assert truncate == [{"type": "conversation.item.truncate", "item_id": "item_a", "content_index": 0,
                         "audio_end_ms": int(played_ms)}]
    assert talk.state.turns[0].heard_ms == int(played_ms)
    assert not server.sent_of("response.cancel")  # server VAD cancels the reply itself


def test_partial_transcripts_then_the_final_one():
    seen = []

    async def script(talk, server, device):
        server.push({"type": "input_audio_buffer.speech_started", "item_id": "user_1"})
        for delta in ("for a", " full hour"):
            server.push({"type": "conversation.item.input_audio_transcription.delta", "item_id": "user_1", "delta": delta})
        await wait_for(lambda: talk.state.turns and talk.state.turns[0].user_text == "for a full hour", 2, "partials")
        seen.append((talk.state.turns[0].user_text, talk.state.turns[0].user_final, talk.state.user_speaking))
        server.push({"type": "input_audio_buffer.speech_stopped", "item_id": "user_1"})
        server.push({"type": "conversation.item.input_audio_transcription.completed", "item_id": "user_1",
                     "transcript": "For a full hour he had paced."})
        await wait_for(lambda: talk.state.turns[0].user_final, 2, "the final transcript")

    talk, _, _ = converse(script)
    assert seen == [("for a full hour", False, True)]
    turn = talk.state.turns[0]
    assert (turn.user_text, turn.user_final, talk.state.user_speaking) == ("For a full hour he had paced.", True, False)


def test_empty_transcript_finishes_the_turn_without_reply():
    async def script(talk, server, device):
        server.push({"type": "input_audio_buffer.speech_started", "item_id": "user_1"})
        server.push({"type": "input_audio_buffer.speech_stopped", "item_id": "user_1"})
        server.push({"type": "conversation.item.input_audio_transcription.completed", "item_id": "user_1", "transcript": ""})
        await wait_for(lambda: talk.state.turns and talk.state.turns[0].finished, 2, "the turn to finish")

    talk, _, _ = converse(script)
    assert talk.state.turns[0].response_id is None


def test_push_to_talk_commits_and_asks_for_the_reply_after_the_transcript():
    async def script(talk, server, device):
        device.say(tone(0.4))
        await asyncio.sleep(0.5)  # spoken with the key off: not sent
        assert not server.appended
        talk.handle_key(" ")
        await wait_for(lambda: server.sent_of("input_audio_buffer.clear"), 1, "the buffer to be cleared")
        device.say(tone(0.5))
        await asyncio.sleep(0.6)
        talk.handle_key(" ")
        await wait_for(lambda: server.sent_of("input_audio_buffer.commit"), 1, "the commit")
        assert not server.sent_of("response.create")  # not before the transcript
        server.push({"type": "input_audio_buffer.committed", "item_id": "user_1"})
        server.push({"type": "conversation.item.input_audio_transcription.completed", "item_id": "user_1",
                     "transcript": "Hello there."})
        await wait_for(lambda: server.sent_of("response.create"), 1, "the reply to be asked for")

    talk, server, _ = converse(script, LiveOptions(aec=False, push_to_talk=True))
    assert server.sent_of("session.update")[0]["session"]["audio"]["input"]["turn_detection"] is None
    sent_s = sum(audio.size for _, audio in server.appended) / WIRE_RATE
    assert 0.5 <= sent_s <= 0.75
    turn = talk.state.turns[0]
    assert turn.user_item_id == "user_1" and turn.user_text == "Hello there." and turn.speech_end_source == "push-to-talk key"


def test_push_to_talk_cuts_the_assistant_off():
    async def script(talk, server, device):
        server.reply("resp_1", "item_a", tone(2.0))
        await wait_for(lambda: device.played_ms >= 300, 3, "300 ms played")
        await talk.toggle_talk()

    talk, server, device = converse(script, LiveOptions(aec=False, push_to_talk=True))
    kinds = [event["type"] for _, event in server.sent]
    assert kinds[-3:] == ["conversation.item.truncate", "response.cancel", "input_audio_buffer.clear"]
    assert server.sent_of("conversation.item.truncate")[0]["audio_end_ms"] == int(device.played_audio.size * 1000 / WIRE_RATE)
    assert device.queued_ms == 0


def test_voice_to_voice_latency_runs_from_the_end_of_speech_to_the_first_audible_sample():
    lead_in = 0.1  # the reply starts with 100 ms of silence, which is not yet "heard"

    async def script(talk, server, device):
        await asyncio.sleep(0.3)  # the tracker learns the noise floor
        server.push({"type": "input_audio_buffer.speech_started", "item_id": "user_1"})
        device.say(tone(0.8))
        await wait_for(lambda: not device.saying, 2, "the speech")
        await asyncio.sleep(0.5)  # the server's silence hangover
        server.push({"type": "input_audio_buffer.speech_stopped", "item_id": "user_1"})
        server.push({"type": "conversation.item.input_audio_transcription.completed", "item_id": "user_1",
                     "transcript": "Hi."})
        await asyncio.sleep(0.3)  # the models at work
        server.reply("resp_1", "item_a", np.concatenate([np.zeros(int(lead_in * WIRE_RATE), np.float32), tone(0.5)]))
        await wait_for(lambda: talk.state.turns[0].latency_ms is not None, 3, "the latency")

    talk, _, device = converse(script)
    turn = talk.state.turns[0]
    assert turn.speech_end_source == "mic level"
    assert abs(turn.speech_end_at - device.said_until) < 0.005
    # When the device took the first audible sample: the block holding reply sample `lead_in` s.
    seen = 0
    for at, content in device.blocks:
        if content and seen + content > lead_in * WIRE_RATE:
            audible_at = at + (lead_in * WIRE_RATE - seen) / WIRE_RATE
            break
        seen += content
    expected_ms = (audible_at - device.said_until) * 1000
    assert expected_ms > 800
    assert abs(turn.latency_ms - expected_ms) <= 25, (turn.latency_ms, expected_ms)


def test_server_going_away_ends_the_conversation():
    async def script(talk, server, device):
        server.push(None)
        await asyncio.sleep(0.2)

    talk, _, _ = converse(script)
    assert talk.state.connection == "disconnected: the server closed the connection"
    assert talk.exit_reason == "the server closed the connection"


def test_a_dropped_connection_ends_the_conversation_cleanly():
    """A real websocket that the server drops mid-conversation (close code 1011), with the mic still sending."""
    from websockets.asyncio.server import serve

    from voxloop.client.realtime_client import RealtimeClient

    async def drop_soon(connection) -> None:
        async def read_all() -> None:  # unread messages would hold up the closing handshake
            async for _ in connection:
                pass

        reading = asyncio.create_task(read_all())
        await connection.send(json.dumps({"type": "session.created", "session": {}}))
        await asyncio.sleep(0.4)  # some mic blocks arrive first
        await connection.close(code=1011, reason="internal error")
        await asyncio.gather(reading, return_exceptions=True)

    async def run():
        async with serve(drop_soon, "127.0.0.1", 0) as listener:
            port = listener.sockets[0].getsockname()[1]
            device = ScriptedAudio()
            async with RealtimeClient(f"ws://127.0.0.1:{port}/v1/realtime") as client:
                talk = LiveTalk(client, device, LiveOptions(aec=False))
                await asyncio.wait_for(talk.run(), 5)
            device.close()
            return talk

    talk = asyncio.run(run())
    assert talk.state.connection.startswith("disconnected: the connection broke"), talk.state.connection
    assert "1011" in talk.exit_reason
