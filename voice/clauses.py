"""Cutting streamed LLM text into clauses that TTS can speak as soon as they exist.

The first clause of a reply is cut as early as a comma allows, because it gates the time to
first audio; later clauses prefer sentence ends, which give better prosody, and fall back to
commas only when a sentence runs long. A later clause is cut as early as a first one when its
reader is about to run out of audio (`push(..., hurry=True)`): a phrase that sounds cut short is
better than silence while the rest of the sentence is written.
"""

from __future__ import annotations

import re

_SENTENCE_END = ".!?"
_CLAUSE_END = ",;:"
# Words whose trailing period does not end a sentence.
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "approx"}
# Words that lead into the next one. TTS speaks each clause as a whole utterance, ending it with a
# fall, so a first clause that stops on one ("Here's a", "When it comes to the") sounds broken off.
_LEADING_WORDS = frozenset("""
    a an the this that these those my your his her its our their some any no every each
    of to in on at for with by from about into onto over under as than like
    and or but nor so if because when while where who whom whose which what how
    is are was were be been being am has have had do does did
    will would shall should can could may might must
    i you he she it we they there here not very more most just
    i'm you're he's she's it's we're they're there's here's that's what's let's
    i'll you'll he'll she'll we'll they'll i've you've we've they've i'd you'd we'd
    don't doesn't didn't can't won't isn't aren't wasn't weren't
""".split())


class ClauseChunker:
    def __init__(self, first_clause_min_chars: int = 12, clause_min_chars: int = 60, max_chars: int = 220,
                 first_clause_max_chars: int | None = None, first_clause_phrases: bool = False):
        """`first_clause_max_chars`: cut the first clause at a word boundary by this length even
        without punctuation, so a long opening sentence does not hold back the first audio.
        `first_clause_phrases`: from `first_clause_min_chars` on, also cut it after the first word
        that does not lead into the next ("I'm glad | you asked", not "Here's a | revised")."""
        self.first_clause_min_chars = first_clause_min_chars
        self.first_clause_max_chars = first_clause_max_chars or max_chars
        self.first_clause_phrases = first_clause_phrases
        self.clause_min_chars = clause_min_chars
        self.max_chars = max_chars
        self._buffer = ""
        self._emitted_any = False

    def push(self, text: str, hurry: bool = False) -> list[str]:
        """Add streamed text; return the clauses it completed, in order. `hurry`: the listener is
        about to wait for the next clause, so cut it by the first clause's rules. Only that one:
        the text after it is already written and goes on by the later clauses' rules."""
        self._buffer += text
        clauses = []
        while (cut := self._find_cut(hurry)) is not None:
            clause, self._buffer = self._buffer[:cut], self._buffer[cut:]
            self._add(clause, clauses)
            hurry = False
        return clauses

    def flush(self) -> list[str]:
        """End of the stream: whatever is left is the last clause."""
        clauses: list[str] = []
        self._add(self._buffer, clauses)
        self._buffer = ""
        return clauses

    def _add(self, clause: str, out: list[str]) -> None:
        # Punctuation left over from the previous cut ("... ! Hello") is not part of this clause.
        clause = clause.strip().lstrip(_SENTENCE_END + _CLAUSE_END + " ")
        if any(ch.isalnum() for ch in clause):
            out.append(clause)
            self._emitted_any = True

    def _find_cut(self, hurry: bool = False) -> int | None:
        """Index just past a confirmed boundary, or None while the boundary is still unsure.

        A punctuation mark counts only once the character after it has arrived (it must be
        whitespace), so "3.5" and "U.S." are never split mid-token.
        """
        text = self._buffer
        early = not self._emitted_any or hurry
        min_chars = self.first_clause_min_chars if early else self.clause_min_chars
        last_clause_cut = None
        for i, ch in enumerate(text[:-1]):
            if ch == "\n" and text[:i].strip():
                return i + 1
            if not text[i + 1].isspace():
                continue
            if ch in _SENTENCE_END and not self._is_abbreviation(text[: i + 1]):
                if len(text[:i].strip()) >= 2:
                    return i + 1
            elif ch in _CLAUSE_END and len(text[:i].strip()) >= min_chars:
                if early:
                    return i + 1
                last_clause_cut = i + 1
            elif (self.first_clause_phrases and early
                  and min_chars <= len(text[: i + 1].strip()) <= self.first_clause_max_chars and _ends_phrase(text[: i + 1])):
                return i + 1
        max_chars = self.first_clause_max_chars if early else self.max_chars
        if len(text) >= max_chars:
            if last_clause_cut is not None:
                return last_clause_cut
            spaces = [i for i, ch in enumerate(text[:max_chars]) if ch == " " and text[:i].strip()]
            if self.first_clause_phrases and early:  # the last phrase end that fits, if any
                spaces = [i for i in spaces if _ends_phrase(text[:i])] or spaces
            return spaces[-1] + 1 if spaces else max_chars
        return None

    @staticmethod
    def _is_abbreviation(text: str) -> bool:
        match = re.search(r"([A-Za-z.]+)\.$", text)
        if not match:
            return False
        word = match.group(1).lower()
        return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def _ends_phrase(text: str) -> bool:
    """The text's last word does not lead into the next one."""
    words = text.split()
    return bool(words) and words[-1].strip("\"'()").replace("\u2019", "'").lower() not in _LEADING_WORDS


_MARKUP = re.compile(r"[*_`#>~|\[\]]+")
_EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF]")


def speakable(text: str) -> str:
    """Strip the markdown and emoji that LLMs emit and TTS would read out or choke on."""
    text = _EMOJI.sub("", _MARKUP.sub("", text))
    return re.sub(r"\s+", " ", text).strip()
