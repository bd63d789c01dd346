"""The browser client (client/web/) in a real headless Chromium against a real `voxloop serve`.

Chromium's fake capture device plays a WAV file as the microphone (and loops it, so every file ends
in enough silence to finish the test first). Everything between that microphone and the speakers
is the real thing: getUserMedia with the browser's audio processing, the capture and playback
AudioWorklets, the websocket, the server's VAD/ASR/LLM/TTS, and the WebRTC loopback output.

Needs Debian's `chromium` (apt-get install -y chromium); Playwright only drives it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from voxloop.bench.server_process import ServerProcess, start_server
from voxloop.bench.speech import Clip, clip as find_clip
from voxloop.bench.wer import word_error_rate
from voxloop.codecs.audiofile import load_audio
from reply_status import HEARD_OUT

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
FAKE_MIC_RATE = 48000
CLIP = "arctic_a0039_1592747680"  # "The ship should be in within a week or ten days." (2.7 s)
MAX_WER = 0.2  # at most 2 of its 10 words wrong, after the browser's noise suppression and gain control
BROWSER_FLAGS = [
    "--use-fake-device-for-media-stream",
    "--no-sandbox", "--disable-gpu",
    # The test machine has no network: without these Chromium keeps trying to reach Google.
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
]

STATS = "() => window.voxloopStats"


def _chromium() -> Path:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium (apt-get install -y chromium)")
    return CHROMIUM


def _fake_microphone(path: Path, utterances: list[Clip], gaps_s: list[float], tail_s: float) -> Path:
    """A WAV for Chromium's fake capture device: half a second of silence, then the utterances with
    `gaps_s` of silence between them, then `tail_s` of silence (the device loops the file)."""
    def silence(seconds: float) -> np.ndarray:
        return np.zeros(int(seconds * FAKE_MIC_RATE), dtype=np.float32)

    parts = [silence(0.5)]
    for index, utterance in enumerate(utterances):
        parts.append(load_audio(utterance.path, FAKE_MIC_RATE))
        parts.append(silence(gaps_s[index] if index < len(gaps_s) else tail_s))
    sf.write(str(path), np.concatenate(parts), FAKE_MIC_RATE, subtype="PCM_16")
    return path


@dataclass
class Tab:
    page: Page
    console: list[str]  # console messages and page errors, for failure reports


@contextmanager
def _browser_tab(microphone: Path | None) -> Iterator[Tab]:
    """A page in headless Chromium. With a microphone file the permission prompt is accepted and
    the file is the microphone; without one the prompt is denied."""
    flags = list(BROWSER_FLAGS)
    if microphone is not None:
        flags += ["--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={microphone}"]
    else:
        flags += ["--deny-permission-prompts"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(_chromium()), args=flags)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 640})
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
            yield Tab(page, console)
        finally:
            browser.close()


def _wait_for(tab: Tab, predicate: str, timeout_s: float, what: str) -> None:
    """Wait until the JS `predicate` holds; on timeout fail with the page's counters and console."""
    page = tab.page
    try:
        page.wait_for_function(predicate, timeout=timeout_s * 1000, polling=200)
    except PlaywrightTimeoutError as exc:
        stats = page.evaluate(STATS)
        console = "\n".join(tab.console[-30:])
        pytest.fail(f"timed out after {timeout_s} s waiting for {what} ({type(exc).__name__})\n"
                    f"voxloopStats: {json.dumps(stats, indent=1)}\nconversation: {page.inner_text('#conversation')}\n"
                    f"console:\n{console}")


def _start_talking(tab: Tab, url: str) -> None:
    tab.page.goto(url)
    tab.page.click("#talk")
    _wait_for(tab, "() => document.querySelector('#connection').dataset.state === 'open'", 20, "the websocket to open")


def _screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path


def test_spoken_turn_shows_transcripts_latency_and_plays_the_reply(server: ServerProcess, tmp_path: Path) -> None:
    spoken = find_clip(CLIP)
    microphone = _fake_microphone(tmp_path / "mic.wav", [spoken], [], tail_s=40.0)
    with _browser_tab(microphone) as tab:
        page = tab.page
        _start_talking(tab, server.http_url)
        _wait_for(tab, "() => document.querySelector('.turn.user.final .text')?.textContent", 45, "the user's final transcript")
        _wait_for(tab, "() => window.voxloopStats.turns.some(t => t.status && t.playedMs !== null)", 60,
                  "the assistant's reply to finish playing")
        stats = page.evaluate(STATS)
        user_text = page.inner_text(".turn.user.final .text")
        assistant_text = page.inner_text(".turn.assistant.final .text")
        latency_chips = page.locator(".turn.assistant .chip.primary").all_inner_texts()
        _screenshot(page, "browser.png")

    wer = word_error_rate(spoken.transcript, user_text)
    assert wer <= MAX_WER, f"transcript {user_text!r} vs reference {spoken.transcript!r}: WER {wer:.2f} > {MAX_WER}"
    assert assistant_text.strip(), "no assistant reply text on the page"
    turn = stats["turns"][0]
    assert turn["status"] in HEARD_OUT and turn["playedMs"] > 500, turn
    # All of the microphone up to the reply went out; the reply's audio was rendered, and it went
    # through the echo-cancelling WebRTC loopback rather than straight to the speakers.
    assert stats["samplesSent"] >= 24000 * spoken.duration_s, stats["samplesSent"]
    assert stats["samplesPlayed"] >= turn["playedMs"] / 1000 * stats["playbackSampleRate"] * 0.99, stats
    assert stats["outputPath"] == "webrtc-loopback", stats["outputPathReason"]
    assert stats["loopbackSamplesReceived"] > 0
    # The assistant's own voice did not open a turn: the file is silent after the one utterance.
    assert stats["speechStarted"] == 1, stats["serverEvents"]
    assert not stats["errors"], stats["errors"]
    # Latency: the server's first-audio time, and the browser's own measure, which can only be later
    # (speech_stopped reaches the page after the server's reference, and playback follows arrival).
    timings = turn["timings"]
    assert timings["reference"] == "speech_stopped" and timings["first_audio_sent_ms"] > 0
    assert timings["first_audio_sent_ms"] - 50 <= turn["clientFirstAudioMs"] <= timings["first_audio_sent_ms"] + 1000, turn
    assert [chip.split()[0] for chip in latency_chips] == ["server", "browser"], latency_chips


def test_without_webrtc_the_reply_plays_directly_and_the_page_says_to_use_headphones(server: ServerProcess,
                                                                                     tmp_path: Path) -> None:
    """The fallback output path: with no RTCPeerConnection the echo-reference loopback cannot be
    built, so playback goes straight to the speakers, and the page says so."""
    spoken = find_clip(CLIP)
    microphone = _fake_microphone(tmp_path / "mic.wav", [spoken], [], tail_s=40.0)
    with _browser_tab(microphone) as tab:
        page = tab.page
        page.add_init_script("delete window.RTCPeerConnection")
        _start_talking(tab, server.http_url)
        _wait_for(tab, "() => window.voxloopStats.turns.some(t => t.status && t.playedMs !== null)", 60,
                  "the assistant's reply to finish playing")
        stats = page.evaluate(STATS)
        output_info = page.inner_text("#output-info")
        output_title = page.get_attribute("#output-info", "title")

    assert stats["outputPath"] == "direct", stats["outputPath"]
    assert "no WebRTC" in stats["outputPathReason"] and "no WebRTC" in output_title, output_title
    assert output_info == "direct output: use headphones"
    turn = stats["turns"][0]
    assert turn["status"] in HEARD_OUT and turn["playedMs"] > 500, turn
    assert stats["samplesPlayed"] >= turn["playedMs"] / 1000 * stats["playbackSampleRate"] * 0.99, stats
    assert stats["loopbackSamplesReceived"] == 0
    assert not stats["errors"], stats["errors"]


def test_barge_in_flushes_playback_and_truncates_to_what_was_played(server: ServerProcess, tmp_path: Path) -> None:
    # The same sentence again and again, the pauses growing: by 0.5 s up to 4 s, then by 1 s up to 9 s.
    # A repeat barges in when it begins while a reply plays, so the pauses must be finer than the
    # shortest reply (over 1 s) from the first one that ends a turn. A fast machine starts playing
    # ~0.6 s after the speech and a short reply ends by ~2.1 s: pauses starting at 2.5 s once missed
    # every reply. A busy machine that starts within 9 s is caught by the later, longer pauses.
    # The test ends at the first barge-in, usually within the first few repeats.
    spoken = find_clip(CLIP)
    gaps_s = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    microphone = _fake_microphone(tmp_path / "mic.wav", [spoken] * (len(gaps_s) + 1), gaps_s, tail_s=40.0)
    with _browser_tab(microphone) as tab:
        page = tab.page
        _start_talking(tab, server.http_url)
        _wait_for(tab, "() => window.voxloopStats.truncations.some(t => t.confirmedMs !== null)", 110,
                  "a barge-in on a playing reply, confirmed by conversation.item.truncated")
        stats = page.evaluate(STATS)
        truncation = next(t for t in stats["truncations"] if t["confirmedMs"] is not None)
        interrupted = page.locator(f".turn.assistant[data-item-id='{truncation['itemId']}'] .chip.warn").inner_text()
        _screenshot(page, "browser-barge-in.png")

    # audio_end_ms is what the worklet rendered before the flush: no more than was received, and the
    # server took it as given.
    assert 0 <= truncation["audioEndMs"] <= truncation["receivedMs"], truncation
    assert truncation["confirmedMs"] == truncation["audioEndMs"], truncation
    assert stats["flushes"] >= 1 and stats["speechStarted"] >= 2, stats
    assert interrupted == f"interrupted after {truncation['audioEndMs'] / 1000:.1f} s"
    assert not stats["errors"], stats["errors"]


def test_denied_microphone_shows_a_clear_message(server: ServerProcess) -> None:
    with _browser_tab(None) as tab:
        page = tab.page
        page.goto(server.http_url)
        page.click("#talk")
        _wait_for(tab, "() => !document.querySelector('#notice').hidden", 15, "the permission notice")
        notice = page.inner_text("#notice")
        assert "Microphone access was denied" in notice and "press Start again" in notice, notice
        assert page.inner_text("#talk-label") == "Start"
        assert page.get_attribute("#connection", "data-state") == "idle"


def test_page_reconnects_after_a_server_restart(tmp_path: Path) -> None:
    first = start_server([], ARTIFACTS, name="browser-restart")
    second = None
    microphone = _fake_microphone(tmp_path / "silence.wav", [], [], tail_s=0)  # a quiet room: no turns
    try:
        with _browser_tab(microphone) as tab:
            page = tab.page
            _start_talking(tab, first.http_url)
            _wait_for(tab, "() => window.voxloopStats.sessionId", 10, "session.created")
            first_session = page.evaluate("() => window.voxloopStats.sessionId")
            first.stop()
            _wait_for(tab, "() => document.querySelector('#connection').dataset.state === 'waiting'", 10,
                      "the page to notice the server is gone")
            assert "retrying in" in page.inner_text("#connection-text")
            second = start_server([], ARTIFACTS, name="browser-restart-again", port=first.port)  # a restart, as the page sees it
            # The longest backoff is 8 s (+20 % jitter), so the page must be back within ~10 s.
            _wait_for(tab, "() => window.voxloopStats.reconnects === 1 && "
                            "document.querySelector('#connection').dataset.state === 'open'", 15, "the reconnect")
            _wait_for(tab, f"() => window.voxloopStats.sessionId && window.voxloopStats.sessionId !== '{first_session}'", 5,
                      "the new session")
            sent_before = page.evaluate("() => window.voxloopStats.samplesSent")
            time.sleep(1.0)
            assert page.evaluate("() => window.voxloopStats.samplesSent") > sent_before + 12000, "no audio after the reconnect"
            assert "Reconnected" in page.inner_text("#conversation .divider")
            assert second.health()["sessions"] == 1
            # Stop ends the session for good: no reconnect follows a close the user asked for.
            page.click("#talk")
            _wait_for(tab, "() => document.querySelector('#connection').dataset.state === 'idle'", 5, "the page to stop")
            deadline = time.monotonic() + 5
            while second.health()["sessions"] and time.monotonic() < deadline:
                time.sleep(0.2)
            assert second.health()["sessions"] == 0
            time.sleep(1.5)  # longer than the first retry delay
            assert second.health()["sessions"] == 0 and page.evaluate("() => window.voxloopStats.reconnects") == 1
    finally:
        if second is not None:
            second.stop()
        if first.process.poll() is None:
            first.stop()


def test_resampler_keeps_the_speech_band_and_rejects_aliases(server: ServerProcess) -> None:
    """The worklets' windowed-sinc resampler, run in the browser: a 1 kHz tone keeps its level
    through 44.1 kHz -> 24 kHz -> 48 kHz, and a 15 kHz tone (above the 12 kHz wire Nyquist) is removed
    instead of folding back to 9 kHz."""
    with _browser_tab(None) as tab:
        page = tab.page
        page.goto(server.http_url)
        result = page.evaluate("""async () => {
            const { StreamingResampler } = await import('./resampler.js');
            const tone = (hz, rate, seconds) => Float32Array.from({ length: rate * seconds }, (_, i) => 0.5 * Math.sin(2 * Math.PI * hz * i / rate));
            const run = (resampler, signal) => {
                const parts = [];
                for (let i = 0; i < signal.length; i += 128) parts.push(resampler.process(signal.subarray(i, i + 128)));
                const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
                let at = 0; for (const p of parts) { out.set(p, at); at += p.length; }
                return out;
            };
            const rms = (x) => Math.sqrt(x.subarray(x.length / 4).reduce((s, v) => s + v * v, 0) / (x.length * 3 / 4));
            const down = run(new StreamingResampler(44100, 24000), tone(1000, 44100, 1));
            const roundTrip = run(new StreamingResampler(24000, 48000), down);
            const alias = run(new StreamingResampler(48000, 24000), tone(15000, 48000, 1));
            return { downLength: down.length, downRms: rms(down), roundTripLength: roundTrip.length, roundTripRms: rms(roundTrip), aliasRms: rms(alias) };
        }""")
    tone_rms = 0.5 / np.sqrt(2)
    # Each stage holds back its kernel's half-width (under 1 ms) until more input arrives.
    assert 0 <= 24000 - result["downLength"] <= 24 and 0 <= 48000 - result["roundTripLength"] <= 48, result
    assert abs(result["downRms"] / tone_rms - 1) < 0.01 and abs(result["roundTripRms"] / tone_rms - 1) < 0.01, result
    assert 20 * np.log10(result["aliasRms"] / tone_rms) < -60, result
