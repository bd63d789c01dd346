"""The live client's screen: a rich Live area (status, level meter, the turn in progress, keys) with each
finished turn printed above it, so the scrollback keeps the conversation. Fits a plain 80-column terminal."""

from __future__ import annotations

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from voxloop.client.talk_state import TalkState, Turn

METER_WIDTH = 16
METER_FLOOR_DBFS = -70.0
_STAGES = (("transcript_final_ms", "asr"), ("llm_first_token_ms", "llm"), ("tts_first_audio_ms", "tts"),
           ("first_audio_sent_ms", "sent"))
_CONNECTION_STYLE = {"connected": "bold green", "connecting": "yellow"}
_MIC_STYLE = {"live": "green", "talking": "bold green", "muted": "bold red", "held": "yellow", "idle": "dim"}
_MIC_LABEL = {"live": "live", "talking": "talking", "muted": "MUTED", "held": "held (assistant speaking)",
              "idle": "idle (space to talk)"}


def level_meter(level_dbfs: float, width: int = METER_WIDTH) -> Text:
    filled = round(width * min(1.0, max(0.0, (level_dbfs - METER_FLOOR_DBFS) / -METER_FLOOR_DBFS)))
    style = "red" if level_dbfs > -6 else "green"
    return Text.assemble(("█" * filled, style), ("░" * (width - filled), "dim"), f" {max(level_dbfs, -99.0):4.0f} dB")


def latency_line(turn: Turn) -> Text:
    text = Text()
    if turn.latency_ms is not None:
        text.append(f"{turn.latency_ms:.0f} ms", "bold")
        text.append(f" voice-to-voice (end of speech by {turn.speech_end_source})")
    elif turn.status == "cancelled":
        text.append("interrupted before it spoke" if turn.heard_ms is None else "")
    stages = [f"{label} {turn.server_timings[key]:.0f}" for key, label in _STAGES
              if isinstance(turn.server_timings.get(key), (int, float))]
    if stages:
        reference = turn.server_timings.get("reference") or "?"
        text.append(f"; server ms after {reference}: " + " · ".join(stages), "dim")
    if turn.heard_ms is not None:
        text.append(f"; you cut in after {turn.heard_ms / 1000:.1f} s", "yellow")
    return text


def _turn_grid(turn: Turn, live: bool) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=9, no_wrap=True)
    grid.add_column(overflow="fold")
    user = Text(turn.user_text or ("…" if live else "(nothing heard)"), style="" if turn.user_final else "italic")
    grid.add_row(Text("you", "bold cyan"), user)
    if turn.assistant_text or turn.response_id:
        grid.add_row(Text("assistant", "bold green"), Text(turn.assistant_text or "…"))
    return grid


def finished_turn(turn: Turn) -> RenderableType:
    grid = _turn_grid(turn, live=False)
    line = latency_line(turn)
    if line.plain:
        grid.add_row("", line)
    return grid


def live_view(state: TalkState) -> RenderableType:
    status = Text()
    connection = state.connection.split(":")[0]
    status.append("● ", _CONNECTION_STYLE.get(connection, "bold red"))
    status.append(state.connection, _CONNECTION_STYLE.get(connection, "bold red"))
    status.append("  mic ")
    status.append(_MIC_LABEL.get(state.mic, state.mic), _MIC_STYLE.get(state.mic, ""))
    status.append("  AEC " + ("on" if state.aec else "off"), "dim")
    if state.aec and state.echo_path_db is not None:
        status.append(f" (echo {state.echo_path_db:.0f} dB)", "dim")
    meter = Text.assemble("level ", level_meter(state.level_dbfs))
    if state.user_speaking:
        meter.append("  you are speaking", "cyan")
    elif state.assistant_speaking:
        meter.append("  assistant speaking", "green")
    parts: list[RenderableType] = [status, meter]
    if state.current and not state.current.finished:
        parts.append(_turn_grid(state.current, live=True))
    if (last := state.last_latency) is not None:
        parts.append(Text.assemble("last turn: ", latency_line(last)))
    parts.extend(Text(notice, "bold red") for notice in state.recent_notices())
    keys = ["q quit", "m mute"] + (["space talk/send"] if state.push_to_talk else [])
    parts.append(Text(" · ".join(keys) if state.keys else "keys off (stdin is not a terminal); Ctrl-C quits", "dim"))
    return Group(*parts)


class TalkScreen:
    """The Live area around a running conversation."""

    def __init__(self, state: TalkState, console: Console | None = None):
        self.state = state
        self.console = console or Console()
        self._live = Live(console=self.console, auto_refresh=False, transient=False, redirect_stdout=False,
                          redirect_stderr=False, get_renderable=lambda: live_view(self.state))

    def __enter__(self) -> TalkScreen:
        self._live.start(refresh=True)
        return self

    def __exit__(self, *exc_info) -> None:
        self._live.stop()
        if not self.console.is_terminal:  # the last frame was written without a line end
            self.console.line()

    def refresh(self) -> None:
        self._live.refresh()

    def print_turn(self, turn: Turn) -> None:
        self._live.console.print(finished_turn(turn))

    def print(self, *objects, **kwargs) -> None:
        self._live.console.print(*objects, **kwargs)
