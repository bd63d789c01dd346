"""The arithmetic of the offline turn-completion check (bench/turn_judge.py)."""

from voxloop.bench.turn_judge import JudgedClip, held_and_ended, separation


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
