"""A prompt richer than a string: the last user message's content blocks and a system prompt.

The native API submits a plain string (``Prompt.of_text``); the compatible APIs submit content blocks
(text and base64 images) and a system prompt. The worker sends the blocks to the CLI as one
stream-json ``user`` message and the system prompt through ``--system-prompt``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import unicodedata
from dataclasses import dataclass, field
from typing import Any

API_NATIVE = "native"
API_ANTHROPIC = "anthropic"
API_OPENAI = "openai"
APIS = (API_NATIVE, API_ANTHROPIC, API_OPENAI)


@dataclass(frozen=True)
class Prompt:
    """The last user message's content blocks (Anthropic shape) and the system prompt.

    ``{"type": "text", "text": ...}`` and ``{"type": "image", "source": {"type": "base64",
    "media_type": ..., "data": ...}}`` blocks; earlier turns, when a client sends them, arrive as a
    leading text block holding a transcript.
    """

    content: list[dict[str, Any]] = field(default_factory=list)
    system: str = ""

    @classmethod
    def of_text(cls, text: str) -> Prompt:
        return cls(content=[{"type": "text", "text": text}])

    def text(self) -> str:
        """The text blocks joined by blank lines: what is shown, routed on, and stored as Job.query."""
        return "\n\n".join(
            str(block.get("text", "")) for block in self.content if block.get("type") == "text"
        )

    @property
    def is_plain(self) -> bool:
        """One text block and no system prompt: what a string prompt is, hashed as it always was."""
        return not self.system and len(self.content) == 1 and self.content[0].get("type") == "text"

    def key_fields(self) -> dict[str, Any] | None:
        """What the cache key adds for a prompt that is not plain: the system prompt and every block,
        an image by the SHA-256 of its bytes."""
        if self.is_plain:
            return None
        return {
            "system": unicodedata.normalize("NFC", self.system).strip(),
            "content": [_block_key(block) for block in self.content],
        }

    def job_content(self) -> list[dict[str, Any]] | None:
        """The blocks the worker sends (Job.prompt_content), or None for a plain prompt (Job.query)."""
        return None if self.is_plain and not self.system else list(self.content)


def _block_key(block: dict[str, Any]) -> dict[str, Any]:
    if block.get("type") == "image":
        source = block.get("source") or {}
        data = source.get("data")
        digest = image_digest(data) if isinstance(data, str) else None
        return {
            "type": "image",
            "sourceType": source.get("type"),
            "mediaType": source.get("media_type"),
            "sha256": digest,
            "url": source.get("url"),
        }
    if block.get("type") == "text":
        return {"type": "text", "text": unicodedata.normalize("NFC", str(block.get("text", "")))}
    return {key: block[key] for key in sorted(block)}


def image_digest(data: str) -> str:
    """The SHA-256 of an image block's base64 data (of the text itself if it is not base64): what
    the cache key and a conversation's lineage hash see of an image."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raw = data.encode()
    return hashlib.sha256(raw).hexdigest()


def prompt_content_for_cli(*, content: list[dict[str, Any]] | None, query: str) -> str | list[dict[str, Any]]:
    """The ``content`` of the stream-json user message for a job: its blocks, or its query text."""
    return list(content) if content else query
