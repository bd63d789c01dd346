"""Double-talk detection in front of AEC3: the user's voice over a reply reaches the server's VAD as soon as it
would without a canceller when no echo comes back (headphones), and the speaker's echo never passes for the
user, on a steady path or one that appears mid-session. Real speech for both sides; the server's own VAD
and turn detector judge."""

from __future__ import annotations

import numpy as np
import pytest

from voxloop.bench.barge_in import HEADPHONES, LAPTOP, ROOM, ServerEars, path_change, session, through
from voxloop.client.aec import EchoCanceller
from voxloop.client.audio_io import WIRE_RATE
from voxloop.client.double_talk import DoubleTalkDetector, SpectralShape
from voxloop.codecs.audiofile import load_audio
from voxloop.codecs.pcm import rms_dbfs


@pytest.fixture(scope="module")
def ears():
    return ServerEars()


@pytest.fixture(scope="module")
def assistant(clips):
    """Stands in for a reply: a long clip of another speaker."""
    return load_audio(clips["jfk"].path, WIRE_RATE)


@pytest.fixture(scope="module")
def user(clips):
    return load_audio(clips["1089-134691-0001"].path, WIRE_RATE)


@pytest.mark.parametrize("cut_in_s", [0.1, 1.0])
def test_the_user_over_a_reply_on_headphones_is_heard_as_without_a_canceller(ears, assistant, user, cut_in_s):
    played, mic, user_start = session(assistant, user, HEADPHONES, cut_in_s, seed=1)
    onset = ears.onset_s(user, seed=1)
    extra_ms = {}
    for double_talk in (False, True):
        canceller = EchoCanceller(WIRE_RATE, double_talk=double_talk)
        sent = through(canceller, played, mic)
        fired = ears.speech_started_s(sent, after_s=user_start)
        assert fired is not None or not double_talk, "the barge-in was never heard"
        extra_ms[double_talk] = None if fired is None else 1000 * (fired - user_start - onset)
    print(f"cut in at {cut_in_s} s: heard later than on a silent speaker by {extra_ms[True]:.0f} ms "
          f"({extra_ms[False]} ms through AEC3 alone); echo path measured at {canceller.echo_path_db} dB")
    if cut_in_s >= 1.0:
        # A second of the reply is evidence enough that nothing comes back: heard as with no canceller.
        assert extra_ms[True] <= 100
        speaking = slice(int(user_start * WIRE_RATE), int(user_start * WIRE_RATE) + 4 * WIRE_RATE)
        assert rms_dbfs(sent[speaking]) >= rms_dbfs(mic[speaking]) - 1.5  # the user's voice kept its level
        assert canceller.echo_path_db < -35
    else:
        # 0.1 s in, the echo path is still unknown and the detector is as cautious as AEC3; never more so.
        assert extra_ms[False] is None or extra_ms[True] <= extra_ms[False]


@pytest.mark.parametrize("path", [LAPTOP, ROOM], ids=lambda p: p.name)
def test_the_echo_alone_never_passes_for_the_user(ears, assistant, path):
    played, mic, _ = session(assistant, None, path, 0.0, seed=2)
    assert ears.speech_started_s(mic) is not None  # the echo is strong enough to cut in without a canceller
    canceller = EchoCanceller(WIRE_RATE)
    sent = through(canceller, played, mic)
    alone = through(EchoCanceller(WIRE_RATE, double_talk=False), played, mic)
    print(f"{path.name}: echo path measured at {canceller.echo_path_db} dB, {canceller.bypassed_frames} frames bypassed")
    assert canceller.bypassed_frames == 0
    assert abs(canceller.echo_path_db - path.gain_db) <= 6
    # Whatever AEC3 lets through on its own (a reverberant room can beat it), nothing more gets through.
    assert ears.speech_started_s(sent) == ears.speech_started_s(alone)


def test_echo_that_appears_mid_session_is_caught(ears, assistant, clips):
    """Headphones, then the speaker: the coupling learnt on headphones is far too low for the new path."""
    second = load_audio(clips["p301_102"].path, WIRE_RATE)
    played, mic, second_starts = path_change(assistant, second, seed=3)
    assert ears.speech_started_s(mic, after_s=second_starts) is not None
    canceller = EchoCanceller(WIRE_RATE)
    frame = WIRE_RATE // 100
    sent, bypassed_levels = [], []
    for start in range(0, mic.size - frame + 1, frame):
        before = canceller.bypassed_frames
        canceller.far_end(played[start:start + frame])
        sent.append(canceller.process(mic[start:start + frame]))
        if canceller.bypassed_frames > before:
            bypassed_levels.append(rms_dbfs(mic[start:start + frame]))
    sent = np.concatenate(sent)
    alone = through(EchoCanceller(WIRE_RATE, double_talk=False), played, mic)
    print(f"after the change: echo path measured at {canceller.echo_path_db} dB; {len(bypassed_levels)} frames "
          f"bypassed, the loudest at {max(bypassed_levels, default=-120):.0f} dBFS; speech_started at "
          f"{ears.speech_started_s(sent, after_s=second_starts)} s (AEC3 alone: {ears.speech_started_s(alone, after_s=second_starts)} s)")
    assert canceller.echo_path_db > -15  # relearnt
    # Until the level evidence catches up, the echo of the recording's quiet lead-in (room noise, -45 dBFS
    # at the speaker) can pass: it looks like no voice. Its speech looks like the speaker and cannot.
    assert max(bypassed_levels, default=-120) < -45
    assert ears.speech_started_s(sent, after_s=second_starts) == ears.speech_started_s(alone, after_s=second_starts)


def test_the_coupling_is_measured_per_path(assistant):
    for path, expected_db in ((LAPTOP, -6.0), (HEADPHONES, None)):
        played, mic, _ = session(assistant, None, path, 0.0, seed=4)
        detector = DoubleTalkDetector(WIRE_RATE)
        frame = detector.frame
        for start in range(0, mic.size - frame + 1, frame):
            detector.far_frame(played[start:start + frame])
            detector.near_end(mic[start:start + frame])
        if expected_db is None:
            assert detector.coupling_db < -35, detector.coupling_db  # only the mic's noise comes back
        else:
            # A low percentile of frame-level ratios: a little under the path's gain, never above it.
            assert expected_db - 8 < detector.coupling_db <= expected_db + 1, detector.coupling_db


def test_an_echo_looks_like_the_speaker_and_another_voice_does_not(assistant, user):
    frame = WIRE_RATE // 100
    far, same_path, other = SpectralShape(WIRE_RATE, frame), SpectralShape(WIRE_RATE, frame), SpectralShape(WIRE_RATE, frame)
    echo = LAPTOP.echo(assistant)
    delay_frames = round(LAPTOP.delay_ms / 10)
    far_shapes, echo_likeness, other_likeness = [], [], []
    for i in range(3 * WIRE_RATE // frame):
        piece = slice(i * frame, (i + 1) * frame)
        far_shapes.append(far.push(assistant[piece]))
        heard, stranger = same_path.push(echo[piece]), other.push(user[piece])
        if i >= delay_frames + 3 and rms_dbfs(assistant[piece]) > -40 and rms_dbfs(user[piece]) > -40:
            echo_likeness.append(float(heard @ far_shapes[i - delay_frames]))
            other_likeness.append(float(stranger @ far_shapes[i - delay_frames]))
    assert np.median(echo_likeness) > 0.9
    assert np.median(other_likeness) < 0.6
