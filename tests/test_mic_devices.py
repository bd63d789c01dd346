"""`voxloop talk` on real audio devices: a private PulseAudio server with two null sinks, one standing in for
the microphone (a speech clip is played into it; its monitor is the default source) and one for the speaker
(recorded from its monitor). PortAudio opens them through ALSA's pulse plugin, so sounddevice, the
resampling to and from the devices' 44.1 kHz and the whole CLI run as they would on a desktop."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from voxloop.bench.server_process import free_port
from voxloop.bench.wer import word_error_rate
from voxloop.codecs.pcm import rms_dbfs

pytestmark = pytest.mark.timeout(180)

NEEDED = {"pulseaudio": "pulseaudio", "pactl": "pulseaudio-utils", "paplay": "pulseaudio-utils",
          "parec": "pulseaudio-utils"}
DEVICE_RATE = 44100


def _missing_audio_stack() -> str | None:
    missing = sorted({package for tool, package in NEEDED.items() if shutil.which(tool) is None})
    if not Path("/usr/lib/x86_64-linux-gnu/alsa-lib/libasound_module_pcm_pulse.so").exists() and \
            not list(Path("/usr/lib").glob("*/alsa-lib/libasound_module_pcm_pulse.so")):
        missing.append("libasound2-plugins")
    probe = subprocess.run([sys.executable, "-c", "import sounddevice"], capture_output=True, text=True)
    if probe.returncode:
        missing.append("libportaudio2")
    if missing:
        return (f"the audio stack for this test is not installed: apt install {' '.join(missing)} "
                "(install.sh installs it)")
    return None


class PulseServer:
    """A PulseAudio daemon of our own (not the desktop's), reachable only through its socket."""

    def __init__(self, root: Path):
        self.root = root
        runtime = root / "runtime"
        runtime.mkdir(mode=0o700)
        self.socket = runtime / "native"
        self.log = root / "pulse.log"
        script = root / "default.pa"
        script.write_text(f"""load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket}
load-module module-null-sink sink_name=speaker rate={DEVICE_RATE} channels=1
load-module module-null-sink sink_name=mic_feed rate={DEVICE_RATE} channels=1
set-default-sink speaker
set-default-source mic_feed.monitor
""")
        client_conf = root / "client.conf"
        client_conf.write_text("autospawn = no\n")
        self.env = {**os.environ, "HOME": str(root), "XDG_RUNTIME_DIR": str(runtime), "PULSE_SERVER": f"unix:{self.socket}",
                    "PULSE_CLIENTCONFIG": str(client_conf), "COLUMNS": "200"}
        self.process = subprocess.Popen(
            ["pulseaudio", "-n", "-F", str(script), "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no",
             "--disallow-exit", f"--log-target=file:{self.log}"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"PulseAudio did not start here:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    if (why := _missing_audio_stack()) is not None:
        pytest.skip(why)
    server = PulseServer(tmp_path_factory.mktemp("pulse"))
    yield server
    server.stop()


def voxloop(*args: str) -> list[str]:
    return [sys.executable, "-m", "voxloop.client.cli", "talk", *args]


def loud_seconds(recording: Path) -> float:
    """How much of the speaker's recording (24 kHz, 16-bit) is louder than -40 dBFS, in 20 ms blocks."""
    data = recording.read_bytes()
    played = np.frombuffer(data[:len(data) - len(data) % 2], dtype="<i2").astype(np.float32) / 32768
    return 0.02 * sum(rms_dbfs(played[i:i + 480]) > -40 for i in range(0, played.size - 480, 480))


def test_list_devices_sees_the_pulse_devices(pulse):
    listing = subprocess.run(voxloop("--list-devices"), env=pulse.env, capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert "pulse" in listing.stdout and "*in" in listing.stdout and "*out" in listing.stdout


def test_live_conversation_through_real_devices(pulse, server, clips, tmp_path):
    clip = clips["arctic_a0039_1592747680"]
    recording = tmp_path / "speaker.raw"
    recorder = subprocess.Popen(["parec", "-d", "speaker.monitor", "--rate=24000", "--channels=1", "--format=s16le",
                                 "--raw", "--latency-msec=20"], env=pulse.env, stdout=open(recording, "wb"))
    log_path = tmp_path / "talk.log"
    talk = subprocess.Popen(voxloop("--url", server.ws_url, "--instructions", "Answer in one short sentence."),
                            env=pulse.env, stdin=subprocess.DEVNULL, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    try:
        wait_for_text(log_path, "listening", talk, 30)  # connected, microphone open
        subprocess.run(["paplay", "-d", "mic_feed", str(clip.path)], env=pulse.env, check=True, timeout=30)
        wait_for_text(log_path, "voice-to-voice", talk, 90)
        deadline = time.monotonic() + 15  # the reply plays after the device's own latency
        while loud_seconds(recording) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.1)
        talk.send_signal(signal.SIGINT)  # Ctrl-C
        assert talk.wait(timeout=10) == 0, log_path.read_text()
    finally:
        if talk.poll() is None:
            talk.kill()
        recorder.terminate()
        recorder.wait(timeout=5)
    output = log_path.read_text()
    assert "Traceback" not in output and "bye (interrupted)" in output, output
    heard = next(line for line in output.splitlines() if line.startswith("you "))[len("you"):].strip()
    assert word_error_rate(clip.transcript, heard) <= 0.25, output
    assert f"@ {DEVICE_RATE} Hz" in output  # the devices ran at their own rate, resampled to and from 24 kHz

    assert loud_seconds(recording) >= 0.3, "the reply was not heard on the speaker"


def test_unknown_device_is_explained(pulse, server):
    result = subprocess.run(voxloop("--url", server.ws_url, "--input-device", "no-such-microphone"), env=pulse.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no microphone matches 'no-such-microphone'" in result.stdout and "--list-devices" in result.stdout


def test_no_audio_device_is_explained(server):
    cards = Path("/proc/asound/cards")
    if cards.exists() and "no soundcards" not in cards.read_text():
        # An ALSA config without devices cannot be swapped in either: alsa-lib aborts on one.
        pytest.skip(f"this machine has sound cards ({cards}), so a machine without audio devices cannot be arranged")
    env = {**os.environ, "PULSE_SERVER": "unix:/nonexistent", "PIPEWIRE_REMOTE": "/nonexistent", "COLUMNS": "200"}
    result = subprocess.run(voxloop("--url", server.ws_url), env=env, capture_output=True, text=True, timeout=60)
    message = result.stdout + result.stderr
    assert result.returncode == 1, message
    assert "Traceback" not in message
    assert "no default microphone found" in message or "cannot load PortAudio" in message, message


def test_server_down_is_explained():
    url = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    result = subprocess.run(voxloop("--url", url), capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 1
    assert f"cannot reach the voxloop server at {url}" in result.stdout and "Traceback" not in result.stdout


def wait_for_text(path: Path, text: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text(errors="replace"):
        if process.poll() is not None:
            raise AssertionError(f"voxloop talk exited with {process.returncode}:\n{path.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} after {timeout_s} s:\n{path.read_text()}")
        time.sleep(0.1)
