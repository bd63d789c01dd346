from voxloop.voice.history import Conversation, ConversationItem, heard_text


def spoken_item() -> ConversationItem:
    item = ConversationItem("a1", "assistant")
    item.add_spoken("Hello there.", 1000)
    item.add_spoken("The weather is sunny and warm today.", 3000)
    return item


def test_truncate_keeps_whole_clauses_before_the_cut():
    item = spoken_item()
    item.truncate(1000)
    assert item.text == "Hello there."


def test_truncate_inside_a_clause_keeps_the_words_spoken_so_far():
    item = spoken_item()
    item.truncate(1000 + 1500)  # half of the second clause
    assert item.text == "Hello there. The weather is"  # "sunny" is only half spoken at that point


def test_truncate_at_zero_keeps_nothing_and_can_be_redone_later():
    item = spoken_item()
    item.truncate(0)
    assert item.text == ""
    item.truncate(4000)
    assert item.text == "Hello there. The weather is sunny and warm today."


def test_heard_text_without_segments_is_empty():
    assert heard_text([], 500) == ""


def test_chat_messages_merge_consecutive_user_turns_and_skip_empty_ones():
    conversation = Conversation()
    conversation.add(ConversationItem("u1", "user", "What is"))
    conversation.add(ConversationItem("u2", "user", "the time?"))
    conversation.add(ConversationItem("a1", "assistant", ""))
    conversation.add(ConversationItem("a2", "assistant", "Noon."))
    assert conversation.chat_messages("Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the time?"},
        {"role": "assistant", "content": "Noon."},
    ]


def test_add_returns_previous_item_id():
    conversation = Conversation()
    assert conversation.add(ConversationItem("x", "user", "hi")) is None
    assert conversation.add(ConversationItem("y", "user", "hi")) == "x"


def test_a_stable_window_keeps_the_prompt_start_for_many_turns():
    def first_user_message(conversation: Conversation) -> str:
        return conversation.chat_messages("sys")[1]["content"]

    stable, sliding = Conversation(max_items=8, window="stable"), Conversation(max_items=8, window="sliding")
    starts_stable, starts_sliding = [], []
    for turn in range(12):
        for conversation in (stable, sliding):
            conversation.add(ConversationItem(f"u{turn}", "user", f"question {turn}"))
            conversation.add(ConversationItem(f"a{turn}", "assistant", f"answer {turn}"))
        starts_stable.append(first_user_message(stable))
        starts_sliding.append(first_user_message(sliding))
        assert len(stable.chat_messages("sys")) - 1 <= 8 and len(sliding.chat_messages("sys")) - 1 <= 8
    # Sliding changes the prompt's start on every turn once full; stable only every max_items/2 items.
    assert len(set(starts_sliding)) == 12 - 4 + 1
    assert len(set(starts_stable)) == 1 + (12 * 2 - 8 + 3) // 4


def test_the_next_prompt_prefix_is_how_the_next_turns_prompt_starts_across_window_trims():
    for window in ("stable", "sliding"):
        conversation = Conversation(max_items=6, window=window)
        for turn in range(10):
            prefix = conversation.next_prompt_prefix("sys")
            speculative = conversation.chat_messages("sys", pending_user_text=f"question {turn}")
            conversation.add(ConversationItem(f"u{turn}", "user", f"question {turn}"))
            committed = conversation.chat_messages("sys")
            # The speculative prompt (made before the user item exists) and the committed one agree,
            # and both start with the prefix that could be evaluated before the turn began.
            assert speculative == committed, (window, turn)
            assert committed[:len(prefix)] == prefix and committed[len(prefix):] == [{"role": "user", "content": f"question {turn}"}]
            conversation.add(ConversationItem(f"a{turn}", "assistant", f"answer {turn}"))


def test_a_reply_cut_off_in_its_first_second_is_left_out_and_the_users_words_join_up():
    conversation = Conversation()
    conversation.add(ConversationItem("u1", "user", "And so my fellow Americans,"))
    false_start = ConversationItem("a1", "assistant")
    false_start.add_spoken("The way of the world.", 1500)
    false_start.truncate(400)
    conversation.add(false_start)
    conversation.add(ConversationItem("u2", "user", "ask not what your country can do for you."))
    heard = ConversationItem("a2", "assistant")
    heard.add_spoken("A famous line.", 1200)
    heard.add_spoken("It asks for service.", 1500)
    heard.truncate(1500)  # heard past the first second: an answer, kept as heard
    conversation.add(heard)
    assert false_start.text == "The"  # the item itself still says what was played
    assert conversation.chat_messages("sys")[1:] == [
        {"role": "user", "content": "And so my fellow Americans, ask not what your country can do for you."},
        {"role": "assistant", "content": "A famous line. It"},
    ]
