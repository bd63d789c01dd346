"""The GPU bundle's packing: parts that join back into the same files, and the llama.cpp
source filter that keeps everything that is compiled."""

import tarfile

from voxloop.bench.gpu_bundle import _write_parts, never_compiled


def test_parts_join_back_into_the_same_files(tmp_path):
    source = tmp_path / "source"
    (source / "models").mkdir(parents=True)
    payloads = {"models/a.bin": bytes(range(256)) * 40, "b.whl": b"wheel" * 3000, "models/c.json": b"{}"}
    for name, data in payloads.items():
        (source / name).write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()

    parts = _write_parts({name: source / name for name in payloads}, out, part_bytes=4096)

    assert len(parts) > 3
    assert all(p.stat().st_size == 4096 for p in parts[:-1])
    joined = tmp_path / "joined.tar"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(joined) as tar:
        assert {name: tar.extractfile(name).read() for name in payloads} == payloads


def test_llama_cpp_filter_keeps_sources_and_drops_data():
    root = "llama_cpp_python-0.3.36"
    assert never_compiled(f"{root}/.git/modules/vendor/llama.cpp/objects/pack/pack-1.pack")
    assert never_compiled(f"{root}/vendor/llama.cpp/models/ggml-vocab-qwen2.gguf")
    assert never_compiled(f"{root}/vendor/llama.cpp/docs/ops/CUDA.csv")
    assert not never_compiled(f"{root}/vendor/llama.cpp/ggml/src/ggml-cuda/mmq.cu")
    assert not never_compiled(f"{root}/vendor/llama.cpp/src/llama.cpp")
    assert not never_compiled(f"{root}/llama_cpp/llama.py")
    assert not never_compiled(f"{root}/CMakeLists.txt")
    # a folder called "models" elsewhere is source, not test data
    assert not never_compiled(f"{root}/vendor/llama.cpp/src/models/llama.cpp")


def test_staging_copies_what_a_folder_holds_and_refuses_a_folder_with_nothing_to_stage(tmp_path):
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).parent.parent / "bench" / "gpu_run.sh"
    env = {**os.environ, "VOXLOOP_GPU_WORK": str(tmp_path / "work")}
    upload = tmp_path / "p3"
    upload.mkdir()
    (upload / "bundle.tar.part03").write_bytes(b"part")
    staged = subprocess.run(["bash", str(script), "stage", str(upload)], env=env, capture_output=True, text=True)
    assert staged.returncode == 0, staged.stderr
    assert (tmp_path / "work" / "parts" / "bundle.tar.part03").read_bytes() == b"part"

    for nothing in (tmp_path / "empty", tmp_path / "missing"):
        if nothing.name == "empty":
            nothing.mkdir()
        refused = subprocess.run(["bash", str(script), "stage", str(nothing)], env=env, capture_output=True, text=True)
        assert refused.returncode == 1 and "nothing to stage" in refused.stderr


def test_extra_models_travel_as_their_own_parts_and_unpack_after_a_sha256_check(tmp_path):
    import hashlib
    import json
    import os
    import subprocess
    from pathlib import Path

    from voxloop.bench.gpu_bundle import MODEL_PART_PREFIX

    model = tmp_path / "tiny-llm.gguf"
    model.write_bytes(bytes(range(256)) * 100)
    out = tmp_path / "out"
    out.mkdir()
    parts = _write_parts({model.name: model}, out, part_bytes=8192, prefix=MODEL_PART_PREFIX)
    assert [p.name for p in parts][:2] == [f"{MODEL_PART_PREFIX}000", f"{MODEL_PART_PREFIX}001"]
    manifest = {"parts": {}, "model_parts": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in parts}}
    (out / "bundle.json").write_text(json.dumps(manifest))

    script = Path(__file__).parent.parent / "bench" / "gpu_run.sh"
    work = tmp_path / "work"
    env = {**os.environ, "VOXLOOP_GPU_WORK": str(work), "PYTHON": "python3"}
    run = lambda *args: subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True)  # noqa: E731

    assert run("stage", str(out)).returncode == 0
    (work / "parts" / parts[1].name).write_bytes(b"not the part")
    refused = run("models")
    assert refused.returncode != 0 and f"{parts[1].name} is corrupt" in refused.stderr + refused.stdout

    assert run("stage", str(out)).returncode == 0
    unpacked = run("models")
    assert unpacked.returncode == 0, unpacked.stderr
    assert (work / "models" / model.name).read_bytes() == model.read_bytes()
