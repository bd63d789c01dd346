"""A small Realtime-protocol client over websockets, shared by `talk` and the benchmark."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import websockets

from voxloop.codecs.pcm import encode_base64_pcm16

DEFAULT_URL = "ws://127.0.0.1:8765/v1/realtime"


class RealtimeClient:
    def __init__(self, url: str = DEFAULT_URL):
        self.url = url
        self._ws = None

    async def __aenter__(self) -> RealtimeClient:
        try:
            self._ws = await websockets.connect(self.url, max_size=None, compression=None, open_timeout=10)
        except OSError as exc:
            raise ConnectionError(f"cannot reach the voxloop server at {self.url}: {exc}. Is `voxloop serve` running?") from exc
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._ws.close()

    async def send(self, event: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(event))

    async def send_raw(self, message: str | bytes) -> None:
        """One websocket frame exactly as given (what `send` does after encoding the event)."""
        await self._ws.send(message)

    def abort(self) -> None:
        """Drop the connection without a close handshake, as a crashed client or a lost network does."""
        self._ws.transport.abort()

    async def append_audio(self, samples_24k: np.ndarray) -> None:
        await self.send({"type": "input_audio_buffer.append", "audio": encode_base64_pcm16(samples_24k)})

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        async for message in self._ws:
            yield json.loads(message)

    async def recv(self, timeout: float) -> dict[str, Any] | None:
        """The next server event, or None if none came within `timeout` seconds.
        (Cancelling a websockets recv() loses no data.)"""
        try:
            return json.loads(await asyncio.wait_for(self._ws.recv(), timeout))
        except asyncio.TimeoutError:
            return None
