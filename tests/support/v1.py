"""What the /v1/ tests share: the SDK clients on a test server, images, and reading the mock's requests."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import anthropic
import openai

MODEL = "claude-sonnet-4-5"
# The mock sends "part1 part2 part3 part4 part5" in five deltas 0.4 s apart (tests/mockapi.py).
DRIP = "[[mock:drip=5 gap=0.4]]"
DRIPPED = "part1 part2 part3 part4 part5"


def user(text: str) -> list[dict[str, Any]]:
    """A conversation of one user message."""
    return [{"role": "user", "content": text}]


def anthropic_client(base: str, key: str) -> anthropic.Anthropic:
    # No retries: a test asserts what one call does (the SDK retries 5xx and 429 by default).
    return anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=120)


def openai_client(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)


def png(width: int = 2, height: int = 2, filler: bytes = b"") -> bytes:
    """A valid PNG of grey pixels; ``filler`` makes it as large as a test needs (an ancillary chunk)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + b"\x80" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    extra = chunk(b"tEXt", b"c\0" + filler) if filler else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + extra
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def png_base64(**kwargs: Any) -> str:
    return base64.b64encode(png(**kwargs)).decode()


def last_user_blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The content blocks of the last user message of a request the mock received."""
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    content = users[-1]["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def request_text(body: dict[str, Any]) -> str:
    """All the text of a request the mock received: system prompt and every message's text blocks."""
    system = body.get("system") or ""
    parts = [system] if isinstance(system, str) else [b.get("text", "") for b in system]
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        else:
            parts.extend(b.get("text", "") for b in content if b.get("type") == "text")
    return "\n".join(parts)


def system_text(body: dict[str, Any]) -> str:
    system = body.get("system") or ""
    return system if isinstance(system, str) else "\n".join(b.get("text", "") for b in system)
