"""Shared fixtures: the speech clips, and one real `voxloop serve` on the embedded models."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxloop.bench.server_process import ServerProcess, start_server
from voxloop.bench.speech import Clip, clip as find_clip

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="session")
def server() -> ServerProcess:
    running = start_server([], ARTIFACTS)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def torch_one_thread():
    """Small torch ops on a shared 2-core machine: a second intra-op thread mostly waits on the
    first whenever another process holds a core (single calls measured 20x slower under load)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


QUESTION_CLIP, ANSWER_CLIP = "arctic_a0039_1592747680", "arctic_a0024"


@pytest.fixture(scope="module")
def speech_pair(tmp_path_factory):
    """A conversation pair for the native path: half a second of one speaker asking
    (user.wav), half a second of another answering (reply.wav), at 24 kHz."""
    from voxloop.codecs.audiofile import load_audio, save_audio

    folder = tmp_path_factory.mktemp("pair")
    user, reply = folder / "user.wav", folder / "reply.wav"
    save_audio(user, load_audio(find_clip(QUESTION_CLIP).path, 24000)[:12000], 24000)
    save_audio(reply, load_audio(find_clip(ANSWER_CLIP).path, 24000)[:12000], 24000)
    return user, reply


@pytest.fixture(scope="session")
def clips() -> dict[str, Clip]:
    names = ["jfk", "arctic_a0039_1592747680", "p301_102", "1089-134691-0001", "arctic_a0024", "p301_410", "3752-4944-0000"]
    return {name: find_clip(name) for name in names}
