"""What one conversation is configured to do; changed by the client's `session.update`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from voxloop.voice.llm import GenerationSettings
from voxloop.voice.turns import TurnDetectionConfig

DEFAULT_INSTRUCTIONS = (
    "You are voxloop, a friendly voice assistant. Your replies are spoken aloud, so answer in one "
    "or two short, plain sentences. Never use lists, markdown or emoji."
)


@dataclass
class SessionConfig:
    instructions: str = DEFAULT_INSTRUCTIONS
    voice: str | None = None  # None: the TTS backend's default voice
    turn_detection: TurnDetectionConfig | None = field(default_factory=TurnDetectionConfig)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    # Extension: stream partial user transcripts while the user speaks.
    partial_transcripts: bool = True
    # How much of the conversation the LLM sees, and how it is trimmed (see Conversation).
    history_items: int = 24
    history_window: str = "stable"
    # After each reply, let the LLM evaluate the next prompt's start (system prompt and history)
    # in the background, so the next turn's first token pays only for the new user words.
    llm_prewarm: bool = True
    # With llm_prewarm, also evaluate the user's words while they speak, as the partial
    # transcripts agree on them, so the turn's prompt is mostly evaluated before the pause.
    llm_prewarm_words: bool = True
    # Judge whether the words before a pause end a sentence (turn rule "llm") in the reply's own
    # prompt evaluation, where the LLM can (the embedded batched one): the verdict and the first
    # token then come from one decode, not two requests one after the other.
    judge_in_reply: bool = True
    # With partial_transcripts, settle the words before a pause inside a turn once a later partial
    # transcript agrees with them, so later passes transcribe only the audio after it
    # (voice/settled_speech.py): the final pass of a long turn is short. Off by default: it
    # costs words where the rest of a turn starts without its sentence (WER +0.009 and +0.010
    # here, with and without the partial transcript's words in context; bench/RESULTS.md).
    settle_pauses: bool = False
    # At a pause, drop the partial pass in flight: the pause's own pass covers all its audio, and
    # the partial one, run after it, would share the cores with the reply's first token and audio.
    drop_partial_at_pause: bool = True

    def reply_settings(self) -> GenerationSettings:
        """The generation settings for a reply. The sentence limit holds the model to the default
        instructions' "one or two sentences"; instructions of the client's own say how long to answer."""
        if self.instructions == DEFAULT_INSTRUCTIONS:
            return self.generation
        return replace(self.generation, max_sentences=None)
