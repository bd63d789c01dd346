"""Word error rate on normalised text: case, punctuation and number spelling do not count."""

from __future__ import annotations

import re

import jiwer

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "twenty": "20", "thirty": "30",
    "forty": "40", "fifty": "50", "hundred": "100",
}
_NON_WORD = re.compile(r"[^a-z0-9' ]+")


def normalize(text: str) -> str:
    text = _NON_WORD.sub(" ", text.lower().replace("-", " "))
    words = [_NUMBER_WORDS.get(word, word) for word in text.replace("'", "").split()]
    return " ".join(words)


def word_error_rate(reference: str, hypothesis: str) -> float:
    reference, hypothesis = normalize(reference), normalize(hypothesis)
    if not reference:
        return 0.0 if not hypothesis else 1.0
    return float(jiwer.wer(reference, hypothesis))
