"""One conversation, whichever API it came through, as the pipeline's Prompt.

Both APIs reduce a request to a system prompt and a list of turns of canonical content blocks
(``{"type": "text", "text"}`` and ``{"type": "image", "source": {"type": "base64", "media_type",
"data"}}``), then ``prompt_build`` makes the Prompt: the earlier turns as a transcript at the head of
its content, the last user message's blocks after it. The same conversation therefore makes the same
Prompt, and so the same cache entry, through either API.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from compat.errors import ApiError, invalid
from queries.prompts import Prompt

IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
}

TRANSCRIPT_HEAD = "The conversation so far, oldest turn first:\n\n"
TRANSCRIPT_TAIL = "\n\nThe user's latest message follows. Answer it as the assistant.\n\n"


@dataclass
class Turn:
    role: str  # "user" or "assistant"
    blocks: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ImageBudget:
    """Counts the images of one request against V1_MAX_IMAGES."""

    count: int = 0

    def take(self, where: str, param: str) -> None:
        self.count += 1
        if self.count > settings.V1_MAX_IMAGES:
            raise invalid(
                f"{where}: too many images: at most {settings.V1_MAX_IMAGES} per request.", param=param
            )


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _sniffed_media_type(data: bytes) -> str | None:
    for media_type, prefixes in _MAGIC.items():
        if data.startswith(prefixes):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_block(*, media_type: str, data: str, where: str, param: str, budget: ImageBudget) -> dict[str, Any]:
    """A base64 image block, checked: a known media type, real base64, the size limit, matching bytes.

    ``where`` is the field's path as the Anthropic API writes it, ``param`` as OpenAI does.
    """
    budget.take(where, param)
    if media_type not in IMAGE_MEDIA_TYPES:
        allowed = ", ".join(f"'{t}'" for t in IMAGE_MEDIA_TYPES)
        raise invalid(f"{where}.media_type: Input should be {allowed}", param=param)
    limit = settings.V1_MAX_IMAGE_BYTES
    # Four base64 characters per three bytes: refuse what is too big before decoding it.
    if len(data) * 3 // 4 > limit + 3:
        raise ApiError(
            400,
            f"{where}.data: image exceeds {_megabytes(limit)} maximum: "
            f"about {len(data) * 3 // 4} bytes > {limit} bytes",
            param=param,
            code="image_too_large",
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{where}.data: the image data is not valid base64", param=param) from None
    if len(raw) > limit:
        raise ApiError(
            400,
            f"{where}.data: image exceeds {_megabytes(limit)} maximum: {len(raw)} bytes > {limit} bytes",
            param=param,
            code="image_too_large",
        )
    sniffed = _sniffed_media_type(raw)
    if sniffed is None:
        raise invalid(f"{where}.data: the data is not a JPEG, PNG, GIF or WebP image", param=param)
    if sniffed != media_type:
        raise invalid(
            f"{where}: the image was specified using the {media_type} media type, "
            f"but the image appears to be a {sniffed} image",
            param=param,
        )
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _megabytes(limit: int) -> str:
    return f"{limit / (1024 * 1024):g} MB"


def messages_count_check(count: int, *, message: str) -> None:
    """413 past V1_MAX_MESSAGES; ``message`` says so in the API's words ({count}, {limit})."""
    if count > settings.V1_MAX_MESSAGES:
        raise ApiError(413, message.format(count=count, limit=settings.V1_MAX_MESSAGES), param="messages")


def turns_merge(turns: list[Turn]) -> list[Turn]:
    """Consecutive turns of one role as one turn (the Messages API combines them the same way)."""
    merged: list[Turn] = []
    for turn in turns:
        if merged and merged[-1].role == turn.role:
            merged[-1].blocks.extend(turn.blocks)
        else:
            merged.append(Turn(turn.role, list(turn.blocks)))
    return merged


def _transcript(turns: list[Turn]) -> list[dict[str, Any]]:
    """The earlier turns as text blocks, each turn's role around its text; images stay image blocks."""
    blocks: list[dict[str, Any]] = []
    pending = TRANSCRIPT_HEAD

    for number, turn in enumerate(turns):
        pending += f'<turn role="{turn.role}">\n'
        for block in turn.blocks:
            if block["type"] == "text":
                pending += block["text"] + "\n"
            else:
                blocks.append(text_block(pending))
                blocks.append(block)
                pending = "\n"
        pending += "</turn>" + ("\n" if number < len(turns) - 1 else "")
    blocks.append(text_block(pending + TRANSCRIPT_TAIL))
    return blocks


def prompt_build(*, system: str, turns: list[Turn]) -> Prompt:
    """The Prompt for a conversation whose last turn is the user's (callers check that)."""
    *earlier, last = turns
    content = (_transcript(earlier) if earlier else []) + list(last.blocks)
    return Prompt(content=content, system=system)


def prompt_check_size(prompt: Prompt, *, param: str) -> None:
    """The prompt's text within V1_MAX_PROMPT_CHARS (the native API's QUERY_MAX_CHARS, for a whole chat)."""
    limit = settings.V1_MAX_PROMPT_CHARS
    size = sum(len(b["text"]) for b in prompt.content if b["type"] == "text") + len(prompt.system)
    if size > limit:
        raise ApiError(
            413,
            f"The prompt (system, earlier turns and message) is {size} characters; the limit is {limit}.",
            param=param,
        )
    if not prompt.text().strip() and not any(b["type"] == "image" for b in prompt.content):
        raise invalid(f"{param}: the last user message is empty", param=param)
