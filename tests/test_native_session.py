"""The native path in-process: a speech LM trained by the documented recipe, served through
`NativeSession` with live turn-taking, says the reply it was trained on; the duplex loop's
frame clock and silence rule."""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
import pytest
import torch

from voxloop.bench.speech import clip
from voxloop.codecs.audiofile import load_audio
from voxloop.codecs.encodec_stream import FRAME_SAMPLES, SAMPLE_RATE, StreamingDecoder, random_encodec
from voxloop.codecs.pcm import pcm16_to_float
from voxloop.voice.config import SessionConfig
from voxloop.voice.duplex_runtime import codec_silence_codes
from voxloop.voice.native_models import NativeModels
from voxloop.voice.native_session import NativeSession, ResponsePolicy
from voxloop.voice.speech_lm import SamplingSettings, SpeechLM
from voxloop.voice.speech_lm_config import config_by_name
from voxloop.voice.train_native import ConversationLayout, encode_pairs, read_pairs, train
from voxloop.voice.turns import TurnDetectionConfig
from voxloop.voice.vad import SileroVAD

USER_CLIP = clip("arctic_a0039_1592747680").path
BANDWIDTH = 1.5  # the tiny config's 2 codebooks
# The recipe's default layout: the reply starts 200 ms after the user stops, 300 ms of silence follow it.
LAYOUT = ConversationLayout()
PCM16_STEP = 1 / 32768

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def codec():
    return random_encodec(seed=0, bandwidth=BANDWIDTH)


@pytest.fixture(scope="module")
def vad():
    return SileroVAD()


@pytest.fixture(scope="module")
def trained_model_dir(tmp_path_factory, codec, speech_pair):
    out_dir = tmp_path_factory.mktemp("trained")
    return train([speech_pair], out_dir, config_name="tiny", steps=150, lr=3e-3, batch_size=1, codec=codec, layout=LAYOUT,
                 checkpoint_every=1000, show_progress=False)


def converse(models: NativeModels, audio: np.ndarray, policy: ResponsePolicy, settle_s: float = 4.0) -> list[tuple[float, dict]]:
    """Speak `audio` into a session in real time, then a silent microphone until a response is done."""
    events: list[tuple[float, dict]] = []

    async def emit(event: dict) -> None:
        events.append((time.monotonic(), event))

    async def run():
        session = NativeSession(models, emit, SessionConfig(turn_detection=TurnDetectionConfig(), partial_transcripts=False), policy)
        block = SAMPLE_RATE // 25
        start = time.monotonic()
        sent = 0
        padded = np.concatenate([audio, np.zeros((-audio.size) % block, np.float32)])
        deadline = start + padded.size / SAMPLE_RATE + settle_s
        while time.monotonic() < deadline and not any(e["type"] == "response.done" for _, e in events):
            chunk = padded[sent:sent + block] if sent < padded.size else np.zeros(block, np.float32)
            await session.append_audio(chunk)
            sent += block
            await asyncio.sleep(max(0.0, start + sent / SAMPLE_RATE - time.monotonic()))
        await session.close()

    asyncio.run(run())
    return events


def test_a_trained_speech_lm_says_its_trained_reply_through_the_session(trained_model_dir, codec, vad, speech_pair):
    model = SpeechLM.load(trained_model_dir)
    models = NativeModels(vad, codec, model, SamplingSettings(temperature=0), weights_note=f"trained: {trained_model_dir}",
                          name="voxloop-native/test")
    conversation = encode_pairs(read_pairs([speech_pair]), codec, BANDWIDTH, LAYOUT)[0]
    user_track = np.concatenate([np.zeros(LAYOUT.lead_frames * FRAME_SAMPLES, np.float32), load_audio(speech_pair[0], SAMPLE_RATE)])
    # The reply must end inside the trained conversation, before its 300 ms silent tail runs out.
    events = converse(models, user_track, ResponsePolicy(end_silence_ms=200))
    kinds = [e["type"] for _, e in events]

    assert kinds.count("response.created") == 1, kinds
    assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index("response.created")
    transcript = next(e for _, e in events if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert transcript["transcript"] == ""  # no text channel
    done = next(e for _, e in events if e["type"] == "response.done")["response"]
    assert done["status"] == "completed", done
    assert done["voxloop"]["weights"].startswith("trained: ")
    assert done["output"][0]["content"][0]["transcript"] == ""

    # The response starts where the reply's sound does (the clip opens with digital silence,
    # which the encoder codes as a silent microphone): the model kept silent until then.
    reply_start, reply_frames = conversation.reply_start, conversation.reply_frames
    silence = codec_silence_codes(codec, BANDWIDTH)
    reply = conversation.assistant[:, reply_start:reply_start + reply_frames]
    sounding = int(torch.nonzero((reply != silence[:, None]).any(dim=0))[0])
    assert sounding < reply_frames // 2
    reference = StreamingDecoder(codec, BANDWIDTH).decode(conversation.assistant)
    expected = reference[(reply_start + sounding) * FRAME_SAMPLES:(reply_start + reply_frames) * FRAME_SAMPLES]
    sent = np.concatenate([pcm16_to_float(base64.b64decode(e["delta"])) for _, e in events
                           if e["type"] == "response.output_audio.delta"])
    assert sent.size >= expected.size
    assert np.abs(expected).max() < 1 and np.sqrt(np.mean(expected ** 2)) > 0.01
    np.testing.assert_allclose(sent[:expected.size], expected, atol=PCM16_STEP + 1e-5)
    # Then the silence it was trained to keep, which ends the response.
    assert done["voxloop"]["audio_ms"] <= (reply_frames + 15 + 24) * 1000 * FRAME_SAMPLES / SAMPLE_RATE


def test_a_silent_model_gives_no_response_to_a_turn(codec, vad):
    """A turn whose model output stays silent gets no response, as the cascade does not answer a cough."""

    class SilentLM(SpeechLM):
        def step_logits(self, user_delayed, assistant_input, cache):
            logits = super().step_logits(user_delayed, assistant_input, cache)
            silent = torch.full_like(logits, -1e4)
            silent[:, torch.arange(self.config.n_codebooks), silence_codes] = 0.0  # only the silence codes
            return silent

    silence_codes = codec_silence_codes(codec, BANDWIDTH)
    torch.manual_seed(0)
    models = NativeModels(vad, codec, SilentLM(config_by_name("tiny")).eval(), SamplingSettings(temperature=0),
                          weights_note="test", name="voxloop-native/silent")
    speech = load_audio(USER_CLIP, SAMPLE_RATE)[: SAMPLE_RATE]
    events = converse(models, np.concatenate([speech, np.zeros(SAMPLE_RATE // 2, np.float32)]),
                      ResponsePolicy(reply_wait_s=0.5), settle_s=1.5)
    kinds = [e["type"] for _, e in events]
    assert "input_audio_buffer.committed" in kinds
    assert "response.created" not in kinds


def test_output_frames_are_numbered_on_the_input_frame_clock(codec, vad):
    torch.manual_seed(0)
    models = NativeModels(vad, codec, SpeechLM(config_by_name("tiny")).eval(), SamplingSettings(), weights_note="test",
                          name="voxloop-native/test", seed=0)
    stream = models.new_stream()
    first = stream.process(np.zeros(1000, np.float32))  # 3 frames completed, 1 of them delayed
    assert (first.input_frames, first.first_frame, first.frames) == (3, 0, 2)
    second = stream.process(np.zeros(2 * FRAME_SAMPLES - 40, np.float32))  # the partial frame is completed, then one more
    assert (second.input_frames, second.first_frame, second.frames) == (2, 2, 2)
    assert second.audio.shape == (2 * FRAME_SAMPLES,) and second.audible.dtype == bool
    # Random weights say random codes: audible.
    assert second.audible.all()
