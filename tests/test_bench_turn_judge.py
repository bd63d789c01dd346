"""The arithmetic of the offline turn-completion check (bench/turn_judge.py)."""

from voxloop.bench.turn_judge import JudgedClip, clearly_finished_counts, held_and_ended, overruled_counts, separation
from voxloop.voice.turns import TurnDetectionConfig


def test_separation_is_the_chance_a_whole_sentence_scores_above_a_half_one():
    assert separation([0.0, 0.1], [0.5, 0.6]) == 1.0
    assert separation([0.5], [0.1]) == 0.0
    assert separation([0.2], [0.2]) == 0.5


def test_the_llm_rule_holds_on_a_continuer_whatever_the_score_and_otherwise_on_a_low_score():
    clips = [JudgedClip("a", "and the", "whole.", "continuer", None, 0.5, 0.4),
             JudgedClip("b", "He could wait.", "He could wait no longer.", None, None, 0.001, 0.3),
             JudgedClip("c", "ask not what", "for your country", "unpunctuated", "unpunctuated", 0.0, 0.7)]
    assert held_and_ended(clips, threshold=0.01) == (3, 3)
    # The words-only rule: "He could wait." looks finished, and the unpunctuated whole is held.
    assert held_and_ended(clips, threshold=None) == (2, 2)


def test_clearly_finished_counts_the_server_rule_with_and_without_the_heard_stop():
    clips = [JudgedClip("a", "He could wait.", "He could wait no longer.", None, None, 0.5, 0.3, 0.2, 0.9),
             JudgedClip("b", "It is of the first importance.", "It is fine in form.", None, None, 0.005, 0.1, 0.9, 0.95),
             JudgedClip("c", "and the", "ask what you can do", "continuer", "unpunctuated", 0.5, 0.6, 0.99, 0.99)]
    # The LLM alone: only a's half (a stop, and 0.5 >= 0.4) is clearly finished.
    assert clearly_finished_counts(clips, TurnDetectionConfig(heard_stop_threshold=0.0)) == (1, 0)
    # With the heard stop: a's and b's wholes too; b's half stays held by the LLM (0.005 < 0.015),
    # c's half by its continuer, and c's whole has no stop.
    assert clearly_finished_counts(clips, TurnDetectionConfig(heard_stop_threshold=0.85)) == (1, 2)
    # b's half, heard at 0.9, is overruled from the LLM's hold to the usual pause: still not clearly finished.
    assert clearly_finished_counts(clips, TurnDetectionConfig(heard_stop_threshold=0.85, heard_stop_overrule_threshold=0.9)) == (1, 2)


def test_overruled_counts_the_llm_holds_a_confident_heard_stop_releases():
    clips = [JudgedClip("b", "It is of the first importance.", "It is fine in form.", None, None, 0.005, 0.1, 0.9, 0.95),
             JudgedClip("d", "and the", "It should be fine and form.", "continuer", None, 0.001, 0.011, 0.99, 0.93),
             JudgedClip("e", "He went to", "He went to the shop", "continuer", "unpunctuated", 0.5, 0.001, 0.1, 0.97)]
    # b's half and d's whole; d's half is held by its continuer, e's whole has no written stop.
    assert overruled_counts(clips, TurnDetectionConfig(heard_stop_overrule_threshold=0.9)) == (1, 1)
    assert overruled_counts(clips, TurnDetectionConfig(heard_stop_overrule_threshold=0.92)) == (0, 1)
    assert overruled_counts(clips, TurnDetectionConfig(heard_stop_overrule_threshold=0.0)) == (0, 0)
