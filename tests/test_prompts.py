"""What a prompt's cache key covers: the system prompt, every block, images by their bytes."""

from __future__ import annotations

import base64

from queries.prompts import Prompt
from queries.services.cache import normalize_query, query_hash


def key(prompt: Prompt, *, model: str | None = None, servers: tuple[str, ...] = ()) -> str:
    return query_hash(
        normalized=normalize_query(prompt.text()), model=model, servers=servers, prompt=prompt.key_fields()
    )


def image(data: bytes, media_type: str = "image/png") -> dict:
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": base64.b64encode(data).decode()},
    }


def test_a_plain_prompt_hashes_as_the_string_query_always_did() -> None:
    assert key(Prompt.of_text("What is 2+2?")) == query_hash(
        normalized=normalize_query("What is 2+2?"), model=None, servers=()
    )
    assert Prompt.of_text("x").job_content() is None


def test_the_system_prompt_every_block_model_and_servers_change_the_key() -> None:
    base = Prompt(content=[{"type": "text", "text": "Describe it"}, image(b"one")], system="Be brief.")
    keys = {
        key(base),
        key(Prompt(content=base.content, system="Be verbose.")),
        key(Prompt(content=[base.content[0], image(b"two")], system=base.system)),
        key(Prompt(content=[base.content[0], image(b"one", "image/jpeg")], system=base.system)),
        key(Prompt(content=[*base.content, {"type": "text", "text": "more"}], system=base.system)),
        key(Prompt.of_text("Describe it")),
        key(base, model="sonnet"),
        key(base, servers=("fetch",)),
    }
    assert len(keys) == 8


def test_the_same_image_is_the_same_key_and_is_keyed_by_a_digest_not_its_data() -> None:
    data = b"\x89PNG" + bytes(range(256)) * 100
    one = Prompt(content=[{"type": "text", "text": "What is this?"}, image(data)])
    two = Prompt(content=[{"type": "text", "text": "What is this?"}, image(data)])
    assert key(one) == key(two)
    fields = one.key_fields()
    assert fields is not None
    assert base64.b64encode(data).decode() not in str(fields)
    assert len(fields["content"][1]["sha256"]) == 64


def test_text_is_the_text_blocks_joined() -> None:
    prompt = Prompt(content=[{"type": "text", "text": "a"}, image(b"x"), {"type": "text", "text": "b"}])
    assert prompt.text() == "a\n\nb"
    assert prompt.job_content() == prompt.content
