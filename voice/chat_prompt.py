"""A chat as the tokens a GGUF model reads: its own chat template, as `create_chat_completion`
applies it, so that tokens evaluated ahead of time match the ones a request brings."""

from __future__ import annotations

import numpy as np


class ChatPrompt:
    def __init__(self, llama):
        """`llama`: a llama_cpp.Llama (its model, tokenizer and metadata; its context is not used)."""
        self.llama = llama
        self._prefix_formatter = self._template_formatter(add_generation_prompt=False)
        self._reply_formatter = self._template_formatter(add_generation_prompt=True)
        self._message_end: int | None = None
        self._sentence_ends: np.ndarray | None = None

    @property
    def available(self) -> bool:
        """False for chat formats other than the GGUF's own template: their tokens cannot be matched."""
        return self._prefix_formatter is not None

    def _template_formatter(self, add_generation_prompt: bool):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llama = self.llama
        template = llama.metadata.get("tokenizer.chat_template")
        if llama.chat_handler is not None or llama.chat_format != "chat_template.default" or not template:
            return None
        model = llama._model
        eos, bos = model.token_eos(), model.token_bos()
        return Jinja2ChatFormatter(template=template, eos_token=model.token_get_text(eos) if eos != -1 else "",
                                   bos_token=model.token_get_text(bos) if bos != -1 else "",
                                   add_generation_prompt=add_generation_prompt)

    def _tokens(self, formatter, messages: list[dict[str, str]]) -> list[int] | None:
        if formatter is None or not messages:
            return None
        result = formatter(messages=messages)
        return self.llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)

    def prefix_tokens(self, messages: list[dict[str, str]]) -> list[int] | None:
        """The tokens a chat prompt starting with `messages` begins with (None when unavailable)."""
        return self._tokens(self._prefix_formatter, messages)

    def reply_tokens(self, messages: list[dict[str, str]]) -> list[int] | None:
        """The whole prompt for the assistant's reply to `messages` (None when unavailable)."""
        return self._tokens(self._reply_formatter, messages)

    def words_tokens(self, messages: list[dict[str, str]]) -> list[int] | None:
        """The prompt up to the last message's words, before the token that closes the message."""
        tokens, end = self.prefix_tokens(messages), self.message_end_token()
        if not tokens or end is None or end not in tokens:
            return None
        return tokens[: len(tokens) - 1 - tokens[::-1].index(end)]

    def message_end_token(self) -> int | None:
        """The token that closes a chat message in this model's template (`<|im_end|>` for ChatML)."""
        if self._message_end is None and self._prefix_formatter is not None:
            probe = self._prefix_formatter(messages=[{"role": "user", "content": "x"}]).prompt
            closing = probe[probe.index("x") + 1:].strip()
            tokens = self.llama.tokenize(closing.encode("utf-8"), add_bos=False, special=True) if closing else []
            self._message_end = tokens[0] if tokens else -1
        return None if self._message_end in (None, -1) else self._message_end

    def non_ending_control_tokens(self) -> np.ndarray:
        """The control tokens that do not end generation (`<|im_start|>` in ChatML): a reply that
        samples one has started the next chat message instead of ending its own."""
        from llama_cpp import llama_vocab_is_control, llama_vocab_is_eog

        vocab = self.llama._model.vocab
        return np.array([token for token in range(self.llama.n_vocab())
                         if llama_vocab_is_control(vocab, token) and not llama_vocab_is_eog(vocab, token)], dtype=np.intc)

    def sentence_end_tokens(self) -> np.ndarray:
        """Which vocabulary entries end a sentence: those that start with '.', '?' or '!' (an
        ellipsis does not), and the message's end token. Built once (about 0.3 s)."""
        if self._sentence_ends is None:
            llama = self.llama
            ends = np.zeros(llama.n_vocab(), dtype=bool)
            for token in range(llama.n_vocab()):
                piece = llama.detokenize([token]).decode("utf-8", "ignore").strip()
                ends[token] = piece[:1] in (".", "?", "!") and not piece.startswith("..")
            if (end := self.message_end_token()) is not None:
                ends[end] = True
            self._sentence_ends = ends
        return self._sentence_ends


def sentence_end_mass(logits: np.ndarray, sentence_ends: np.ndarray) -> float:
    """Probability mass of the sentence-ending entries under the next-token distribution `logits`."""
    logits = logits.astype(np.float64)
    probabilities = np.exp(logits - logits.max())
    return float(probabilities[sentence_ends].sum() / probabilities.sum())
