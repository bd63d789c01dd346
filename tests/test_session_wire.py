"""`session.update` parsing and the session object sent back, without a server."""

import pytest

from voxloop.streaming.session_wire import SessionUpdateError, apply_session_update, session_object
from voxloop.voice.config import SessionConfig


def turn_update(**fields) -> dict:
    return {"audio": {"input": {"turn_detection": {"type": "server_vad", **fields}}}}


def echoed_turn_detection(config: SessionConfig) -> dict:
    wire = session_object("sess_1", config, model="m", voice="v", transcription_model="t")
    return wire["audio"]["input"]["turn_detection"]


def test_every_turn_detection_extension_can_be_set_and_is_echoed():
    config = apply_session_update(SessionConfig(), turn_update(
        unfinished_rule="evidence", sentence_end_threshold=0.05, end_after_judgment=False, eager_after_ms=0,
        unpunctuated_silence_ms=700, silence_duration_ms=400))
    echoed = echoed_turn_detection(config)
    assert echoed["type"] == "server_vad"
    assert (echoed["unfinished_rule"], echoed["sentence_end_threshold"], echoed["end_after_judgment"]) == ("evidence", 0.05, False)
    assert (echoed["eager_after_ms"], echoed["unpunctuated_silence_ms"], echoed["silence_duration_ms"]) == (0, 700, 400)
    # fields left out keep their values
    assert apply_session_update(config, turn_update(threshold=0.6)).turn_detection.unfinished_rule == "evidence"


@pytest.mark.parametrize("fields", [{"unfinished_rule": "magic"}, {"unfinished_rule": 3}, {"end_after_judgment": "yes"},
                                    {"silence_duration_ms": -1}, {"sentence_end_threshold": "high"}])
def test_bad_turn_detection_values_name_the_field(fields):
    with pytest.raises(SessionUpdateError) as error:
        apply_session_update(SessionConfig(), turn_update(**fields))
    assert error.value.param == f"session.audio.input.turn_detection.{next(iter(fields))}"


def test_manual_turn_taking_is_echoed_as_null():
    assert echoed_turn_detection(apply_session_update(SessionConfig(), {"turn_detection": None})) is None
