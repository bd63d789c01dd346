"""The Realtime protocol over one websocket: validate client events, hand them to the voice
session, and send its server events.

Every malformed or impossible request is answered with an `error` event that names the
client's `event_id`, and the connection carries on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from voxloop.codecs.pcm import AudioFormatError, decode_base64_pcm16
from voxloop.streaming import events as ev
from voxloop.streaming.session_wire import SessionUpdateError, apply_session_update, session_object
from voxloop.voice.history import ConversationItem
from voxloop.voice.session import SessionError, VoiceSession

log = logging.getLogger(__name__)

# Client events larger than this are refused with an error event (the Realtime API's own
# limit for one append is 15 MiB). The websocket layer closes the connection only past
# MAX_FRAME_BYTES, to bound memory against a client that sends without limit.
MAX_EVENT_BYTES = 4 * 1024 * 1024
MAX_FRAME_BYTES = 32 * 1024 * 1024

# Beta names of client events, accepted as aliases of their GA names.
_ALIASES = {"conversation.item.added": "conversation.item.create"}
# Server events a beta client (`OpenAI-Beta: realtime=v1`) knows by other names; the payloads match.
BETA_EVENT_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "conversation.item.added": "conversation.item.created",
}


class ProtocolError(Exception):
    def __init__(self, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param


class RealtimeConnection:
    def __init__(self, websocket: ServerConnection, session_factory: Callable[[Callable[[dict], Awaitable[None]]], VoiceSession],
                 model_name: str, transcription_model: str):
        self.websocket = websocket
        self.session = session_factory(self.send)
        self.session_id = ev.new_id("sess")
        self.model_name = model_name
        self.transcription_model = transcription_model
        self.closed = False
        request = getattr(websocket, "request", None)
        self.beta = request is not None and "realtime=v1" in request.headers.get("OpenAI-Beta", "")
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": lambda e: self.session.commit_audio(),
            "input_audio_buffer.clear": lambda e: self.session.clear_audio(),
            "conversation.item.create": self._item_create,
            "conversation.item.retrieve": lambda e: self.session.retrieve_item(_field(e, "item_id", str)),
            "conversation.item.delete": lambda e: self.session.delete_item(_field(e, "item_id", str)),
            "conversation.item.truncate": self._truncate,
            "response.create": self._response_create,
            "response.cancel": lambda e: self.session.cancel_response(),
            "output_audio_buffer.clear": self._output_clear,
        }

    async def send(self, event: dict[str, Any]) -> None:
        """Send one server event. A vanished client is not an error here: the receive loop
        notices the close and tears the session down."""
        if self.closed:
            return
        event.setdefault("event_id", ev.new_id("event"))
        if self.beta:
            event["type"] = BETA_EVENT_NAMES.get(event["type"], event["type"])
        try:
            await self.websocket.send(json.dumps(event))
        except ConnectionClosed:
            self.closed = True

    async def run(self) -> None:
        await self.send({"type": "session.created", "session": self._session_object()})
        try:
            async for message in self.websocket:
                await self.handle_message(message)
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            await self.session.close()

    async def handle_message(self, message: str | bytes) -> None:
        client_event_id = None
        try:
            if isinstance(message, bytes):
                raise ProtocolError("binary frames are not part of the protocol; send JSON text events", "invalid_message")
            if len(message) > MAX_EVENT_BYTES:
                raise ProtocolError(f"event of {len(message)} bytes exceeds the {MAX_EVENT_BYTES}-byte limit; "
                                    "send audio in smaller appends", "message_too_large")
            try:
                event = json.loads(message)
            except json.JSONDecodeError as exc:
                raise ProtocolError(f"event is not valid JSON: {exc}", "invalid_json") from None
            if not isinstance(event, dict):
                raise ProtocolError("event must be a JSON object", "invalid_event")
            client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            kind = event.get("type")
            if not isinstance(kind, str):
                raise ProtocolError("event has no 'type' string", "missing_required_parameter", "type")
            handler = self._handlers.get(_ALIASES.get(kind, kind))
            if handler is None:
                raise ProtocolError(f"unknown event type {kind!r}", "unknown_event_type", "type")
            await handler(event)
        except (ProtocolError, SessionError, SessionUpdateError) as exc:
            await self.send(ev.error(str(exc), getattr(exc, "code", "invalid_value"), param=getattr(exc, "param", None),
                                     client_event_id=client_event_id))
        except Exception as exc:  # a bug of ours must not end the user's conversation
            log.exception("error while handling a client event")
            await self.send(ev.error(f"internal error: {exc}", "internal_error", client_event_id=client_event_id,
                                     error_type="server_error"))

    def _session_object(self) -> dict[str, Any]:
        config = self.session.config
        session = session_object(self.session_id, config, model=self.model_name, voice=config.voice or self.session.default_voice,
                                 transcription_model=self.transcription_model)
        if extension := self.session.wire_extension():
            session["voxloop"] = extension
        return session

    # ----------------------------------------------------------------- handlers

    async def _session_update(self, event: dict[str, Any]) -> None:
        self.session.update_config(apply_session_update(self.session.config, _field(event, "session", dict)))
        await self.send({"type": "session.updated", "session": self._session_object()})

    async def _append(self, event: dict[str, Any]) -> None:
        try:
            samples = decode_base64_pcm16(_field(event, "audio", str))
        except AudioFormatError as exc:
            raise ProtocolError(str(exc), "invalid_audio", "audio") from None
        await self.session.append_audio(samples)

    async def _item_create(self, event: dict[str, Any]) -> None:
        item = _field(event, "item", dict)
        if item.get("type", "message") != "message":
            raise ProtocolError(f"item type {item.get('type')!r} is not supported; only 'message'", "invalid_value", "item.type")
        role = item.get("role")
        if role not in ("user", "assistant", "system"):
            raise ProtocolError("item.role must be 'user', 'assistant' or 'system'", "invalid_value", "item.role")
        content = item.get("content")
        if not isinstance(content, list) or not content:
            raise ProtocolError("item.content must be a non-empty list", "missing_required_parameter", "item.content")
        texts = []
        for part in content:
            text = part.get("text", part.get("transcript")) if isinstance(part, dict) else None
            if not isinstance(text, str):
                raise ProtocolError("each content part needs a 'text' string (audio content is not supported in items; "
                                    "stream it with input_audio_buffer.append)", "invalid_value", "item.content")
            texts.append(text)
        item_id = item.get("id") if isinstance(item.get("id"), str) else ev.new_id("item")
        if self.session.conversation.get(item_id):
            raise ProtocolError(f"an item with id {item_id!r} already exists", "invalid_value", "item.id")
        text = " ".join(texts)
        await self.session.add_item(ConversationItem(item_id, role, text), ev.message_item(item_id, role, text))

    async def _truncate(self, event: dict[str, Any]) -> None:
        audio_end_ms = _field(event, "audio_end_ms", int)
        if audio_end_ms < 0:
            raise ProtocolError("audio_end_ms must not be negative", "invalid_value", "audio_end_ms")
        await self.session.truncate(_field(event, "item_id", str), event.get("content_index", 0), audio_end_ms)

    async def _response_create(self, event: dict[str, Any]) -> None:
        response = event.get("response") or {}
        if not isinstance(response, dict):
            raise ProtocolError("'response' must be an object", "invalid_value", "response")
        instructions = response.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise ProtocolError("response.instructions must be a string", "invalid_value", "response.instructions")
        await self.session.create_response(instructions)

    async def _output_clear(self, event: dict[str, Any]) -> None:
        # Audio already sent is the client's to drop; what is still to come stops with the reply.
        if self.session.response_active:
            await self.session.cancel_response()
        await self.send({"type": "output_audio_buffer.cleared"})


def _field(event: dict[str, Any], name: str, kind: type) -> Any:
    if name not in event:
        raise ProtocolError(f"missing required field {name!r}", "missing_required_parameter", name)
    value = event[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"field {name!r} must be of type {kind.__name__}", "invalid_value", name)
    return value
