"""End to end against a real `voxloop serve` on the embedded models: spoken turns through
`voxloop talk` and through the official openai SDK, manual turn-taking, and barge-in."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from openai import AsyncOpenAI

from voxloop.bench.wer import word_error_rate
from voxloop.client.realtime_client import RealtimeClient
from voxloop.client.talk import WIRE_RATE, stream_like_a_microphone, talk_file
from voxloop.codecs.audiofile import load_audio
from voxloop.codecs.pcm import encode_base64_pcm16, pcm16_to_float
from reply_status import HEARD_OUT
from speech_span import from_first_word

pytestmark = pytest.mark.models

# tiny.en through the server's VAD segmentation; a word or two of slack on a short clip.
WER_BOUND = 0.25
# After speech_started the server cancels the reply before it reads more input, so at most a
# delta already being written can follow; 200 ms leaves room for a loaded CI machine.
LATE_DELTA_BOUND_S = 0.2
# The user cuts in once the reply's audio is this far ahead of what the client has played. The
# server's estimate of what was heard then stays behind what it sent even if it takes a loaded
# machine this long to notice the interruption, and even if the LLM sends nothing more meanwhile.
CUT_IN_AHEAD_S = 1.0
LONG_REPLY = ("Whatever the user says, answer with a long story about the sea of at least eight sentences. "
              "Never stop early.")


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio)))) if audio.size else 0.0


def test_talk_file_turn_transcribes_and_answers_with_audio(server, clips):
    clip = clips["arctic_a0039_1592747680"]
    result = asyncio.run(talk_file(clip.path, server.ws_url))
    assert result.errors == []
    assert word_error_rate(clip.transcript, " ".join(result.user_transcripts)) <= WER_BOUND, result.user_transcripts
    completed = [r for r in result.responses if r["status"] in HEARD_OUT]
    assert completed, result.responses
    assert result.assistant_transcripts[-1].strip()
    assert rms(result.reply_audio) > 0.01
    timings = completed[-1]["voxloop"]["timings"]
    assert timings["reference"] == "speech_stopped"
    # Stage times count from speech_stopped; with eager end of turn the early stages may finish
    # before it (negative), but they stay in order and audio is only sent once the turn is over.
    assert timings["transcript_final_ms"] < timings["llm_first_token_ms"] <= timings["tts_first_audio_ms"]
    assert 0 <= timings["first_audio_sent_ms"] and timings["tts_first_audio_ms"] <= timings["first_audio_sent_ms"]


def test_talk_command_line_writes_the_reply(server, clips, tmp_path):
    clip = clips["p301_102"]
    output = tmp_path / "answer.wav"
    completed = subprocess.run([sys.executable, "-m", "voxloop.client.cli", "talk", "--input", str(clip.path),
                                "--output", str(output), "--url", server.ws_url],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    heard = " ".join(line.split(None, 1)[1] for line in completed.stdout.splitlines() if line.startswith("you "))
    assert word_error_rate(clip.transcript, heard) <= WER_BOUND, completed.stdout
    assert "first_audio_sent" in completed.stdout  # the stage timings are printed
    audio, rate = sf.read(output, dtype="float32")
    assert rate == WIRE_RATE and audio.size > WIRE_RATE // 2 and rms(audio) > 0.01


def test_openai_sdk_realtime_client_holds_a_spoken_turn(server, clips):
    clip = clips["1089-134691-0001"]
    speech = load_audio(clip.path, WIRE_RATE)

    async def converse():
        client = AsyncOpenAI(api_key="not-needed", base_url=f"{server.http_url}/v1")
        seen, audio, transcript, user_text = [], [], "", ""
        async with client.realtime.connect(model="voxloop") as connection:
            await connection.session.update(session={
                "type": "realtime", "instructions": "Answer in one short sentence.",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}})

            async def microphone():
                block = int(0.04 * WIRE_RATE)
                start = time.monotonic()
                for sent in range(0, speech.size + 30 * WIRE_RATE, block):
                    chunk = speech[sent:sent + block] if sent < speech.size else np.zeros(block, np.float32)
                    await connection.input_audio_buffer.append(audio=encode_base64_pcm16(chunk))
                    await asyncio.sleep(max(0.0, start + (sent + block) / WIRE_RATE - time.monotonic()))

            mic = asyncio.create_task(microphone())
            try:
                async with asyncio.timeout(60):
                    async for event in connection:
                        seen.append(event.type)
                        if event.type == "conversation.item.input_audio_transcription.completed":
                            user_text += " " + event.transcript
                        elif event.type == "response.output_audio.delta":
                            audio.append(pcm16_to_float(base64.b64decode(event.delta)))
                        elif event.type == "response.output_audio_transcript.done":
                            transcript = event.transcript
                        elif event.type == "response.done" and event.response.status in HEARD_OUT:
                            return seen, np.concatenate(audio), transcript, user_text
            finally:
                mic.cancel()

    seen, audio, transcript, user_text = asyncio.run(converse())
    for expected in ("session.created", "session.updated", "input_audio_buffer.speech_started",
                     "input_audio_buffer.speech_stopped", "input_audio_buffer.committed", "response.created",
                     "response.output_audio.delta", "response.done"):
        assert expected in seen
    assert word_error_rate(clip.transcript, user_text) <= WER_BOUND, user_text
    assert transcript.strip()
    assert rms(audio) > 0.01


def test_manual_turn_taking_with_commit_and_response_create(server, clips):
    clip = clips["arctic_a0039_1592747680"]
    speech = load_audio(clip.path, WIRE_RATE)

    async def converse():
        events = []
        async with RealtimeClient(server.ws_url) as client:
            await client.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}})
            for start in range(0, speech.size, WIRE_RATE):  # no pacing needed without VAD
                await client.append_audio(speech[start:start + WIRE_RATE])
            # Asked for at once, before the transcript exists: the reply must still answer it.
            await client.send({"type": "input_audio_buffer.commit"})
            await client.send({"type": "response.create"})
            async with asyncio.timeout(60):
                async for event in client.events():
                    events.append(event)
                    if event["type"] == "response.done":
                        return events

    events = asyncio.run(converse())
    kinds = [e["type"] for e in events]
    assert "input_audio_buffer.speech_started" not in kinds  # manual mode: no VAD events
    transcript = next(e["transcript"] for e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert word_error_rate(clip.transcript, transcript) <= WER_BOUND, transcript
    assert events[-1]["response"]["status"] in HEARD_OUT
    assert events[-1]["response"]["voxloop"]["timings"]["reference"] == "response_create"
    # The reply waited for the transcript it answers.
    assert kinds.index("conversation.item.input_audio_transcription.completed") < kinds.index("response.created")
    assert any(e["type"] == "response.output_audio.delta" for e in events)


def test_barge_in_cancels_the_reply_and_keeps_only_what_was_heard(server, clips):
    question = load_audio(clips["arctic_a0039_1592747680"].path, WIRE_RATE)
    # The clip opens with 1.3 s of room noise; the interruption starts just before its first word.
    interruption = from_first_word(load_audio(clips["p301_102"].path, WIRE_RATE), WIRE_RATE)

    async def converse():
        arrivals: list[tuple[float, dict]] = []
        async with RealtimeClient(server.ws_url) as client:
            await client.send({"type": "session.update", "session": {"type": "realtime", "instructions": LONG_REPLY,
                                                                    "max_output_tokens": 200}})
            mic = asyncio.create_task(stream_like_a_microphone(client, question, trailing_silence_s=0))
            first_response = None
            cut_in_at = None
            play_end = 0.0  # when the client would finish playing what it has received
            try:
                async with asyncio.timeout(90):
                    while True:
                        event = await client.recv(timeout=1.0)
                        if event is None:
                            continue
                        now = time.monotonic()
                        arrivals.append((now, event))
                        kind = event["type"]
                        if kind == "response.output_audio.delta" and cut_in_at is None:
                            first_response = first_response or event["response_id"]
                            # As the server estimates playback: each delta plays on arrival or after the one before.
                            play_end = max(now, play_end) + len(base64.b64decode(event["delta"])) / 2 / WIRE_RATE
                            if play_end - now >= CUT_IN_AHEAD_S:
                                cut_in_at = now
                                mic.cancel()
                                mic = asyncio.create_task(stream_like_a_microphone(client, interruption, trailing_silence_s=0))
                        if kind == "response.done" and event["response"]["id"] == first_response:
                            break
                    assistant_item = event["response"]["output"][0]["id"]
                    await client.send({"type": "conversation.item.retrieve", "item_id": assistant_item})
                    await client.send({"type": "conversation.item.truncate", "item_id": assistant_item,
                                       "content_index": 0, "audio_end_ms": 300})
                    await client.send({"type": "conversation.item.retrieve", "item_id": assistant_item})
                    retrieved = []
                    while len(retrieved) < 2:
                        event = await client.recv(timeout=10)
                        assert event is not None, "no answer to conversation.item.retrieve"
                        arrivals.append((time.monotonic(), event))
                        if event["type"] == "conversation.item.retrieved":
                            retrieved.append(event["item"])
            finally:
                mic.cancel()
        return arrivals, first_response, cut_in_at, retrieved

    arrivals, response_id, cut_in_at, (heard_item, truncated_item) = asyncio.run(converse())
    events = [e for _, e in arrivals]
    assert cut_in_at is not None, f"the reply ended before its audio ran {CUT_IN_AHEAD_S} s ahead of playback"
    done = next(e for e in events if e["type"] == "response.done" and e["response"]["id"] == response_id)
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "turn_detected"

    started_at = next(t for t, e in arrivals if e["type"] == "input_audio_buffer.speech_started" and t > cut_in_at)
    late = [t - started_at for t, e in arrivals if e["type"] == "response.output_audio.delta"
            and e["response_id"] == response_id and t > started_at + LATE_DELTA_BOUND_S]
    assert late == [], f"audio deltas arrived {late} s after speech_started"

    spoken = next(e["transcript"] for e in events if e["type"] == "response.output_audio_transcript.done"
                  and e["response_id"] == response_id).split()
    heard = heard_item["content"][0]["transcript"].split()
    sent_ms = 1000 * sum(len(base64.b64decode(e["delta"])) // 2 for e in events
                         if e["type"] == "response.output_audio.delta" and e["response_id"] == response_id) / WIRE_RATE
    # The history holds a prefix of what was spoken, and less of it than was sent: the user cut in
    # while the client still had CUT_IN_AHEAD_S of received audio to play.
    assert heard == spoken[:len(heard)]
    assert len(heard) < len(spoken), (heard, spoken, sent_ms)
    assert heard_item["status"] == "incomplete"
    # The client's own truncate (300 ms played) replaces the server's estimate.
    assert any(e["type"] == "conversation.item.truncated" and e["audio_end_ms"] == 300 for e in events)
    assert len(truncated_item["content"][0]["transcript"].split()) <= min(len(heard), 2)
