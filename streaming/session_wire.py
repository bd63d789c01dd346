"""`session.update` in, the session object of `session.created`/`session.updated` out.

Both the GA shape (`session.audio.input.turn_detection`, `session.audio.output.voice`) and the
beta shape (`session.turn_detection`, `session.voice`) are accepted; the GA shape is sent.
"""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from typing import Any

from voxloop.voice.config import SessionConfig
from voxloop.voice.turns import EAGERNESS, TURN_DETECTION_TYPES, UNFINISHED_RULES, TurnDetectionConfig, semantic_vad


class SessionUpdateError(ValueError):
    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


_MISSING = object()
_TURN_FIELDS = {f.name: f.type for f in fields(TurnDetectionConfig)}
_TURN_CHOICES = {"unfinished_rule": UNFINISHED_RULES}  # the fields that take a word


def apply_session_update(config: SessionConfig, session: Any) -> SessionConfig:
    if not isinstance(session, dict):
        raise SessionUpdateError("'session' must be an object", "session")
    audio = session.get("audio") if isinstance(session.get("audio"), dict) else {}
    audio_in = audio.get("input") if isinstance(audio.get("input"), dict) else {}
    audio_out = audio.get("output") if isinstance(audio.get("output"), dict) else {}
    updated = replace(config)

    if (instructions := session.get("instructions")) is not None:
        if not isinstance(instructions, str):
            raise SessionUpdateError("'instructions' must be a string", "session.instructions")
        updated.instructions = instructions

    voice = audio_out.get("voice", session.get("voice"))
    if isinstance(voice, dict):  # GA allows {"id": "..."} for custom voices
        voice = voice.get("id")
    if voice is not None:
        if not isinstance(voice, str):
            raise SessionUpdateError("'voice' must be a string", "session.audio.output.voice")
        updated.voice = voice

    for fmt_key, fmt in (("session.audio.input.format", audio_in.get("format")), ("session.audio.output.format", audio_out.get("format")),
                         ("session.input_audio_format", session.get("input_audio_format")),
                         ("session.output_audio_format", session.get("output_audio_format"))):
        _check_format(fmt, fmt_key)

    turn = audio_in.get("turn_detection", session.get("turn_detection", _MISSING))
    if turn is not _MISSING:
        updated.turn_detection = _parse_turn_detection(turn, config.turn_detection)

    max_tokens = session.get("max_output_tokens", session.get("max_response_output_tokens"))
    if max_tokens is not None:
        if max_tokens == "inf":
            max_tokens = 1024
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise SessionUpdateError("'max_output_tokens' must be a positive integer or 'inf'", "session.max_output_tokens")
        updated.generation = replace(updated.generation, max_tokens=max_tokens)
    if (temperature := session.get("temperature")) is not None:
        if not isinstance(temperature, (int, float)) or not 0.0 <= temperature <= 2.0:
            raise SessionUpdateError("'temperature' must be a number from 0 to 2", "session.temperature")
        updated.generation = replace(updated.generation, temperature=float(temperature))
    if (partials := session.get("partial_transcripts")) is not None:
        updated.partial_transcripts = bool(partials)
    return updated


def _check_format(fmt: Any, param: str) -> None:
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    rate = fmt.get("rate", 24000) if isinstance(fmt, dict) else 24000
    if kind not in ("audio/pcm", "pcm16") or rate != 24000:
        raise SessionUpdateError(f"only 24 kHz pcm16 audio is supported, got {fmt!r}", param)


def _parse_turn_detection(turn: Any, current: TurnDetectionConfig | None) -> TurnDetectionConfig | None:
    if turn is None:
        return None
    if not isinstance(turn, dict):
        raise SessionUpdateError("'turn_detection' must be an object or null", "session.audio.input.turn_detection")
    kind = turn.get("type") or (current.type if current else "server_vad")
    if kind not in TURN_DETECTION_TYPES:
        raise SessionUpdateError(f"turn_detection type {kind!r} is not supported; use 'server_vad', 'semantic_vad' "
                                 "or null", "session.audio.input.turn_detection.type")
    eagerness = turn.get("eagerness")
    if kind == "semantic_vad" and eagerness is not None and eagerness not in EAGERNESS:
        raise SessionUpdateError(f"turn_detection.eagerness must be one of {', '.join(EAGERNESS)}, not {eagerness!r}",
                                 "session.audio.input.turn_detection.eagerness")
    # A new type or a new eagerness starts from that preset; otherwise the fields given change
    # the current settings one by one.
    if current is not None and current.type == kind and (kind == "server_vad" or eagerness in (None, current.eagerness)):
        config = replace(current)
    else:
        config = semantic_vad(eagerness or "auto") if kind == "semantic_vad" else TurnDetectionConfig()
    for name, value in turn.items():
        if name in ("type", "idle_timeout_ms", "eagerness") or value is None:
            continue
        param = f"session.audio.input.turn_detection.{name}"
        if name not in _TURN_FIELDS:
            raise SessionUpdateError(f"unknown turn_detection field {name!r}", param)
        if name in _TURN_CHOICES:
            if value not in _TURN_CHOICES[name]:
                raise SessionUpdateError(f"turn_detection.{name} must be one of {', '.join(_TURN_CHOICES[name])}, "
                                         f"not {value!r}", param)
            setattr(config, name, value)
            continue
        expected = bool if _TURN_FIELDS[name] == "bool" else (float if _TURN_FIELDS[name] == "float" else int)
        ok = isinstance(value, bool) if expected is bool else isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or (expected is not bool and value < 0) or (name == "threshold" and value > 1):
            raise SessionUpdateError(f"invalid turn_detection.{name}: {value!r}", param)
        setattr(config, name, expected(value))
    return config


def session_object(session_id: str, config: SessionConfig, *, model: str, voice: str, transcription_model: str) -> dict[str, Any]:
    turn = config.turn_detection
    turn_wire = None
    if turn is not None:
        turn_wire = asdict(turn)  # the extensions too, as set
        if turn.type != "semantic_vad":
            del turn_wire["eagerness"]
    pcm = {"type": "audio/pcm", "rate": 24000}
    return {
        "type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
        "output_modalities": ["audio"], "instructions": config.instructions,
        "max_output_tokens": config.generation.max_tokens,
        "audio": {
            "input": {"format": pcm, "transcription": {"model": transcription_model}, "turn_detection": turn_wire,
                      "noise_reduction": None},
            "output": {"format": pcm, "voice": voice, "speed": 1.0},
        },
        "partial_transcripts": config.partial_transcripts,
    }
