"""The benchmark's count of turns cut off before the speaker finished, the paused-speech set it
is measured on, and the slow-turn table that explains the tail."""

import numpy as np

from voxloop.bench.paused_speech import RATE, Word, choose_pause_point, insert_pause, quietest_cut
from voxloop.bench.report import chain_table, markdown_table, slow_turns_table, summarize
from voxloop.bench.turns import FALSE_END_MARGIN_MS, TurnMeasurement, is_false_end


def test_a_turn_end_well_before_the_true_end_of_speech_is_a_false_end():
    assert is_false_end(2000, 4000)
    assert not is_false_end(4000 - FALSE_END_MARGIN_MS + 10, 4000)  # VAD and energy disagree a little
    assert not is_false_end(4100, 4000)


def words(*texts: str) -> list[Word]:
    return [Word(text, i * 0.5, i * 0.5 + 0.4) for i, text in enumerate(texts)]


def test_the_pause_goes_inside_a_clause_near_the_middle():
    sentence = words(" The", " ship", " should", " be", " in", " within", " a", " week.")
    point = choose_pause_point(sentence)
    assert 1 <= point <= len(sentence) - 3
    assert point in (3, 4)  # the boundaries nearest the middle (after "be" or "in")


def test_no_pause_after_a_word_that_closes_a_clause_or_in_a_short_clip():
    assert choose_pause_point(words(" Yes,", " I", " think", " so.")) is None
    sentence = words(" One,", " two,", " three,", " four,", " five,", " six.")
    assert choose_pause_point(sentence) is None


def test_the_cut_falls_in_the_quietest_stretch_between_the_words_and_keeps_all_speech():
    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal(RATE)).astype(np.float32)
    audio[int(0.45 * RATE):int(0.5 * RATE)] *= 0.01  # the gap between the two words
    cut = quietest_cut(audio, Word(" be", 0.1, 0.46), Word(" in", 0.5, 0.9))
    assert 0.45 * RATE <= cut < 0.5 * RATE
    paused = insert_pause(audio, cut, 650)
    assert paused.size == audio.size + 650 * RATE // 1000
    assert np.array_equal(paused[:cut], audio[:cut]) and np.array_equal(paused[cut + 650 * RATE // 1000:], audio[cut:])
    assert not paused[cut:cut + 650 * RATE // 1000].any()


def turn(clip: str, ms: float, false_ends: int = 0, **timings) -> TurnMeasurement:
    return TurnMeasurement(clip, "A", 0, 3.0, 2.5, voice_to_voice_ms=ms, end_of_turn_ms=ms - 20, asr_ms=0, llm_ms=10,
                           tts_ms=10, transcript="so it goes", wer=0.0, false_ends=false_ends, turn_ends=1 + false_ends,
                           server_timings=timings)


def test_the_summary_counts_turns_cut_off_early():
    turns = [turn("a", 500), turn("b", 600, false_ends=2), turn("c", 700, false_ends=1)]
    summary = summarize(turns)
    assert summary["false_end_turns"] == 2
    assert "| 2/3 |" in markdown_table({"A": summary})


def test_the_slow_turn_table_lists_only_slow_turns_slowest_first_with_the_server_facts():
    turns = [turn("fast", 500), turn("held", 950, end_silence_ms=900, unfinished="unpunctuated", speculation="reply"),
             turn("cold", 1200, llm_prompt_tokens=412, llm_cached_tokens=3, speculation="reply")]
    table = slow_turns_table(turns, over_ms=800).splitlines()
    assert len(table) == 2 + 2
    assert table[2].startswith("| cold |") and "| 412 | 3 |" in table[2]
    assert table[3].startswith("| held |") and "| 900 | unpunctuated | reply |" in table[3]
    assert "No turn" in slow_turns_table(turns, over_ms=5000)


def test_the_summary_shows_a_conversation_stuck_on_one_reply():
    """One-word replies copied turn after turn are cheap to voice; the summary must make that visible."""
    stuck = [turn(name, 500) for name in "abcd"]
    for t in stuck:
        t.reply, t.reply_audio_ms = "The way of", 800.0
    varied = [turn(name, 700) for name in "abcd"]
    for index, t in enumerate(varied):
        t.reply, t.reply_audio_ms = f"A real answer number {index}.", 4000.0 + 1000 * index
    summaries = {"stuck": summarize(stuck), "varied": summarize(varied)}
    assert (summaries["stuck"]["distinct_replies"], summaries["stuck"]["reply_s_median"]) == (1, 0.8)
    assert (summaries["varied"]["distinct_replies"], summaries["varied"]["reply_s_median"]) == (4, 5.5)
    table = markdown_table(summaries)
    assert "| 1 | 0.8 |" in table and "| 4 | 5.5 |" in table


def test_the_summary_counts_replies_the_token_cap_cut_mid_sentence():
    turns = [turn(name, 600) for name in "abcd"]
    for t, (reply, status) in zip(turns, [("Fine. And I'm here", "completed"), ('He said "go."', "completed"),
                                          ("Why not?", "incomplete"), ("Cut by the user", "cancelled")]):
        t.reply, t.reply_status = reply, status
    summary = summarize(turns)
    assert summary["replies_cut_mid_sentence"] == 1  # a reply the user cut in on is not the model's doing
    assert markdown_table({"A": summary}).splitlines()[2].endswith("| 1 |")


def test_the_chain_table_gives_each_step_after_the_previous_one_and_when_the_audio_was_ready():
    marks = dict(speech_paused_ms=-340, asr_started_ms=-320, transcript_final_ms=-180, llm_start_ms=-150, llm_first_token_ms=-115,
                 llm_first_clause_ms=-60, tts_first_audio_ms=20)
    later = {name: ms + 100 for name, ms in marks.items()}
    table = chain_table({"A": [turn("a", 600, **marks), turn("b", 650, **later), turn("c", 700)],
                         "B": [turn("d", 500, **{**marks, "llm_first_token_ms": None})]}).splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")[1:] for line in table[2:]}
    assert rows["pause reported (eager start), relative to `speech_stopped`"] == ["-290", "-340"]
    assert rows["Whisper waiting for the model"] == ["20", "20"]
    assert rows["Whisper"] == ["140", "140"]
    # a missing mark leaves out only the steps on either side of it
    assert rows["first token"] == ["35", "–"] and rows["first clause"] == ["55", "–"]
    assert rows["first audio ready, relative to `speech_stopped`"] == ["70", "20"]


def test_the_summary_counts_replies_whose_audio_ran_dry_while_playing():
    turns = [turn(name, 600) for name in "abc"]
    for t, stall in zip(turns, [0.0, 45.0, 120.0]):
        t.playback_stall_ms = stall
    turns[1].playback_stalls = [{"at_audio_ms": 500.0, "wait_ms": 45.0, "waited_for_ms": {"speech": 45.0}}]
    turns[2].playback_stalls = [{"at_audio_ms": 900.0, "wait_ms": 120.0, "waited_for_ms": {"text": 100.0, "speech": 20.0}}]
    summary = summarize(turns)
    assert (summary["stalled_replies"], summary["playback_stall_ms_max"]) == (2, 120.0)
    assert summary["stall_s_by_cause"] == {"speech": 0.07, "text": 0.1}  # seconds, all stalls added up
    assert "| 2 (120); speech 0.1 s, text 0.1 s |" in markdown_table({"A": summary})
