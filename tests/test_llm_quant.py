"""Re-quantizing the embedded LLM's GGUF (voice/llm_quant.py), on the real bundled SmolLM2."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from llm_conversations import SYSTEM

from voxloop.voice.errors import ModelNotFoundError
from voxloop.voice.llm import bundled_gguf_path
from voxloop.voice.llm_quant import BUNDLED_MODEL_QUANT, _file_type, quant_for, requantized
from voxloop.voice.models import ModelOptions, llm_gguf_path

pytestmark = pytest.mark.models

PROMPTS = ("What colour is the sky?", "Tell me about your favourite book.", "How do I boil an egg?",
           "He hoped there would be stew for dinner, turnips and carrots and bruised potatoes.")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("voxloop-cache")


@pytest.fixture(scope="module")
def q6k(cache_dir):
    return requantized(Path(bundled_gguf_path()), "Q6_K", cache_dir)


def test_auto_converts_only_the_bundled_model():
    assert quant_for("auto", bundled=True) == BUNDLED_MODEL_QUANT
    assert quant_for("auto", bundled=False) is None
    assert quant_for("none", bundled=True) is None
    assert quant_for("Q8_0", bundled=False) == "Q8_0"
    with pytest.raises(ValueError, match="--llm-quant"):
        quant_for("q6k", bundled=True)


def test_the_copy_is_made_once_in_the_requested_type(q6k, cache_dir):
    import llama_cpp

    assert q6k.parent.parent == cache_dir / "gguf" and q6k.name == Path(bundled_gguf_path()).stem + "-Q6_K.gguf"
    assert _file_type(q6k) == llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K
    made = q6k.stat().st_mtime_ns
    assert requantized(Path(bundled_gguf_path()), "Q6_K", cache_dir) == q6k
    assert q6k.stat().st_mtime_ns == made  # read from the cache, not made again
    assert not list(q6k.parent.glob("*.partial"))


def test_a_file_already_of_the_type_is_used_as_it_is(q6k, cache_dir):
    assert requantized(q6k, "Q6_K", cache_dir) == q6k


def test_a_changed_source_gets_a_new_copy(tmp_path, cache_dir):
    source = tmp_path / "model.gguf"
    shutil.copyfile(bundled_gguf_path(), source)
    first = requantized(source, "Q8_0", cache_dir)
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 1_000_000_000))
    second = requantized(source, "Q8_0", cache_dir)
    assert first != second and first.is_file() and second.is_file()


def test_the_copy_predicts_what_the_shipped_model_predicts(q6k):
    """Same next token on most of the shipped model's own greedy replies: the conversion must not
    change what the assistant says. (Q6_K: 94.5 % over 835 tokens; a second 4-bit rounding, Q4_0, 78 %.)"""
    from llama_cpp import Llama

    from voxloop.voice.chat_prompt import ChatPrompt

    def load(path):
        return Llama(model_path=str(path), n_ctx=512, n_threads=2, logits_all=True, verbose=False)

    def next_tokens(llm, tokens: list[int], start: int) -> np.ndarray:
        llm.reset()
        llm.eval(tokens)
        return np.asarray(llm.scores[start - 1: len(tokens) - 1]).argmax(axis=1)

    shipped = load(bundled_gguf_path())
    chat = ChatPrompt(shipped)
    conversations = []
    for text in PROMPTS:
        prompt = chat.reply_tokens([{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}])
        reply = []
        for token in shipped.generate(prompt, temp=0, top_k=1):
            if token == shipped.token_eos() or len(reply) == 32:
                break
            reply.append(token)
        conversations.append((prompt + reply, len(prompt)))
    expected = [next_tokens(shipped, tokens, start) for tokens, start in conversations]
    shipped.close()
    converted = load(q6k)
    got = [next_tokens(converted, tokens, start) for tokens, start in conversations]
    converted.close()
    agreement = np.mean(np.concatenate(expected) == np.concatenate(got))
    assert agreement >= 0.85, f"the re-quantized model picks the shipped model's next token only {agreement:.0%} of the time"


def test_without_a_writable_cache_the_shipped_file_is_used(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")  # a cache under a file cannot be made, even by root
    assert requantized(Path(bundled_gguf_path()), "Q8_0", blocked / "cache") == Path(bundled_gguf_path())


def test_a_missing_gguf_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        llm_gguf_path(ModelOptions(llm_gguf=str(tmp_path / "missing.gguf"), llm_quant="Q6_K"))


def test_the_server_loads_the_converted_bundled_model(monkeypatch, cache_dir, q6k):
    monkeypatch.setenv("VOXLOOP_CACHE_DIR", str(cache_dir))
    assert llm_gguf_path(ModelOptions()) == str(q6k)
    assert llm_gguf_path(ModelOptions(llm_quant="none")) == bundled_gguf_path()
