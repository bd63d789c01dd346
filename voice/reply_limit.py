"""Where a spoken reply ends, whatever the LLM goes on to write.

A voice reply the user has to sit through is worth less with every sentence, and small
models ignore "answer in one or two sentences": in session 8's default bench run, 17 of 32
SmolLM2-135M replies ran on to the 96-token cap and stopped mid-sentence, some looping on a
sentence already said ("You're very clever. You're very clever. ..."). The limit reads the
reply clause by clause, as TTS will speak it, and ends it:
- after `max_sentences` whole sentences;
- before a sentence that repeats one already said in the reply (a phrase may recur: a reply
  cut into short phrases says "I think" twice without looping);
- without the unfinished tail that the token cap left, once a whole sentence was said.
Ending the reply also stops the LLM, so the cores go to the next turn.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")


def _words(clause: str) -> str:
    return " ".join(re.findall(r"[\w']+", clause.lower()))


class SpokenReplyLimit:
    def __init__(self, max_sentences: int | None = None):
        """`max_sentences`: the whole sentences a reply may have (None or 0: no limit)."""
        self.max_sentences = max_sentences or None
        self.sentences = 0
        self.ended = False  # the reply is complete: speak no more of it
        self.end_reason: str | None = None  # why it ended early: "sentences", "repeat" or "token_cap"
        self._said: set[str] = set()

    def admit(self, clause: str) -> bool:
        """Whether to speak `clause`, the next clause of the reply. After a refusal, or once
        the clause admitted completes the reply, `ended` is set."""
        if self.ended:
            return False
        if not _SENTENCE_END.search(clause.strip()):
            return True
        words = _words(clause)
        if words in self._said:
            self._end("repeat")
            return False
        self._said.add(words)
        self.sentences += 1
        if self.max_sentences is not None and self.sentences >= self.max_sentences:
            self._end("sentences")
        return True

    def admit_tail(self, clause: str, cut_by_token_cap: bool) -> bool:
        """Whether to speak `clause`, what was left when the LLM stopped. A tail the token cap
        cut off mid-sentence is dropped if the reply already said a whole sentence: ending on
        that sentence sounds finished, ending mid-sentence sounds broken."""
        if cut_by_token_cap and self.sentences and not _SENTENCE_END.search(clause.strip()):
            self._end("token_cap")
            return False
        return self.admit(clause)

    def _end(self, reason: str) -> None:
        self.ended = True
        self.end_reason = reason
