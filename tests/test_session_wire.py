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


def semantic_update(**fields) -> dict:
    return {"audio": {"input": {"turn_detection": {"type": "semantic_vad", **fields}}}}


def test_semantic_vad_sets_its_pauses_from_eagerness_and_is_echoed_as_such():
    high = apply_session_update(SessionConfig(), semantic_update(eagerness="high"))
    echoed = echoed_turn_detection(high)
    assert (echoed["type"], echoed["eagerness"]) == ("semantic_vad", "high")
    assert (echoed["finished_silence_ms"], echoed["eager_after_ms"], echoed["unfinished_rule"]) == (200, 64, "llm")
    # Another eagerness starts from its own preset, not from high's settings.
    low = apply_session_update(high, semantic_update(eagerness="low")).turn_detection
    assert (low.finished_silence_ms, low.silence_duration_ms, low.unfinished_silence_ms, low.eager_after_ms) == (0, 800, 1500, 160)
    # auto is server_vad's pauses under the semantic type.
    auto = apply_session_update(SessionConfig(), semantic_update()).turn_detection
    assert (auto.eagerness, auto.silence_duration_ms, auto.finished_silence_ms) == ("auto", 500, 350)


def test_voxloop_extensions_apply_on_top_of_a_semantic_preset_and_persist_until_the_eagerness_changes():
    config = apply_session_update(SessionConfig(), semantic_update(eagerness="high", finished_silence_ms=300))
    assert config.turn_detection.finished_silence_ms == 300
    config = apply_session_update(config, semantic_update(threshold=0.6))  # same type, no eagerness: a field change
    assert (config.turn_detection.finished_silence_ms, config.turn_detection.threshold) == (300, 0.6)
    config = apply_session_update(config, semantic_update(eagerness="medium"))
    assert (config.turn_detection.finished_silence_ms, config.turn_detection.threshold) == (350, 0.5)


def test_back_to_server_vad_drops_the_semantic_preset_and_echoes_no_eagerness():
    semantic = apply_session_update(SessionConfig(), semantic_update(eagerness="high"))
    server = apply_session_update(semantic, turn_update())
    echoed = echoed_turn_detection(server)
    assert echoed["type"] == "server_vad" and "eagerness" not in echoed
    assert (echoed["finished_silence_ms"], echoed["eager_after_ms"]) == (350, 64)


@pytest.mark.parametrize("turn, param", [({"type": "semantic_vad", "eagerness": "eager"}, "eagerness"),
                                         ({"type": "push_to_talk"}, "type")])
def test_an_unknown_type_or_eagerness_is_refused_with_its_field(turn, param):
    with pytest.raises(SessionUpdateError) as error:
        apply_session_update(SessionConfig(), {"audio": {"input": {"turn_detection": turn}}})
    assert error.value.param == f"session.audio.input.turn_detection.{param}"
