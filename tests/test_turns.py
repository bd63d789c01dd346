from voxloop.voice.turns import SpeechPaused, SpeechResumed, SpeechStarted, SpeechStopped, TurnDetectionConfig, TurnDetector

FRAME_MS = 32.0


def run(probabilities, **config):
    config.setdefault("eager_after_ms", 0)
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


def test_a_short_pause_is_reported_for_speculation_and_withdrawn_when_speech_resumes():
    probs = [0.9] * 20 + [0.0] * 8 + [0.9] * 10 + [0.0] * 20
    events = run(probs, eager_after_ms=160, silence_duration_ms=480, min_speech_ms=64)
    assert [type(e) for _, e in events] == [SpeechStarted, SpeechPaused, SpeechResumed, SpeechPaused, SpeechStopped]
    (_, _), (paused_at, first_pause), (resumed_at, resumed), (_, second_pause), (stopped_at, stopped) = events
    assert paused_at == 20 + 5 - 1 and first_pause.audio_end_ms == 20 * FRAME_MS
    assert resumed_at == 28 and resumed == SpeechResumed(audio_end_ms=20 * FRAME_MS, silence_ms=8 * FRAME_MS)
    assert second_pause.audio_end_ms == stopped.audio_end_ms == 38 * FRAME_MS  # same audio: speculation holds
    assert stopped_at == 38 + 15 - 1


def test_hold_pause_makes_an_unfinished_turn_wait_longer():
    detector = TurnDetector(TurnDetectionConfig(eager_after_ms=96, silence_duration_ms=320, min_speech_ms=32), FRAME_MS)
    events = [detector.process(p) for p in [0.9] * 5 + [0.0] * 3]
    assert isinstance(events[-1], SpeechPaused)
    detector.hold_pause(640)
    later = [detector.process(0.0) for _ in range(17)]  # 3 + 17 frames = 640 ms
    assert isinstance(later[-1], SpeechStopped) and not any(later[:-1])
    # The next pause starts again from the configured hangover.
    events = [detector.process(p) for p in [0.9] * 5 + [0.0] * 10]
    assert isinstance(events[-1], SpeechStopped)


def test_a_hold_shorter_than_the_pause_so_far_ends_the_turn_at_the_next_frame():
    detector = TurnDetector(TurnDetectionConfig(eager_after_ms=96, silence_duration_ms=320, min_speech_ms=32), FRAME_MS)
    events = [detector.process(p) for p in [0.9] * 5 + [0.0] * 6]  # 192 ms into the pause
    assert not any(isinstance(e, SpeechStopped) for e in events)
    detector.hold_pause(128)
    stopped = detector.process(0.0)
    assert isinstance(stopped, SpeechStopped) and stopped.silence_ms == 128


def test_speech_stopped_reports_the_pause_that_ended_the_turn():
    detector = TurnDetector(TurnDetectionConfig(eager_after_ms=96, silence_duration_ms=320, min_speech_ms=32), FRAME_MS)
    events = [detector.process(p) for p in [0.9] * 5 + [0.0] * 20]
    assert [e for e in events if isinstance(e, SpeechStopped)][0].silence_ms == 320
    detector = TurnDetector(TurnDetectionConfig(eager_after_ms=96, silence_duration_ms=320, min_speech_ms=32), FRAME_MS)
    events = [detector.process(p) for p in [0.9] * 5 + [0.0] * 4]
    detector.hold_pause(640)
    events += [detector.process(p) for p in [0.0] * 30]
    assert [e for e in events if isinstance(e, SpeechStopped)][0].silence_ms == 640
