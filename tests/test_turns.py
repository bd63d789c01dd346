from voxloop.voice.turns import SpeechStarted, SpeechStopped, TurnDetectionConfig, TurnDetector

FRAME_MS = 32.0


def run(probabilities, **config):
    detector = TurnDetector(TurnDetectionConfig(**config), FRAME_MS)
    return [(i, e) for i, p in enumerate(probabilities) if (e := detector.process(p)) is not None]


def test_speech_then_silence_gives_start_and_stop_at_the_right_times():
    probs = [0.0] * 10 + [0.9] * 30 + [0.0] * 30
    events = run(probs, silence_duration_ms=320, min_speech_ms=96)
    assert [type(e) for _, e in events] == [SpeechStarted, SpeechStopped]
    (start_frame, started), (stop_frame, stopped) = events
    assert started.audio_start_ms == 10 * FRAME_MS  # the run's start, not when it was confirmed
    assert start_frame == 12  # confirmed after 96 ms = 3 frames
    assert stopped.audio_end_ms == 40 * FRAME_MS
    assert stop_frame == 40 + 10 - 1  # confirmed after 320 ms = 10 frames of silence


def test_a_click_shorter_than_min_speech_is_ignored():
    assert run([0.0] * 5 + [0.95] * 3 + [0.0] * 40, min_speech_ms=160) == []


def test_a_pause_shorter_than_the_silence_duration_keeps_the_turn_open():
    probs = [0.9] * 20 + [0.1] * 10 + [0.9] * 20 + [0.0] * 30
    events = run(probs, silence_duration_ms=500, min_speech_ms=64)
    assert [type(e) for _, e in events] == [SpeechStarted, SpeechStopped]
    assert events[1][1].audio_end_ms == 50 * FRAME_MS


def test_hysteresis_keeps_speech_open_just_below_threshold():
    probs = [0.9] * 10 + [0.4] * 40 + [0.0] * 20
    events = run(probs, threshold=0.5, silence_duration_ms=320, min_speech_ms=64)
    assert events[1][1].audio_end_ms == 50 * FRAME_MS


def test_silence_ms_reports_the_current_pause():
    detector = TurnDetector(TurnDetectionConfig(min_speech_ms=32, silence_duration_ms=1000), FRAME_MS)
    for p in [0.9, 0.9, 0.0, 0.0, 0.0]:
        detector.process(p)
    assert detector.in_speech and detector.silence_ms == 3 * FRAME_MS
