"""Bad input gets a clear `error` event and the session keeps working; clients that vanish
mid-reply leave nothing running behind."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
import websockets

from voxloop.client.realtime_client import RealtimeClient
from voxloop.streaming.realtime import MAX_EVENT_BYTES
from reply_status import HEARD_OUT

pytestmark = pytest.mark.models

BAD_EVENTS = [
    ("{not json", "invalid_json"),
    ("[1, 2, 3]", "invalid_event"),
    (json.dumps({"event_id": "e1"}), "missing_required_parameter"),
    (json.dumps({"type": "no.such.event"}), "unknown_event_type"),
    (json.dumps({"type": "input_audio_buffer.append"}), "missing_required_parameter"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": 42}), "invalid_value"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": "%%% not base64 %%%"}), "invalid_audio"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01\x02\x03").decode()}), "invalid_audio"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (MAX_EVENT_BYTES + 8)}), "message_too_large"),
    (json.dumps({"type": "input_audio_buffer.commit"}), "input_audio_buffer_commit_empty"),
    (json.dumps({"type": "conversation.item.truncate", "item_id": "item_nope", "content_index": 0, "audio_end_ms": 10}), "item_not_found"),
    (json.dumps({"type": "conversation.item.truncate", "item_id": "item_nope", "content_index": 0, "audio_end_ms": -5}), "invalid_value"),
    (json.dumps({"type": "conversation.item.truncate", "item_id": "item_nope"}), "missing_required_parameter"),
    (json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "robot", "content": []}}), "invalid_value"),
    (json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_audio"}]}}), "invalid_value"),
    (json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}}), "invalid_value"),
    (json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 7}}}}}), "invalid_value"),
    (json.dumps({"type": "session.update", "session": "fast"}), "invalid_value"),
    (json.dumps({"type": "response.cancel"}), "response_cancel_not_active"),
]


def test_every_bad_event_gets_an_error_and_the_session_goes_on(server):
    async def run():
        answers = []
        async with RealtimeClient(server.ws_url) as client:
            created = await client.recv(timeout=10)
            assert created["type"] == "session.created"
            for index, (message, _) in enumerate(BAD_EVENTS):
                await client.send_raw(message)
                answer = await client.recv(timeout=10)
                answers.append(answer)
            await client.send_raw(b"\x00binary")
            answers.append(await client.recv(timeout=10))
            # Still a working conversation: a text turn gets a spoken reply.
            await client.send({"type": "conversation.item.create",
                               "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}})
            await client.send({"type": "response.create", "event_id": "evt_go"})
            await client.send({"type": "response.create", "event_id": "evt_again"})  # one reply at a time
            rest = []
            async with asyncio.timeout(60):
                while not rest or rest[-1]["type"] != "response.done":
                    if (event := await client.recv(timeout=60)) is not None:
                        rest.append(event)
        return answers, rest

    answers, rest = asyncio.run(run())
    for (message, expected_code), answer in zip(BAD_EVENTS, answers):
        assert answer["type"] == "error", (message[:80], answer)
        assert answer["error"]["code"] == expected_code, (message[:80], answer)
        assert answer["error"]["message"]
    assert answers[-1]["error"]["code"] == "invalid_message"
    assert answers[2]["error"]["event_id"] == "e1"  # errors name the client event that caused them
    busy = [e for e in rest if e["type"] == "error"]
    assert [e["error"]["code"] for e in busy] == ["conversation_already_has_active_response"]
    assert busy[0]["error"]["event_id"] == "evt_again"
    assert rest[-1]["response"]["status"] in HEARD_OUT
    assert any(e["type"] == "response.output_audio.delta" for e in rest)


def test_abrupt_disconnects_mid_reply_leave_nothing_running(server):
    baseline = server.health()

    async def hang_up_mid_reply():
        async with RealtimeClient(server.ws_url) as client:
            await client.send({"type": "conversation.item.create",
                               "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a long story."}]}})
            await client.send({"type": "response.create"})
            async with asyncio.timeout(60):
                while (event := await client.recv(timeout=60)) is None or event["type"] != "response.output_audio.delta":
                    pass
            client.abort()

    for _ in range(4):
        try:
            asyncio.run(hang_up_mid_reply())
        except (websockets.ConnectionClosed, OSError):
            pass

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        health = server.health()
        if health["sessions"] == 0 and health["tasks"] <= baseline["tasks"] and health["threads"] <= baseline["threads"]:
            break
        time.sleep(0.25)
    assert health["sessions"] == 0, health
    assert health["tasks"] <= baseline["tasks"], (baseline, health)
    assert health["threads"] <= baseline["threads"], (baseline, health)
    # Four abandoned replies must not leave their audio or model state behind.
    assert health["rss_mb"] - baseline["rss_mb"] < 60, (baseline, health)

    # And the server still serves.
    async def still_alive():
        async with RealtimeClient(server.ws_url) as client:
            return (await client.recv(timeout=10))["type"]

    assert asyncio.run(still_alive()) == "session.created"


def test_beta_clients_get_the_beta_event_names(server):
    async def run():
        async with websockets.connect(server.ws_url, additional_headers={"OpenAI-Beta": "realtime=v1"}) as ws:
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hi."}]}}))
            await ws.send(json.dumps({"type": "response.create"}))
            kinds = []
            async with asyncio.timeout(60):
                while not kinds or kinds[-1] != "response.done":
                    kinds.append(json.loads(await ws.recv())["type"])
            return kinds

    kinds = asyncio.run(run())
    assert "response.audio.delta" in kinds and "response.audio_transcript.done" in kinds
    assert "conversation.item.created" in kinds
    assert not any(k.startswith("response.output_audio") for k in kinds)
