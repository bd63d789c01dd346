"""The live screen fits a plain 80-column terminal and shows what it must; the key reader works on a real
pseudo-terminal and gives the terminal back as it found it."""

from __future__ import annotations

import os
import pty
import termios
import threading
import time

import pytest
from rich.console import Console

from voxloop.client.keys import KeyReader
from voxloop.client.mic_ui import finished_turn, level_meter, live_view
from voxloop.client.talk_state import TalkState, Turn

TIMINGS = {"reference": "speech_stopped", "transcript_final_ms": 312.4, "llm_first_token_ms": 420.0,
           "tts_first_audio_ms": 610.2, "first_audio_sent_ms": 611.0, "llm_done_ms": 900.0}


def render(renderable, width: int = 80) -> list[str]:
    console = Console(width=width, record=True, color_system=None, file=open(os.devnull, "w"))
    console.print(renderable)
    return console.export_text().splitlines()


def flat(lines: list[str]) -> str:
    """The rendered words with line wrapping undone."""
    return " ".join(" ".join(lines).split())


def busy_state() -> TalkState:
    state = TalkState(connection="connected", level_dbfs=-23.0, push_to_talk=False)
    long_answer = "It was the best of times, it was the worst of times, it was the age of wisdom, " * 3
    done = Turn(user_text="What is the weather like on the coast today?", user_final=True, response_id="r1",
                assistant_text=long_answer, status="completed", latency_ms=1234.0, speech_end_source="mic level",
                server_timings=TIMINGS, finished=True)
    live = Turn(user_text="and what about tomorrow", user_final=False, response_id=None)
    state.turns = [done, live]
    state.user_speaking = True
    state.notify("server error: something went wrong")
    return state


def test_live_view_fits_80_columns_and_shows_everything():
    lines = render(live_view(busy_state()))
    assert max(len(line) for line in lines) <= 80
    text = flat(lines)
    for expected in ("connected", "mic live", "AEC on", "-23 dB", "you are speaking", "and what about tomorrow",
                     "1234 ms voice-to-voice", "asr 312", "llm 420", "tts 610", "q quit", "m mute",
                     "something went wrong"):
        assert expected in text, expected


def test_finished_turn_wraps_inside_80_columns():
    state = busy_state()
    lines = render(finished_turn(state.turns[0]))
    assert max(len(line) for line in lines) <= 80
    assert lines[0].startswith("you ") and "What is the weather" in lines[0]
    text = flat(lines)
    assert "the age of wisdom" in text and "1234 ms voice-to-voice (end of speech by mic level)" in text


def test_an_interrupted_turn_says_so():
    turn = Turn(user_text="hi", user_final=True, response_id="r", assistant_text="Well, let me", status="cancelled",
                heard_ms=1500.0, latency_ms=900.0, speech_end_source="server VAD", finished=True)
    text = flat(render(finished_turn(turn)))
    assert "you cut in after 1.5 s" in text and "server VAD" in text


def test_connection_lost_and_push_to_talk_states():
    state = TalkState(connection="disconnected: the server closed the connection", mic="idle", push_to_talk=True,
                      keys=True, aec=False)
    text = flat(render(live_view(state)))
    assert "disconnected: the server closed the connection" in text
    assert "idle (space to talk)" in text and "space talk/send" in text and "AEC off" in text


def test_the_measured_echo_path_is_shown():
    assert "AEC on (echo -12 dB)" in flat(render(live_view(TalkState(echo_path_db=-12.4))))
    assert "AEC on" in flat(render(live_view(TalkState()))) and "echo" not in flat(render(live_view(TalkState())))


def test_level_meter_scale():
    assert level_meter(-120).plain.startswith("░" * 16)
    assert level_meter(0).plain.startswith("█" * 16)
    assert level_meter(-35).plain.startswith("█" * 8 + "░" * 8)


def test_key_reader_reads_single_keys_and_restores_the_terminal():
    controller, terminal = pty.openpty()
    try:
        before = termios.tcgetattr(terminal)
        keys: list[str] = []
        got_two = threading.Event()

        def on_key(key: str) -> None:
            keys.append(key)
            if len(keys) == 2:
                got_two.set()

        reader = KeyReader(on_key, terminal)
        assert reader.available
        with reader:
            during = termios.tcgetattr(terminal)
            assert not during[3] & termios.ICANON and not during[3] & termios.ECHO  # cbreak: no Enter, no echo
            assert during[3] & termios.ISIG  # Ctrl-C still interrupts
            os.write(controller, b"m ")
            assert got_two.wait(2)
        assert keys == ["m", " "]
        assert termios.tcgetattr(terminal) == before
    finally:
        os.close(controller)
        os.close(terminal)


def test_key_reader_refuses_a_non_terminal(tmp_path):
    with open(tmp_path / "not-a-tty", "w+") as handle:
        reader = KeyReader(lambda key: None, handle)
        assert not reader.available
        with pytest.raises(RuntimeError, match="terminal"):
            reader.start()
        reader.stop()  # harmless when never started


def test_key_reader_stops_promptly():
    controller, terminal = pty.openpty()
    try:
        reader = KeyReader(lambda key: None, terminal)
        reader.start()
        started = time.monotonic()
        reader.stop()
        assert time.monotonic() - started < 0.5
    finally:
        os.close(controller)
        os.close(terminal)


def test_notices_fade_after_a_while():
    state = TalkState(connection="connected")
    state.notices.append((time.monotonic() - 60, "an old error"))
    state.notify("a fresh error")
    text = flat(render(live_view(state)))
    assert "a fresh error" in text and "an old error" not in text
