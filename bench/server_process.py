"""Starting and stopping a `voxloop serve` subprocess on a free loopback port."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ServerProcess:
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

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], log_dir: Path, name: str = "server", startup_timeout_s: float = 300,
                 port: int | None = None) -> ServerProcess:
    """`voxloop serve ARGS` on `port` (default: a free one); returns once /health answers
    (models loaded and warm)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    # A variant named by its serve arguments can be long; file names cannot.
    log_path = log_dir / f"{name[:80]}-{port}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "voxloop.client.cli", "-v", "serve", "--port", str(port), *args],
                                   stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess("127.0.0.1", port, log_path, process)
    deadline = time.monotonic() + startup_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"voxloop serve {' '.join(args)} exited with {process.returncode}:\n{server.log()[-3000:]}")
        try:
            server.health()
            return server
        except OSError:
            time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"voxloop serve did not come up in {startup_timeout_s} s:\n{server.log()[-3000:]}")
