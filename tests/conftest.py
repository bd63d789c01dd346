"""Shared fixtures: the speech clips, and one real `voxloop serve` on the embedded models."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from voxloop.bench.speech import Clip, clip as find_clip

ARTIFACTS = Path(__file__).parent / "artifacts"


@dataclass
class RunningServer:
    host: str
    port: int
    log_path: Path
    process: subprocess.Popen

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/realtime"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.http_url}/health", timeout=5) as response:
            return json.loads(response.read())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*extra_args: str, name: str = "server", startup_timeout_s: float = 180) -> RunningServer:
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    log_path = ARTIFACTS / f"{name}-{port}.log"
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "-m", "voxloop.client.cli", "-v", "serve", "--port", str(port), *extra_args],
                               stdout=log, stderr=subprocess.STDOUT)
    server = RunningServer("127.0.0.1", port, log_path, process)
    deadline = time.monotonic() + startup_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"voxloop serve exited with {process.returncode}:\n{server.log()}")
        try:
            server.health()
            return server
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"voxloop serve did not come up in {startup_timeout_s} s:\n{server.log()}")


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def server():
    running = start_server()
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def clips() -> dict[str, Clip]:
    names = ["jfk", "arctic_a0039_1592747680", "p301_102", "1089-134691-0001", "arctic_a0024"]
    return {name: find_clip(name) for name in names}
