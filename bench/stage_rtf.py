"""Real-time factor of each model stage, measured in-process on the same models the server loads.

RTF = compute time / duration of the audio it covers (ASR: the user's clip; LLM: the spoken
reply its text became; TTS: the audio it produced). Below 1 means faster than real time.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

import numpy as np

from voxloop.bench.speech import Clip
from voxloop.codecs.audiofile import load_audio
from voxloop.voice.llm import GenerationSettings
from voxloop.voice.models import CascadeModels
from voxloop.voice.tts import OUTPUT_RATE

PROMPTS = ["What should I cook for dinner tonight?", "Tell me something interesting about the sea.",
           "How do I stay focused while working from home?", "What is the capital of France?"]


async def _measure(models: CascadeModels, clips: list[Clip], progress) -> dict[str, list[float]]:
    rtf: dict[str, list[float]] = {"asr": [], "llm": [], "tts": []}
    for clip in clips:
        audio = load_audio(clip.path, 16000)
        start = time.perf_counter()
        await models.transcribe(audio)
        rtf["asr"].append((time.perf_counter() - start) / clip.duration_s)
        progress()
    for prompt in PROMPTS:
        start = time.perf_counter()
        async with aclosing(models.llm.stream([{"role": "user", "content": prompt}], GenerationSettings())) as pieces:
            text = "".join([piece async for piece in pieces])
        llm_s = time.perf_counter() - start
        start = time.perf_counter()
        async with aclosing(models.tts.synthesize(text or prompt)) as chunks:
            audio = np.concatenate([chunk async for chunk in chunks])
        tts_s = time.perf_counter() - start
        spoken_s = audio.size / OUTPUT_RATE
        rtf["llm"].append(llm_s / spoken_s)
        rtf["tts"].append(tts_s / spoken_s)
        progress()
    return rtf


def measure_stage_rtf(models: CascadeModels, clips: list[Clip], progress=lambda: None) -> dict[str, dict[str, float]]:
    rtf = asyncio.run(_measure(models, clips, progress))
    return {stage: {"median": float(np.median(values)), "p95": float(np.percentile(values, 95)), "n": len(values)}
            for stage, values in rtf.items()}
