"""A GGUF re-quantized for llama.cpp's fast CPU kernels: made once, then read from a cache.

The bundled SmolLM2-135M ships as Q4_1. llama.cpp's CPU backend has no batched kernels for Q4_1
(neither its weight repacking nor llamafile's sgemm take it), so every prompt token costs about
as much as a generated one. On the 2-core Xeon, 64 prompt tokens took 376 ms as Q4_1 and 178 ms
as Q6_K, and one step of four sessions' tokens 35 ms against 29. Q6_K holds Q4_1's weights almost
exactly (KL divergence 0.012 nats a token, the same next token 94.5 % of the time, over 835
reply tokens); Q4_0 is faster still but is a second 4-bit rounding (KL 0.28, 78 %).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

# What `--llm-quant auto` makes of the bundled model (a GGUF you name is used as it is).
BUNDLED_MODEL_QUANT = "Q6_K"
QUANT_CHOICES = ("auto", "none", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0")


def default_cache_dir() -> Path:
    """$VOXLOOP_CACHE_DIR, else $XDG_CACHE_HOME/voxloop, else ~/.cache/voxloop."""
    if explicit := os.environ.get("VOXLOOP_CACHE_DIR"):
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "voxloop"


def quant_for(choice: str, bundled: bool) -> str | None:
    """The type `--llm-quant choice` asks for: None to use the file as it is."""
    if choice not in QUANT_CHOICES:
        raise ValueError(f"--llm-quant must be one of {', '.join(QUANT_CHOICES)}, not {choice!r}")
    if choice == "auto":
        return BUNDLED_MODEL_QUANT if bundled else None
    return None if choice == "none" else choice


def requantized(source: Path, quant: str, cache_dir: Path | None = None) -> Path:
    """`source` as `quant` ("Q6_K", ...): the source itself if it already is, else a copy made
    once into `cache_dir` (default: `default_cache_dir()`) and reused while the source is unchanged."""
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}", None)
    if ftype is None:
        raise ValueError(f"llama.cpp has no quantization type {quant!r}")
    stat = source.stat()
    key = hashlib.sha1(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    # The file's stem is the model's name on the wire: "SmolLM2-135M-Instruct.Q4_1-Q6_K".
    target = (cache_dir or default_cache_dir()) / "gguf" / key / f"{source.stem}-{quant}.gguf"
    if target.is_file():  # first: reading the source's type costs about 0.4 s of every start
        return target
    if _file_type(source) == ftype:
        return source
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Written beside the target and renamed, so a server starting beside this one never reads half a file.
        handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    except OSError as exc:  # no writable cache: slower prompts, but a working server
        log.warning("cannot write the re-quantized LLM to %s (%s); using %s as it is", target.parent, exc, source.name)
        return source
    os.close(handle)
    log.warning("re-quantizing %s to %s, once, into %s", source.name, quant, target.parent)
    try:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.allow_requantize = True
        params.nthread = os.cpu_count() or 1
        from llama_cpp._utils import suppress_stdout_stderr

        with suppress_stdout_stderr(disable=False):  # llama.cpp prints a line per tensor
            failed = llama_cpp.llama_model_quantize(str(source).encode(), partial.encode(), ctypes.byref(params))
        if failed:
            raise RuntimeError(f"llama.cpp could not re-quantize {source} to {quant} (code {failed})")
        os.chmod(partial, 0o644)  # a cache like any other, not a secret
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def _file_type(path: Path) -> int | None:
    """The GGUF's `general.file_type`, read without loading its weights."""
    from llama_cpp import Llama
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):
        vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        value = vocab.metadata.get("general.file_type")
        return int(value) if value is not None else None
    finally:
        vocab.close()
