"""`voxloop serve`'s turn-taking flags become the sessions' default turn detection, and its reply
flags their generation settings."""

from voxloop.client.cli import _generation_settings, _turn_detection, build_parser
from voxloop.voice.llm import GenerationSettings


def turn_detection(*flags: str):
    return _turn_detection(build_parser().parse_args(["serve", *flags]))


def test_without_eagerness_the_flags_make_server_vad():
    config = turn_detection("--silence-ms", "400", "--finished-silence-ms", "250")
    assert (config.type, config.silence_duration_ms, config.finished_silence_ms) == ("server_vad", 400, 250)


def test_eagerness_picks_the_semantic_preset_and_the_flags_given_change_it():
    high = turn_detection("--eagerness", "high")
    assert (high.type, high.eagerness, high.finished_silence_ms, high.eager_after_ms) == ("semantic_vad", "high", 200, 64)
    changed = turn_detection("--eagerness", "high", "--finished-silence-ms", "300", "--silence-ms", "600")
    assert (changed.finished_silence_ms, changed.silence_duration_ms, changed.eager_after_ms) == (300, 600, 64)
    low = turn_detection("--eagerness", "low")
    assert (low.silence_duration_ms, low.unfinished_silence_ms) == (800, 1500)


def test_the_reply_flags_become_the_generation_settings():
    def generation(*flags: str) -> GenerationSettings:
        return _generation_settings(build_parser().parse_args(["serve", *flags]))

    assert generation() == GenerationSettings()
    changed = generation("--cut-early-below-s", "0", "--no-tts-deadlines", "--reply-sentences", "0")
    assert (changed.cut_early_below_s, changed.tts_deadlines, changed.max_sentences) == (0.0, False, None)
