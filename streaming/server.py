"""The voxloop server: Realtime websockets at /v1/realtime, the browser client's static files
at /, and a /health probe, all on one port."""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import os
import threading
from collections.abc import Callable
from http import HTTPStatus
from importlib import resources
from pathlib import Path

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from voxloop.streaming.realtime import MAX_FRAME_BYTES, RealtimeConnection
from voxloop.voice.session import VoiceSession

log = logging.getLogger(__name__)

REALTIME_PATHS = ("/v1/realtime", "/realtime")


def _web_root() -> Path:
    return Path(str(resources.files("voxloop.client").joinpath("web")))


class VoxloopServer:
    def __init__(self, session_factory: Callable[..., VoiceSession], model_name: str, transcription_model: str):
        self.session_factory = session_factory
        self.model_name = model_name
        self.transcription_model = transcription_model
        self.connections: set[RealtimeConnection] = set()
        self.web_root = _web_root()

    async def start(self, host: str, port: int) -> Server:
        return await serve(self._handle, host, port, process_request=self._process_request,
                           max_size=MAX_FRAME_BYTES, compression=None, ping_interval=20, ping_timeout=20)

    async def _handle(self, websocket: ServerConnection) -> None:
        connection = RealtimeConnection(websocket, self.session_factory, self.model_name, self.transcription_model)
        self.connections.add(connection)
        log.info("session %s opened from %s", connection.session_id, websocket.remote_address)
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)
            log.info("session %s closed", connection.session_id)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path in REALTIME_PATHS:
            return None  # websocket handshake; websockets answers 426 to plain HTTP itself
        if path == "/health":
            body = {"status": "ok", "sessions": len(self.connections), "threads": threading.active_count(),
                    "tasks": len(asyncio.all_tasks()), "rss_mb": round(_rss_mb(), 1), "model": self.model_name}
            return _response(HTTPStatus.OK, json.dumps(body).encode(), "application/json")
        return self._static(path)

    def _static(self, path: str) -> Response:
        relative = "index.html" if path in ("", "/") else path.lstrip("/")
        root = self.web_root.resolve()
        target = (root / relative).resolve()
        if root not in target.parents or not target.is_file():
            return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return _response(HTTPStatus.OK, target.read_bytes(), content_type)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux
        return float("nan")


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-cache")])
    return Response(status.value, status.phrase, headers, body)
