"""Input audio addressed by absolute sample index since the session started.

The turn detector speaks in session time (ms since the first sample), so the buffer keeps
that addressing while dropping audio that has been committed or is too old to matter.
"""

from __future__ import annotations

import numpy as np


class SampleBuffer:
    def __init__(self, max_samples: int):
        self.max_samples = max_samples
        self._chunks: list[np.ndarray] = []
        self._start = 0  # absolute index of the first sample held
        self._size = 0

    @property
    def start(self) -> int:
        return self._start

    @property
    def end(self) -> int:
        return self._start + self._size

    def append(self, samples: np.ndarray) -> None:
        if samples.size:
            self._chunks.append(samples.astype(np.float32, copy=False))
            self._size += samples.size
        if self._size > self.max_samples:
            self.drop_before(self.end - self.max_samples)

    def slice(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end) in absolute indices, clipped to what is held."""
        data = self._consolidated()
        lo = min(max(start - self._start, 0), self._size)
        hi = min(max(end - self._start, lo), self._size)
        return data[lo:hi].copy()

    def drop_before(self, index: int) -> None:
        cut = min(max(index - self._start, 0), self._size)
        if cut:
            data = self._consolidated()[cut:]
            self._chunks = [data] if data.size else []
            self._start += cut
            self._size -= cut

    def _consolidated(self) -> np.ndarray:
        if len(self._chunks) != 1:
            self._chunks = [np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)]
        return self._chunks[0]
