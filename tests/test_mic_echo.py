"""On loudspeakers the assistant hears itself. With echo cancellation it must not cut itself off; without it
(the control that shows the echo here is strong enough to matter) it does."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import replace

import numpy as np
import pytest

from test_mic_client import SHORT, TURN_TIMEOUT_S, conversation, speech, wait_for
from voxloop.client.scripted_audio import ScriptedAudio
from voxloop.codecs.pcm import pcm16_to_float
from reply_status import HEARD_OUT

pytestmark = pytest.mark.timeout(150)

ECHO_GAIN = 0.5  # -6 dB from speaker to microphone: a laptop at arm's length
ECHO_DELAY_MS = 60


def test_speaker_echo_is_cancelled(server, clips):
    clip = clips["arctic_a0039_1592747680"]
    device = ScriptedAudio(echo_gain=ECHO_GAIN, echo_delay_ms=ECHO_DELAY_MS)

    async def run():
        async with conversation(server.ws_url, device, SHORT) as (talk, client):
            device.say(speech(clip))
            await wait_for(lambda: talk.state.turns and talk.state.turns[0].finished, TURN_TIMEOUT_S, "the reply")
            await asyncio.sleep(0.8)  # time for a late echo-triggered speech_started to show
            return talk, client

    talk, client = asyncio.run(run())
    turn = talk.state.turns[0]
    assert len(client.received_of("input_audio_buffer.speech_started")) == 1, [e["type"] for _, e in client.received]
    assert not talk.barge_ins and not client.sent_of("conversation.item.truncate")
    assert turn.status in HEARD_OUT
    sent_audio = np.concatenate([pcm16_to_float(base64.b64decode(event["delta"]))
                                 for _, event in client.received_of("response.output_audio.delta")])
    assert sent_audio.size > 0.3 * 24000
    np.testing.assert_array_equal(device.played_audio, sent_audio)  # played to the end, uninterrupted


def test_speaker_echo_interrupts_without_cancellation(server, clips):
    clip = clips["arctic_a0039_1592747680"]
    device = ScriptedAudio(echo_gain=ECHO_GAIN, echo_delay_ms=ECHO_DELAY_MS)
    options = replace(SHORT, aec=False)

    async def run():
        async with conversation(server.ws_url, device, options) as (talk, client):
            device.say(speech(clip))
            await wait_for(lambda: talk.barge_ins or (talk.state.turns and talk.state.turns[0].finished),
                           TURN_TIMEOUT_S, "the reply")
            return talk, client

    talk, client = asyncio.run(run())
    assert talk.barge_ins, "the echo never reached the server's VAD: this setup cannot test echo cancellation"
    assert len(client.received_of("input_audio_buffer.speech_started")) >= 2
