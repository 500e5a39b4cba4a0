"""Conversation lineage: the chain hash that decides which stored session a replayed history continues."""

from __future__ import annotations

import base64

from queries.lineage import (
    History,
    answer_key,
    history_split,
    lineage_chain,
    lineage_next,
    lineage_root,
    user_key,
)

PNG = base64.b64encode(b"\x89PNG fake image bytes").decode()


def conversation(*turns: tuple[str, str], last: str = "next?") -> list[dict]:
    messages: list[dict] = []
    for user, answer in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return [*messages, {"role": "user", "content": last}]


def test_a_history_continues_the_lineage_its_answers_were_stored_under():
    root = lineage_root()
    after_one = lineage_next(root, user="Name a colour.", answer="Blue.")
    after_two = lineage_next(after_one, user="Why?", answer="The sky.")
    history = history_split(conversation(("Name a colour.", "Blue."), ("Why?", "The sky.")))
    assert history is not None
    assert history.prefix == after_two
    assert lineage_chain(history.pairs) == [root, after_one, after_two]
    assert history.last == [{"type": "text", "text": "next?"}]


def test_the_same_words_in_another_conversation_have_another_lineage():
    a = lineage_next(
        lineage_next(lineage_root(), user="Name a colour.", answer="Blue."), user="Why?", answer="x"
    )
    b = lineage_next(
        lineage_next(lineage_root(), user="Name a fruit.", answer="Pear."), user="Why?", answer="x"
    )
    assert a != b


def test_an_edited_user_turn_or_answer_breaks_the_match():
    stored = history_split(conversation(("Name a colour.", "Blue."), ("Why?", "The sky.")))
    edited_user = history_split(conversation(("Name a color.", "Blue."), ("Why?", "The sky.")))
    edited_answer = history_split(conversation(("Name a colour.", "Blue!"), ("Why?", "The sky.")))
    truncated = history_split(conversation(("Why?", "The sky.")))
    assert (
        stored is not None and edited_user is not None and edited_answer is not None and truncated is not None
    )
    assert len({stored.prefix, edited_user.prefix, edited_answer.prefix, truncated.prefix}) == 4


def test_a_shorter_prefix_of_a_stored_conversation_is_one_of_its_lineages():
    long = history_split(conversation(("a", "1"), ("b", "2"), ("c", "3")))
    forked = history_split(conversation(("a", "1"), last="b, but otherwise"))
    assert long is not None and forked is not None
    assert forked.prefix == lineage_chain(long.pairs)[1]


def test_canonical_form_ignores_what_clients_change_in_transit():
    assert user_key("  Hello\n") == user_key(
        [{"type": "text", "text": "Hello", "cache_control": {"type": "ephemeral"}}]
    )
    # NFC: a composed and a decomposed é are the same text.
    assert user_key("caf\u00e9") == user_key("cafe\u0301")
    assert answer_key("Blue.") == answer_key([{"type": "text", "text": "Blue."}]) == answer_key(" Blue.\n")
    # Only the answer's text counts (a client may keep or drop thinking blocks).
    assert answer_key([{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "Blue."}]) == "Blue."
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    other = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG[:-4] + "AAAA"},
    }
    assert user_key([image]) == user_key([dict(image)])
    assert user_key([image]) != user_key([other])


def test_the_system_prompt_is_part_of_the_lineage():
    assert lineage_root(system="Be brief.") != lineage_root()
    a = history_split(conversation(("a", "1")), system="Be brief.")
    b = history_split(conversation(("a", "1")))
    assert a is not None and b is not None and a.prefix != b.prefix


def test_consecutive_messages_of_one_role_are_one_turn():
    merged = history_split(
        [
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "1"},
            {"role": "user", "content": "c"},
        ]
    )
    assert merged is not None
    assert merged.pairs == (
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], [{"type": "text", "text": "1"}]),
    )


def test_messages_that_do_not_run_from_user_to_user_have_no_lineage():
    assert history_split([]) is None
    assert history_split([{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]) is None
    assert history_split([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]) is None
    assert history_split([{"role": "tool", "content": "x"}]) is None
    first_turn = history_split([{"role": "user", "content": "x"}], system="s")
    assert first_turn == History(pairs=(), last=[{"type": "text", "text": "x"}], system="s")
    assert first_turn.prefix == lineage_root(system="s")
