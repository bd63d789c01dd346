"""Settling the words before a pause inside a turn: when, what, and how they join the rest."""

from voxloop.voice.asr import SAMPLE_RATE, Transcript
from voxloop.voice.settled_speech import HEAD_TRAILING_MS, SettledSpeech, after_settled, agreed_prefix

MS = SAMPLE_RATE // 1000
HEAD = "For a full hour he had paced up and down, waiting."


def spoken(text: str, seconds: float = 2.0) -> Transcript:
    return Transcript(text, seconds)


def test_a_transcribed_pause_settles_once_a_longer_partial_agrees_and_keeps_the_partials_wording():
    settled = SettledSpeech(start_sample=1000)
    # The speculation at the pause (3 s into the turn) transcribed up to 80 ms into it; the user went on after 300 ms.
    settled.paused(pause_start=3000 * MS, resumed=3300 * MS, transcribed=(3080 * MS, spoken(HEAD)))
    assert settled.untranscribed_pause() is None  # nothing left to transcribe for it
    settled.agree("For a full hour he had paced up and down, waiting, but he".split())
    assert settled.end_sample == 3080 * MS
    # The partial saw both sides of the pause: its comma, not the speculation's full stop.
    assert " ".join(settled.words) == "For a full hour he had paced up and down, waiting,"
    assert settled.snapshot() == (3080 * MS, settled.words) and settled.snapshot()[1] is not settled.words


def test_a_partial_that_disagrees_settles_nothing_and_a_later_one_that_agrees_does():
    settled = SettledSpeech(start_sample=0)
    settled.paused(3000 * MS, 3300 * MS, (3080 * MS, spoken(HEAD)))
    settled.agree("For a full hour he had raced up and down, waiting, but".split())
    assert settled.snapshot() == (0, [])
    settled.agree("For a full hour he had paced up and down, waiting, but he".split())
    assert settled.snapshot() == (3080 * MS, "For a full hour he had paced up and down, waiting,".split())


def test_a_partial_with_no_word_past_the_pause_yet_leaves_it_to_the_next():
    settled = SettledSpeech(start_sample=0)
    settled.paused(3000 * MS, 3300 * MS, (3080 * MS, spoken(HEAD)))
    settled.agree("For a full hour he had paced up and down, waiting.".split())  # the user has only just gone on
    assert settled.snapshot() == (0, [])
    settled.agree("For a full hour he had paced up and down, waiting, but".split())
    assert settled.snapshot() == (3080 * MS, "For a full hour he had paced up and down, waiting,".split())


def test_short_pauses_and_short_heads_are_not_worth_settling():
    settled = SettledSpeech(start_sample=0)
    settled.paused(3000 * MS, 3128 * MS, (3080 * MS, spoken(HEAD)))  # a soft word ending, maybe
    settled.paused(1000 * MS, 1400 * MS, (1080 * MS, spoken("For a full")))  # a second of speech
    assert settled.untranscribed_pause() is None
    settled.agree("For a full hour he had paced".split())
    assert settled.snapshot() == (0, [])


def test_without_a_finished_speculation_the_next_partial_pass_transcribes_the_head():
    settled = SettledSpeech(start_sample=0)
    settled.paused(3000 * MS, 3300 * MS)  # the speculation had not finished when the user went on
    end = settled.untranscribed_pause()
    assert end == (3000 + HEAD_TRAILING_MS) * MS  # inside the pause
    settled.transcribed_pause(end, spoken(HEAD))
    assert settled.untranscribed_pause() is None
    settled.agree(HEAD.split() + ["but"])
    assert settled.snapshot() == (end, HEAD.split())


def test_a_speculation_that_ran_past_the_pause_is_not_used():
    settled = SettledSpeech(start_sample=0)
    # Its audio ends 20 ms before the user went on: the next word's onset may be in it.
    settled.paused(3000 * MS, 3200 * MS, (3180 * MS, spoken(HEAD)))
    assert settled.untranscribed_pause() == 3100 * MS


def test_pauses_settle_one_after_another_and_a_new_pause_replaces_one_still_untranscribed():
    settled = SettledSpeech(start_sample=0)
    settled.paused(3000 * MS, 3300 * MS, (3080 * MS, spoken(HEAD)))
    settled.agree(HEAD.split() + ["but"])
    settled.paused(4000 * MS, 4300 * MS)  # too soon after the settled start
    assert settled.untranscribed_pause() is None
    settled.paused(5000 * MS, 5200 * MS)
    settled.paused(6000 * MS, 6240 * MS)  # the user paused again before a partial pass came
    end = settled.untranscribed_pause()
    assert end == (6000 + HEAD_TRAILING_MS) * MS
    settled.transcribed_pause(end, spoken("but he could wait"))  # the pass covers only what follows the settled words
    settled.agree(HEAD.split() + "but he could wait no".split())
    assert settled.snapshot() == (end, HEAD.split() + "but he could wait".split())


def test_an_untranscribed_pause_does_not_displace_one_that_costs_no_pass():
    settled = SettledSpeech(start_sample=0)
    settled.paused(3000 * MS, 3300 * MS, (3080 * MS, spoken(HEAD)))
    settled.paused(6000 * MS, 6300 * MS)
    assert settled.untranscribed_pause() is None
    settled.agree(HEAD.split() + ["but"])
    assert settled.snapshot()[0] == 3080 * MS


def test_a_speculation_whose_words_were_rejected_settles_nothing_by_itself():
    settled = SettledSpeech(start_sample=0)
    settled.paused(3000 * MS, 3300 * MS, (3080 * MS, Transcript("", 3.1, rejected="decoder judged it non-speech")))
    settled.agree(["anything"])
    assert settled.snapshot() == (0, [])  # never audio settled as no words
    assert settled.untranscribed_pause() == 3100 * MS  # a pass of its own may find them


def test_a_head_pass_that_found_no_words_gives_the_pause_up():
    settled = SettledSpeech(start_sample=0)
    settled.paused(3000 * MS, 3300 * MS)
    end = settled.untranscribed_pause()
    settled.transcribed_pause(end, Transcript("", 3.1, rejected="no words"))
    assert settled.untranscribed_pause() is None
    settled.agree(["anything", "at", "all"])
    assert settled.snapshot() == (0, [])


def test_the_rest_of_the_turn_is_joined_after_the_settled_words():
    tail = Transcript("but he could wait no longer.", 1.8, no_speech_prob=0.01, avg_logprob=-0.2, started=12.5)
    whole = after_settled(HEAD.split(), 3 * SAMPLE_RATE, tail)
    assert whole.text == HEAD + " but he could wait no longer."
    assert whole.audio_seconds == 4.8 and whole.started == 12.5 and whole.avg_logprob == -0.2
    # A rest with no words (a breath, rejected) leaves the settled words, which are no hallucination.
    breath = Transcript("", 0.4, rejected="no words")
    assert after_settled(HEAD.split(), 3 * SAMPLE_RATE, breath).text == HEAD
    assert after_settled(HEAD.split(), 3 * SAMPLE_RATE, breath).rejected is None
    assert after_settled([], 0, tail) is tail


def test_agreement_ignores_case_and_punctuation():
    assert agreed_prefix("Printing, in the only".split(), "printing in the Only sense".split()) == 4
    assert agreed_prefix("we can learn".split(), "we can't learn".split()) == 1  # an apostrophe makes another word


def test_the_partial_pass_words_heard_in_their_sentence_replace_the_rest_pass_guesses():
    settled = "Anything is possible in football".split()
    # The partial pass heard "Celtic" after "football", and its audio ended inside "again".
    heard = "Anything is possible in football and we can beat Celtic ag".split()
    rest = Transcript("and we can beat self-dick again.", 2.0)
    assert after_settled(settled, 3 * SAMPLE_RATE, rest, heard).text == "Anything is possible in football and we can beat Celtic again."
    # The same when the guess is two words for one.
    rest = Transcript("and we can beat self dick again.", 2.0)
    assert after_settled(settled, 3 * SAMPLE_RATE, rest, heard).text == "Anything is possible in football and we can beat Celtic again."


def test_heard_words_join_the_rest_at_the_last_word_they_share():
    settled = "Printing then for our purpose".split()
    heard = "Printing then for our purpose may be considered as the art of".split()
    rest = Transcript("maybe consider it as the art of making books.", 2.0)
    # "of", heard last, may be a cut-off "often": it only joins as the start of a word in the rest,
    # where the words between match in number. Here "of" itself is shared, so the join is there.
    assert after_settled(settled, 3 * SAMPLE_RATE, rest, heard).text == \
        "Printing then for our purpose may be considered as the art of making books."
    # Heard words with no word in common with the rest: the rest stands alone.
    heard = "Printing then for our purpose maybe".split()
    assert after_settled(settled, 3 * SAMPLE_RATE, Transcript("are the art of making books.", 2.0), heard).text == \
        "Printing then for our purpose are the art of making books."


def test_the_rest_stands_alone_when_the_partial_does_not_start_with_the_settled_words():
    settled = "Printing then for our purpose".split()
    heard = "Printing than for our purpose may be considered as the art of".split()
    rest = Transcript("maybe consider it as the art of making books.", 2.0)
    assert after_settled(settled, 3 * SAMPLE_RATE, rest, heard).text == "Printing then for our purpose " + rest.text
    assert after_settled(settled, 3 * SAMPLE_RATE, rest, settled).text == "Printing then for our purpose " + rest.text
