"""Copies of the LLM's KV cache for the prompts it had to drop.

One llama.cpp context serves every session, so one session's request overwrites the cache that
held another's conversation, and that session's next turn re-evaluates its whole history (400
tokens of SmolLM2 take 1.5 s on 2 cores). Before a request drops a long cached prefix, a copy is
kept (llama.cpp's state of sequence 0: about 23 KB a token for SmolLM2-135M); a later request
that shares more of its prompt with a copy than with the live cache loads the copy, in
milliseconds, and evaluates only what is new. Copies are dropped least recently used, within
a memory budget.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

# Shorter prefixes are cheaper to evaluate again than to keep: the system prompt alone, or the
# few tokens a judgment and its reply differ by.
MIN_SNAPSHOT_TOKENS = 64


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens two token sequences share from the start."""
    a, b = np.asarray(a), np.asarray(b)
    n = min(a.size, b.size)
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


class KVSnapshots:
    def __init__(self, llama, budget_bytes: int, min_tokens: int = MIN_SNAPSHOT_TOKENS):
        """`llama`: a llama_cpp.Llama whose context these copies are taken from and loaded into."""
        self.llama = llama
        self.budget_bytes = budget_bytes
        self.min_tokens = min_tokens
        self._copies: OrderedDict[bytes, tuple[np.ndarray, ctypes.Array]] = OrderedDict()  # tokens -> state
        self.saved = self.loaded = 0

    @property
    def bytes_held(self) -> int:
        return sum(len(state) for _, state in self._copies.values())

    def prepare(self, prompt: Sequence[int]) -> int:
        """Before `prompt` is evaluated, on the model's thread: keep a copy of the live cache if
        the prompt would drop a long part of it, and load the copy that serves the prompt best if
        it beats the live cache by a long prefix. Returns the prompt tokens the cache now holds."""
        llama = self.llama
        prompt = np.asarray(prompt, dtype=np.intc)
        live = llama.input_ids[: llama.n_tokens].copy()
        kept = common_prefix_length(live, prompt)
        if live.size - kept >= self.min_tokens:
            self._save(live)
        best, best_shared = None, kept
        for key, (tokens, _) in self._copies.items():
            shared = common_prefix_length(tokens, prompt)
            if shared >= best_shared + self.min_tokens:
                best, best_shared = key, shared
        if best is not None and self._load(best):
            return best_shared
        return kept

    def _save(self, tokens: np.ndarray) -> None:
        import llama_cpp

        llama = self.llama
        llama._ctx.kv_cache_seq_rm(-1, llama.n_tokens, -1)  # cells past the tokens held, which the next eval drops anyway
        ctx = llama._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        if not 0 < size <= self.budget_bytes:
            return
        state = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(ctx, state, size, 0) != size:
            return
        # A copy of a conversation supersedes the copies of its own earlier turns.
        for key in [key for key, (held, _) in self._copies.items() if common_prefix_length(held, tokens) == held.size]:
            del self._copies[key]
        self._copies[tokens.tobytes()] = (tokens, state)
        self.saved += 1
        while self.bytes_held > self.budget_bytes:
            self._copies.popitem(last=False)

    def _load(self, key: bytes) -> bool:
        import llama_cpp

        llama = self.llama
        tokens, state = self._copies[key]
        llama._ctx.kv_cache_seq_rm(-1, 0, -1)
        llama.n_tokens = 0
        llama._requires_eval = True
        if llama_cpp.llama_state_seq_set_data(llama._ctx.ctx, state, len(state), 0) == 0:
            del self._copies[key]  # llama.cpp refused it: the cache is empty, and evaluation starts over
            return False
        llama.input_ids[: tokens.size] = tokens
        llama.n_tokens = int(tokens.size)
        self._copies.move_to_end(key)
        self.loaded += 1
        return True
