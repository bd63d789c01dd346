"""Judging whether a speculative transcript sounds finished, and how long a pause that makes."""

from dataclasses import replace

import pytest

from voxloop.voice.speculation import (CONTINUER, UNLIKELY_END, UNPUNCTUATED, sounds_unfinished, unfinished_hold,
                                      unfinished_reason, without_final_punctuation)
from voxloop.voice.turns import TurnDetectionConfig


@pytest.mark.parametrize("text", ["I'm sure all schools would accept that.", "No one will doubt my being so.",
                                  "What is it for?", "Hello!", "He could wait no longer.", ""])
def test_a_sentence_with_a_final_stop_is_finished_even_on_a_word_like_that(text):
    assert unfinished_reason(text) is None


@pytest.mark.parametrize("text", ["I went to the shop and", "and the.", "It was, uh", "As an example of fine typography,",
                                  "well...", "I think that", "I want to"])
def test_a_continuer_word_or_trailing_comma_is_strong_evidence(text):
    assert unfinished_reason(text) == CONTINUER


@pytest.mark.parametrize("text", ["ask what you can do for your country", "Hopefully we can learn from our mistakes"])
def test_a_missing_final_stop_alone_is_weaker_evidence(text):
    assert unfinished_reason(text) == UNPUNCTUATED


def test_the_punctuation_rule_still_holds_on_a_continuer_after_a_full_stop():
    assert sounds_unfinished("I'm sure all schools would accept that.")
    assert sounds_unfinished("ask what you can do for your country")
    assert not sounds_unfinished("He could wait no longer.")


def test_the_evidence_rule_holds_the_long_pause_only_on_strong_evidence():
    config = TurnDetectionConfig(silence_duration_ms=500, unfinished_silence_ms=900, unfinished_rule="evidence",
                                 unpunctuated_silence_ms=650)
    assert unfinished_hold("and then I went to the", config) == (CONTINUER, 900)
    assert unfinished_hold("ask what you can do for your country", config) == (UNPUNCTUATED, 650)
    assert unfinished_hold("I'm sure all schools would accept that.", config) == (None, 500)


def test_the_punctuation_rule_holds_the_long_pause_for_any_unfinished_reading():
    config = TurnDetectionConfig(silence_duration_ms=500, unfinished_silence_ms=900, unfinished_rule="punctuation",
                                 unpunctuated_silence_ms=650)
    assert unfinished_hold("I'm sure all schools would accept that.", config) == ("unfinished", 900)
    assert unfinished_hold("He could wait no longer.", config) == (None, 500)


def test_a_hold_never_ends_the_turn_sooner_than_the_plain_silence_duration():
    config = TurnDetectionConfig(silence_duration_ms=800, unfinished_rule="evidence", unpunctuated_silence_ms=600)
    assert unfinished_hold("no stop here", config) == (UNPUNCTUATED, 800)


def test_by_default_the_llm_judges_the_words_and_an_unpunctuated_pause_is_held_as_long_as_an_unfinished_one():
    config = TurnDetectionConfig()
    assert config.unfinished_rule == "llm"
    assert config.unpunctuated_silence_ms == config.unfinished_silence_ms


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError):
        unfinished_hold("hello", TurnDetectionConfig(unfinished_rule="vibes"))


def test_the_llm_rule_lets_the_model_judge_words_without_a_continuer():
    config = TurnDetectionConfig(silence_duration_ms=500, unfinished_silence_ms=900, unfinished_rule="llm",
                                 sentence_end_threshold=0.01)
    # Whisper's full stop on half a sentence: the LLM's low sentence-end probability holds the pause.
    assert unfinished_hold("And so my fellow Americans ask not what.", config, 0.002) == (UNLIKELY_END, 900)
    # A finished sentence without its final stop ends the turn normally.
    assert unfinished_hold("ask what you can do for your country", config, 0.69) == (None, 500)
    # A continuer word is evidence the model cannot overrule.
    assert unfinished_hold("I went to the shop and", config, 0.5) == (CONTINUER, 900)
    # An LLM that cannot score (a remote endpoint): the words alone decide, as with "evidence".
    assert unfinished_hold("ask what you can do for your country", config, None) == (UNPUNCTUATED, 900)


def test_a_clearly_finished_sentence_ends_the_turn_after_the_shorter_finished_pause():
    config = TurnDetectionConfig(silence_duration_ms=500, unfinished_rule="llm", finished_silence_ms=250,
                                 finished_threshold=0.5)
    assert unfinished_hold("He could wait no longer.", config, 0.8) == (None, 250)
    assert unfinished_hold("Is that all?", config, 0.5) == (None, 250)
    # Either signal alone is not enough: no final stop from Whisper, or an LLM that is unsure.
    assert unfinished_hold("ask what you can do for your country", config, 0.9) == (None, 500)
    assert unfinished_hold("He could wait no longer.", config, 0.3) == (None, 500)
    # Without the LLM's judgment (another rule, or a remote LLM that cannot score) it never applies.
    assert unfinished_hold("He could wait no longer.", config, None) == (None, 500)
    assert unfinished_hold("He could wait no longer.", TurnDetectionConfig(unfinished_rule="evidence", finished_silence_ms=250)) == (None, 500)
    # Evidence of an unfinished sentence still wins, and the finished pause is never the longer one.
    assert unfinished_hold("I went to the shop and.", config, 0.9) == (CONTINUER, 900)
    assert unfinished_hold("Fine.", TurnDetectionConfig(silence_duration_ms=200, finished_silence_ms=250), 0.9) == (None, 200)


def test_a_final_stop_whisper_is_sure_of_counts_as_clearly_finished_unless_the_llm_holds_the_words():
    config = TurnDetectionConfig(silence_duration_ms=500, unfinished_rule="llm", finished_silence_ms=250,
                                 finished_threshold=0.5, heard_stop_threshold=0.85)
    assert unfinished_hold("He could wait no longer.", config, 0.1, heard_stop_p=0.9) == (None, 250)
    assert unfinished_hold("He could wait no longer.", config, 0.1, heard_stop_p=0.8) == (None, 500)
    # Without the LLM's score (a remote LLM that cannot give one), the heard stop alone is enough.
    assert unfinished_hold("He could wait no longer.", config, None, heard_stop_p=0.9) == (None, 250)
    # It needs the stop written, and it never overrides a hold: the LLM's, or a continuer word's.
    assert unfinished_hold("ask what you can do for your country", config, 0.5, heard_stop_p=0.95) == (None, 500)
    assert unfinished_hold("It is of the first importance that the.", config, 0.005, heard_stop_p=0.95) == (CONTINUER, 900)
    assert unfinished_hold("It is of the first importance.", replace(config, heard_stop_overrule_threshold=0.0), 0.005,
                           heard_stop_p=0.95) == (UNLIKELY_END, 900)
    # Off at threshold 0, and only under the "llm" rule, as the finished pause itself.
    assert unfinished_hold("He could wait no longer.", replace(config, heard_stop_threshold=0.0), 0.1,
                           heard_stop_p=0.99) == (None, 500)
    assert unfinished_hold("He could wait no longer.", replace(config, unfinished_rule="evidence"), None,
                           heard_stop_p=0.99) == (None, 500)


def test_a_stop_whisper_is_very_sure_of_overrules_the_llms_hold_but_ends_the_turn_only_after_the_usual_pause():
    config = TurnDetectionConfig(silence_duration_ms=500, unfinished_rule="llm", finished_silence_ms=350,
                                 heard_stop_threshold=0.85, heard_stop_overrule_threshold=0.9)
    assert unfinished_hold("The letter used should be fine and form.", config, 0.011, heard_stop_p=0.93) == (None, 500)
    assert unfinished_hold("The letter used should be fine and form.", config, 0.011, heard_stop_p=0.88) == (UNLIKELY_END, 900)
    # A continuer word is evidence in the words themselves, which no voice overrules; nor does a
    # stop Whisper did not write.
    assert unfinished_hold("It is of the first importance that the.", config, 0.005, heard_stop_p=0.99) == (CONTINUER, 900)
    assert unfinished_hold("the letter used should be fine and form", config, 0.011, heard_stop_p=0.99) == (UNLIKELY_END, 900)
    assert unfinished_hold("The letter used should be fine and form.", replace(config, heard_stop_overrule_threshold=0.0),
                           0.011, heard_stop_p=0.99) == (UNLIKELY_END, 900)


def test_by_default_a_clearly_finished_sentence_ends_after_350_ms_and_a_plainly_finished_one_after_500():
    defaults = TurnDetectionConfig()
    assert unfinished_hold("He could wait no longer.", defaults, 0.99) == (None, 350)
    assert unfinished_hold("He could wait no longer.", defaults, 0.39) == (None, 500)
    assert unfinished_hold("He could wait no longer.", defaults, 0.39, heard_stop_p=0.9) == (None, 350)
    assert unfinished_hold("He could wait no longer", defaults, 0.99) == (None, 500)  # no final stop from Whisper
    # A client that asks for a shorter pause than that gets it.
    assert unfinished_hold("Fine.", replace(defaults, silence_duration_ms=300), 0.99) == (None, 300)


@pytest.mark.parametrize("text, words", [("He could wait no longer.", "He could wait no longer"),
                                         ("What is it for?!", "What is it for"), ("It was, uh...", "It was, uh"),
                                         ("the dogs'.", "the dogs'"), ("", "")])
def test_the_llm_judges_the_words_without_whispers_final_punctuation(text, words):
    assert without_final_punctuation(text) == words
