from voxloop.voice.clauses import ClauseChunker, speakable


def stream(text: str, chunker: ClauseChunker, step: int = 3) -> list[str]:
    out = []
    for i in range(0, len(text), step):
        out += chunker.push(text[i:i + step])
    return out + chunker.flush()


def test_first_clause_is_cut_at_the_first_comma_once_long_enough():
    chunker = ClauseChunker(first_clause_min_chars=12)
    assert chunker.push("Well, the weather today, ") == ["Well, the weather today,"]


def test_later_clauses_wait_for_sentence_ends():
    text = "Sure, I can help. The capital of France, which is lovely, is Paris. Anything else?"
    assert stream(text, ClauseChunker(first_clause_min_chars=4)) == [
        "Sure,", "I can help.", "The capital of France, which is lovely, is Paris.", "Anything else?"]


def test_a_boundary_needs_the_next_character():
    chunker = ClauseChunker()
    assert chunker.push("It costs 3.") == []
    assert chunker.push("5 dollars. Next") == ["It costs 3.5 dollars."]
    assert chunker.flush() == ["Next"]


def test_abbreviations_and_initials_do_not_end_sentences():
    assert stream("Dr. Smith met J. R. Tolkien. Then he left.", ClauseChunker()) == [
        "Dr. Smith met J. R. Tolkien.", "Then he left."]


def test_long_run_on_text_is_cut_before_max_chars():
    text = " ".join(["word"] * 100)
    clauses = stream(text, ClauseChunker(max_chars=60))
    assert all(len(c) <= 60 for c in clauses)
    assert " ".join(clauses) == text


def test_punctuation_only_pieces_are_dropped():
    assert stream("... ! Hello there.", ClauseChunker()) == ["Hello there."]


def test_speakable_strips_markdown_and_emoji():
    assert speakable("**Sure!** Here is `code` 😀 for you") == "Sure! Here is code for you"


def test_a_long_first_sentence_is_cut_at_a_word_boundary_when_capped():
    text = "I think that the weather over the northern mountains will be lovely tomorrow morning. Bring a coat."
    capped = stream(text, ClauseChunker(first_clause_max_chars=40))
    assert capped[0] == "I think that the weather over the"
    assert len(capped[0]) <= 40 and " ".join(capped) == text
    assert stream(text, ClauseChunker())[0] == text.split(". ")[0] + "."


def test_the_first_clause_can_end_at_a_phrase_from_twelve_characters():
    chunker = ClauseChunker(first_clause_max_chars=24, first_clause_phrases=True)
    assert stream("I'm glad to hear that you asked about the weather.", chunker)[0] == "I'm glad to hear"
    # Only once the next word has begun is the last one known to be whole.
    chunker = ClauseChunker(first_clause_max_chars=24, first_clause_phrases=True)
    assert chunker.push("The scenery looks") == []
    assert chunker.push(" lovely") == ["The scenery looks"]


def test_a_phrase_never_ends_on_a_word_that_leads_into_the_next():
    first = [stream(text, ClauseChunker(first_clause_max_chars=24, first_clause_phrases=True))[0]
             for text in ("Here's a revised version of your sentence.", "When it comes to the use of ugly ones.",
                          "A man has been unable to reap any advantage.", "Your sentence is clear, but short.")]
    assert first == ["Here's a revised", "When it comes", "A man has been unable", "Your sentence"]


def test_at_the_cap_the_first_clause_ends_at_the_last_phrase_that_fits():
    text = "The answer to that question is no."
    assert stream(text, ClauseChunker(first_clause_max_chars=24, first_clause_phrases=True))[0] == "The answer"
    assert stream(text, ClauseChunker(first_clause_max_chars=24))[0] == "The answer to that"


def test_phrases_only_shape_the_first_clause():
    text = "Sure thing, my friend. The capital of France is Paris and it is lovely in the spring."
    assert stream(text, ClauseChunker(first_clause_max_chars=24, first_clause_phrases=True)) == [
        "Sure thing, my friend.", "The capital of France is Paris and it is lovely in the spring."]


def test_a_later_clause_in_a_hurry_is_cut_as_early_as_a_first_one():
    text = "Sure thing, my friend. The capital of France, which is lovely, is Paris and it is lovely in the spring."
    chunker = ClauseChunker(first_clause_max_chars=24, first_clause_phrases=True)
    assert chunker.push(text[:23]) == ["Sure thing, my friend."]
    assert chunker.push(text[23:47]) == []  # unhurried, the comma waits for the sentence end
    assert chunker.push(text[47:50], hurry=True) == ["The capital of France,"]
    assert chunker.push(text[50:70]) == []
    assert chunker.push(text[70:80], hurry=True) == ["which is lovely,"]
    # No comma: a phrase end from 12 characters on, or else the last one by 24 characters. One
    # clause only: the rest is already written, so it waits for the sentence end.
    assert chunker.push(text[80:], hurry=True) == ["is Paris"]
    assert chunker.flush() == ["and it is lovely in the spring."]
