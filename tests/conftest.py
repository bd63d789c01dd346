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


@pytest.fixture(scope="session")
def clips() -> dict[str, Clip]:
    names = ["jfk", "arctic_a0039_1592747680", "p301_102", "1089-134691-0001", "arctic_a0024"]
    return {name: find_clip(name) for name in names}
