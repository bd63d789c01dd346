"""`voxloop serve --path native` end to end over the websocket: random weights (the only
weights available offline) through the real server process, live turn-taking, barge-in,
manual mode, concurrent sessions and disconnects; missing weights refuse to start."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from voxloop.bench.server_process import ServerProcess, free_port, start_server
from voxloop.bench.speech import clip
from voxloop.bench.turns import PacedMicrophone
from voxloop.client.realtime_client import RealtimeClient
from voxloop.codecs.audiofile import load_audio
from voxloop.codecs.pcm import pcm16_to_float
from voxloop.voice.native_models import RANDOM_WEIGHTS_NOTE

ARTIFACTS = Path(__file__).parent / "artifacts"
RATE = 24000
# After speech_started the session cancels the response before it reads more input; allow
# for a delta already being written and a loaded CI machine.
LATE_DELTA_BOUND_S = 0.2


@pytest.fixture(scope="module")
def native_server() -> ServerProcess:
    running = start_server(["--path", "native", "--random-weights", "--speech-lm-config", "tiny"], ARTIFACTS, name="native")
    yield running
    running.stop()


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio)))) if audio.size else 0.0


def delta_audio(event: dict) -> np.ndarray:
    return pcm16_to_float(base64.b64decode(event["delta"]))


async def recv_until(client: RealtimeClient, arrivals: list, done, timeout_s: float) -> dict:
    async with asyncio.timeout(timeout_s):
        while True:
            event = await client.recv(timeout=1.0)
            if event is None:
                continue
            arrivals.append((time.monotonic(), event))
            if done(event):
                return event


def test_spoken_turn_gets_audio_and_barge_in_cancels_it(native_server):
    question = load_audio(clip("arctic_a0039_1592747680").path, RATE)
    interruption = load_audio(clip("p301_102").path, RATE)

    async def converse():
        arrivals: list[tuple[float, dict]] = []
        async with RealtimeClient(native_server.ws_url) as client:
            created = await recv_until(client, arrivals, lambda e: e["type"] == "session.created", 10)
            mic = PacedMicrophone(client)
            mic.start()
            try:
                await mic.say(question)
                first_response = None
                deltas = 0

                def audio_flowing(event: dict) -> bool:
                    nonlocal first_response, deltas
                    if event["type"] == "response.created":
                        first_response = first_response or event["response"]["id"]
                    if event["type"] == "response.output_audio.delta" and event["response_id"] == first_response:
                        deltas += 1
                    return deltas >= 5

                await recv_until(client, arrivals, audio_flowing, 30)
                # The assistant is speaking: the user cuts in.
                await mic.say(interruption)
                done = await recv_until(client, arrivals, lambda e: e["type"] == "response.done"
                                        and e["response"]["id"] == first_response, 30)
                item_id = done["response"]["output"][0]["id"]
                await client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 100})
                await recv_until(client, arrivals, lambda e: e["type"] in ("conversation.item.truncated", "error"), 10)
                # The interruption is a turn of its own, and gets a response of its own.
                await recv_until(client, arrivals, lambda e: e["type"] == "response.created"
                                 and e["response"]["id"] != first_response, 30)
            finally:
                await mic.stop()
        return created, first_response, arrivals

    created, response_id, arrivals = asyncio.run(converse())
    events = [e for _, e in arrivals]
    kinds = [e["type"] for e in events]
    assert created["session"]["voxloop"] == {"path": "native", "weights": RANDOM_WEIGHTS_NOTE}
    assert created["session"]["model"] == "voxloop-native/random-tiny"

    # The cascade's order of events: the user's turn ends and is committed (with an empty
    # transcript: no text channel) before the response opens.
    first_created = kinds.index("response.created")
    for kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
                 "conversation.item.input_audio_transcription.completed", "response.output_item.added",
                 "response.content_part.added"):
        assert kind in kinds, kind
    assert kinds.index("input_audio_buffer.speech_stopped") < first_created < kinds.index("response.output_audio.delta")
    assert all(e["transcript"] == "" for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")

    audio = np.concatenate([delta_audio(e) for e in events if e["type"] == "response.output_audio.delta"
                            and e["response_id"] == response_id])
    assert rms(audio) > 0.01  # random weights: loud noise, not silence

    done = next(e for e in events if e["type"] == "response.done" and e["response"]["id"] == response_id)
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "turn_detected"
    assert done["response"]["output"][0]["content"][0]["transcript"] == ""
    first_delta_at = next(t for t, e in arrivals if e["type"] == "response.output_audio.delta")
    started_at = next(t for t, e in arrivals if e["type"] == "input_audio_buffer.speech_started" and t > first_delta_at)
    late = [round(t - started_at, 3) for t, e in arrivals if e["type"] == "response.output_audio.delta"
            and e["response_id"] == response_id and t > started_at + LATE_DELTA_BOUND_S]
    assert late == [], f"audio deltas arrived {late} s after speech_started"
    truncated = next(e for e in events if e["type"] in ("conversation.item.truncated", "error"))
    assert truncated["type"] == "conversation.item.truncated", truncated

    for event in events:
        if event["type"] == "response.done":
            assert event["response"]["voxloop"]["weights"] == RANDOM_WEIGHTS_NOTE
            assert event["response"]["voxloop"]["path"] == "native"
    assert "serving RANDOM weights" in native_server.log()  # and the startup warning


def test_manual_mode_response_create_speaks_without_more_input(native_server):
    """After commit + response.create the client sends nothing: the model hears a silent
    microphone and still answers; response.cancel ends it."""
    speech = load_audio(clip("arctic_a0039_1592747680").path, RATE)[:RATE]

    async def converse():
        arrivals: list[tuple[float, dict]] = []
        async with RealtimeClient(native_server.ws_url) as client:
            await client.send({"type": "session.update", "session": {"type": "realtime", "turn_detection": None}})
            await recv_until(client, arrivals, lambda e: e["type"] == "session.updated", 10)
            await client.append_audio(speech)
            await client.send({"type": "input_audio_buffer.commit"})
            await client.send({"type": "response.create"})
            delta_count = 0

            def enough_audio(event: dict) -> bool:
                nonlocal delta_count
                delta_count += event["type"] == "response.output_audio.delta"
                return delta_count >= 5 or event["type"] == "response.done"

            await recv_until(client, arrivals, enough_audio, 20)
            await client.send({"type": "response.cancel"})
            await recv_until(client, arrivals, lambda e: e["type"] == "response.done", 10)
        return [e for _, e in arrivals]

    events = asyncio.run(converse())
    kinds = [e["type"] for e in events]
    assert "input_audio_buffer.speech_started" not in kinds  # manual mode: no VAD events
    assert kinds.index("input_audio_buffer.committed") < kinds.index("response.created")
    assert kinds.count("response.output_audio.delta") >= 5
    done = next(e for e in events if e["type"] == "response.done")["response"]
    assert (done["status"], done["status_details"]["reason"]) == ("cancelled", "client_cancelled")
    assert done["voxloop"]["weights"] == RANDOM_WEIGHTS_NOTE


def test_concurrent_sessions_share_the_model_and_leave_nothing_running(native_server):
    speech = load_audio(clip("p301_102").path, RATE)[:RATE]
    before = native_server.health()

    async def one_session(results: list) -> None:
        arrivals: list = []
        async with RealtimeClient(native_server.ws_url) as client:
            await client.send({"type": "session.update", "session": {"type": "realtime", "turn_detection": None}})
            await client.append_audio(speech)
            await client.send({"type": "input_audio_buffer.commit"})
            await client.send({"type": "response.create"})
            await recv_until(client, arrivals, lambda e: e["type"] == "response.output_audio.delta", 20)
            results.append(native_server.health()["sessions"])
        # Closed mid-response: the server must stop that session's model loop and reply.

    async def both() -> list:
        results: list = []
        await asyncio.gather(one_session(results), one_session(results))
        return results

    sessions_seen = asyncio.run(both())
    assert max(sessions_seen) == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = native_server.health()
        if after["sessions"] == 0 and after["tasks"] <= before["tasks"] and after["threads"] <= before["threads"]:
            break
        time.sleep(0.2)
    assert after["sessions"] == 0
    assert after["tasks"] <= before["tasks"], (before, after)
    assert after["threads"] <= before["threads"], (before, after)


def test_train_native_then_serve_the_trained_model(tmp_path):
    """The documented recipe through the command line: `voxloop train-native` with a local
    codec checkpoint, then `voxloop serve --path native --speech-lm OUT/model`."""
    import torch
    from safetensors.torch import save_file

    from voxloop.client.cli import main
    from voxloop.codecs.audiofile import save_audio
    from voxloop.codecs.encodec_stream import random_encodec

    codec = tmp_path / "encodec.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in random_encodec(seed=0, bandwidth=1.5).state_dict().items()}, str(codec))
    user, reply = tmp_path / "user.wav", tmp_path / "reply.wav"
    save_audio(user, load_audio(clip("arctic_a0039_1592747680").path, RATE)[: RATE // 2], RATE)
    save_audio(reply, load_audio(clip("arctic_a0024").path, RATE)[: RATE // 2], RATE)
    (tmp_path / "pairs.tsv").write_text("user.wav\treply.wav\n")
    threads = torch.get_num_threads()
    try:
        assert main(["train-native", str(tmp_path / "pairs.tsv"), str(tmp_path / "run"), "--steps", "2", "--batch-size", "1",
                     "--checkpoint-every", "2", "--codec-checkpoint", str(codec)]) == 0
    finally:
        torch.set_num_threads(threads)

    server = start_server(["--path", "native", "--speech-lm", str(tmp_path / "run" / "model"), "--encodec-checkpoint", str(codec)],
                          ARTIFACTS, name="native-trained")
    try:
        async def session_created() -> dict:
            async with RealtimeClient(server.ws_url) as client:
                return await recv_until(client, [], lambda e: e["type"] == "session.created", 10)

        session = asyncio.run(session_created())["session"]
    finally:
        server.stop()
    assert session["model"] == "voxloop-native/run"
    assert session["voxloop"] == {"path": "native", "weights": f"trained: {(tmp_path / 'run' / 'model').resolve()}"}
    assert "RANDOM" not in server.log()


@pytest.mark.parametrize("args, message", [
    ([], "needs a trained speech LM: pass --speech-lm"),
    (["--speech-lm", "/nonexistent/speech-lm"], "/nonexistent/speech-lm has no config.json"),
    (["--speech-lm-config", "production"], "--speech-lm-config sizes random weights only"),
])
def test_native_path_without_weights_refuses_to_start(args, message):
    result = subprocess.run([sys.executable, "-m", "voxloop.client.cli", "serve", "--path", "native", "--port", str(free_port()),
                             *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in " ".join(result.stderr.split()), result.stderr[-2000:]
