"""Single key presses from the terminal, read without Enter on a background thread.

The terminal goes into cbreak mode (no line buffering, no echo; Ctrl-C still raises SIGINT) while the reader
runs, and is put back exactly as it was when it stops, also on an exception or at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import select
import sys
import threading
from collections.abc import Callable
from typing import TextIO


class KeyReader:
    def __init__(self, on_key: Callable[[str], None], stream: TextIO | int | None = None, poll_s: float = 0.05):
        self._on_key = on_key
        self._fd = stream if isinstance(stream, int) else (stream or sys.stdin).fileno()
        self._poll_s = poll_s
        self._saved = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        """Whether keys can be read: standard input must be a terminal."""
        return os.isatty(self._fd)

    def start(self) -> None:
        if not self.available:
            raise RuntimeError("key presses can only be read from a terminal")
        import termios
        import tty

        self._saved = termios.tcgetattr(self._fd)
        atexit.register(self._restore)
        tty.setcbreak(self._fd, termios.TCSANOW)
        self._thread = threading.Thread(target=self._read_keys, name="voxloop-keys", daemon=True)
        self._thread.start()

    def _read_keys(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], self._poll_s)
            if not ready:
                continue
            data = os.read(self._fd, 32)
            if not data:  # the terminal went away
                return
            for key in data.decode(errors="replace"):
                self._on_key(key)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        self._restore()

    def _restore(self) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None
            atexit.unregister(self._restore)

    def __enter__(self) -> KeyReader:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
