"""`voxloop talk` without `--input`: the live conversation wired to the terminal, the sound card and the server."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from voxloop.client.audio_io import AudioDeviceError, SoundDeviceAudio, list_devices
from voxloop.client.keys import KeyReader
from voxloop.client.mic import LiveOptions, LiveTalk
from voxloop.client.mic_ui import TalkScreen
from voxloop.client.realtime_client import RealtimeClient
from voxloop.client.talk_state import TalkState

REFRESH_S = 0.1


def print_devices(console: Console) -> int:
    try:
        devices = list_devices()
    except AudioDeviceError as exc:
        console.print(f"[bold red]{escape(str(exc))}[/]")
        return 1
    if not devices:
        console.print("[bold red]PortAudio sees no audio devices.[/] On Linux, check that your user can open the "
                      "sound card (the `audio` group) or that PulseAudio/PipeWire is running.")
        return 1
    table = Table(title="audio devices (* = default)", title_justify="left")
    for column in ("#", "name", "api", "in", "out", "rate"):
        table.add_column(column, overflow="fold")
    for device in devices:
        mark = ("*in " if device.is_default_input else "") + ("*out" if device.is_default_output else "")
        table.add_row(f"{device.index}{' ' + mark if mark else ''}", escape(device.name), escape(device.host_api),
                      str(device.input_channels), str(device.output_channels), str(device.default_rate))
    console.print(table)
    return 0


def run_live_talk(url: str, options: LiveOptions, input_device: int | str | None = None,
                  output_device: int | str | None = None, console: Console | None = None) -> int:
    console = console or Console()
    try:
        return asyncio.run(_converse(url, options, input_device, output_device, console))
    except KeyboardInterrupt:  # Ctrl-C before the conversation's own handler was in place
        console.print("stopped")
        return 0


async def _converse(url: str, options: LiveOptions, input_device, output_device, console: Console) -> int:
    state = TalkState()
    try:
        client = await RealtimeClient(url).__aenter__()
    except ConnectionError as exc:
        console.print(f"[bold red]{escape(str(exc))}[/]")
        return 1
    try:
        try:
            device = SoundDeviceAudio(input_device, output_device)
        except AudioDeviceError as exc:
            console.print(f"[bold red]{escape(str(exc))}[/]")
            return 1
        console.print(f"[dim]{escape(url)} · {escape(device.description)}[/]")
        return await _run_conversation(client, device, options, state, console)
    finally:
        with contextlib.suppress(Exception):
            await client.__aexit__(None, None, None)


async def _run_conversation(client: RealtimeClient, device: SoundDeviceAudio, options: LiveOptions, state: TalkState,
                            console: Console) -> int:
    loop = asyncio.get_running_loop()
    screen = TalkScreen(state, console)
    talk = LiveTalk(client, device, options, state, on_turn_finished=screen.print_turn)
    keys = KeyReader(lambda key: loop.call_soon_threadsafe(talk.handle_key, key))
    state.keys = keys.available
    with contextlib.suppress(NotImplementedError):  # not on Windows; Ctrl-C then raises KeyboardInterrupt
        loop.add_signal_handler(signal.SIGINT, talk.stop, "interrupted")

    async def refresh() -> None:
        announced = False
        while True:
            if not announced and state.connection == "connected":
                announced = True  # the microphone is open from here on
                screen.print("[green]listening[/]: " + ("press space to talk, space again to send" if options.push_to_talk
                                                        else "speak any time; the assistant answers when you pause"))
            talk.update_playback()
            screen.refresh()
            await asyncio.sleep(REFRESH_S)

    refresher = None
    try:
        with screen:
            if keys.available:
                keys.start()
            refresher = asyncio.create_task(refresh())
            await talk.run()
    except AudioDeviceError as exc:
        console.print(f"[bold red]{escape(str(exc))}[/]")
        return 1
    finally:
        keys.stop()
        device.close()
        if refresher is not None:
            refresher.cancel()
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGINT)
    if device.underruns or device.overflows:
        console.print(f"[yellow]the audio ran late {device.underruns} times on the speaker and "
                      f"{device.overflows} times on the microphone: the machine was too busy to keep up[/]")
    if state.connection.startswith("disconnected"):
        console.print(f"[bold red]{escape(state.connection)}[/]")
        return 1
    console.print(f"bye ({escape(str(talk.exit_reason))})")
    return 0
