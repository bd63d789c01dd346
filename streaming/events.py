"""Builders for the Realtime API (GA) server events and the objects inside them.

Only shapes live here; when and why an event is sent is the voice layer's business.
Field names follow the GA API so the official SDK parses them into its typed models.
"""

from __future__ import annotations

import secrets
from typing import Any

Event = dict[str, Any]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def error(message: str, code: str, *, param: str | None = None, client_event_id: str | None = None,
          error_type: str = "invalid_request_error") -> Event:
    return {"type": "error", "error": {"type": error_type, "code": code, "message": message,
                                       "param": param, "event_id": client_event_id}}


def user_item(item_id: str, *, transcript: str | None = None, text: str | None = None, status: str = "completed") -> Event:
    if text is not None:
        content = [{"type": "input_text", "text": text}]
    else:
        content = [{"type": "input_audio", "transcript": transcript}]
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "user", "status": status, "content": content}


def assistant_item(item_id: str, *, transcript: str = "", status: str = "in_progress") -> Event:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant", "status": status,
            "content": [{"type": "output_audio", "transcript": transcript}]}


def message_item(item_id: str, role: str, text: str) -> Event:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": role, "status": "completed",
            "content": [{"type": kind, "text": text}]}


def response_object(response_id: str, *, status: str, output: list[Event] | None = None,
                    status_reason: str | None = None, voice: str | None = None, extension: dict | None = None) -> Event:
    response: Event = {
        "id": response_id, "object": "realtime.response", "status": status,
        "status_details": None if status_reason is None else {"type": status, "reason": status_reason},
        "output": output or [], "output_modalities": ["audio"], "conversation_id": "conv_default",
        "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": voice}},
        "usage": None, "metadata": None,
    }
    if extension is not None:
        response["voxloop"] = extension
    return response


def audio_part_event(kind: str, response_id: str, item_id: str, **fields: Any) -> Event:
    """The events addressed to the one audio content part of a response's one output item."""
    return {"type": kind, "response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0, **fields}
