"""Conversation lineage: which earlier answer of the gateway a replayed history continues.

A conversation is the system prompt and its (user turn, assistant answer) pairs. Its lineage hash
after each pair is a chain: ``h0 = H(system)``, ``h(n) = H(h(n-1), user turn n, answer n)``, over a
canonical form (Unicode NFC, outer whitespace trimmed, a string equal to one text block, an image by
the SHA-256 of its bytes, ``cache_control`` ignored). Every answered turn stores the hash of its whole
conversation with its CLI session (queries.models.Session). A request whose earlier turns hash to a
stored session's lineage continues that session; one that matches no stored lineage (an edited,
truncated or foreign history) runs fresh. A history that matches a stored turn that was already
continued forks there: each continuation is a new CLI session (``--fork-session``).

Pure functions: no database, no Django.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from queries.prompts import image_digest

_VERSION = 1
Content = str | Sequence[dict[str, Any]]


def _text(value: Any) -> str:
    return unicodedata.normalize("NFC", str(value)).strip()


def _blocks(content: Content | None) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [block for block in content if isinstance(block, dict)]


def _block_key(block: dict[str, Any]) -> dict[str, Any] | None:
    kind = block.get("type")
    if kind == "text":
        text = _text(block.get("text", ""))
        return {"type": "text", "text": text} if text else None
    if kind == "image":
        source = block.get("source") or {}
        data = source.get("data")
        return {
            "type": "image",
            "mediaType": source.get("media_type"),
            "sha256": image_digest(data) if isinstance(data, str) else None,
            "url": source.get("url"),
        }
    return {key: block[key] for key in sorted(block) if key != "cache_control"}


def user_key(content: Content | None) -> list[dict[str, Any]]:
    """The canonical form of a user turn's content."""
    return [key for block in _blocks(content) if (key := _block_key(block)) is not None]


def answer_key(content: Content | None) -> str:
    """The canonical form of an answer: its text blocks' text, joined."""
    return _text("".join(str(b.get("text", "")) for b in _blocks(content) if b.get("type") == "text"))


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def lineage_root(*, system: str = "") -> str:
    """The lineage of a conversation before its first turn: its system prompt alone."""
    return _digest({"v": _VERSION, "system": _text(system)})


def lineage_next(prefix: str, *, user: Content | None, answer: Content | None) -> str:
    """The lineage after one more turn: ``user`` asked after ``prefix``, answered ``answer``."""
    return _digest([prefix, user_key(user), answer_key(answer)])


def lineage_chain(pairs: Iterable[tuple[Content | None, Content | None]], *, system: str = "") -> list[str]:
    """The lineage before the first pair and after each one: ``len(pairs) + 1`` hashes."""
    chain = [lineage_root(system=system)]
    for user, answer in pairs:
        chain.append(lineage_next(chain[-1], user=user, answer=answer))
    return chain


@dataclass(frozen=True)
class History:
    """A request's messages as earlier (user, answer) pairs and the new user turn."""

    pairs: tuple[tuple[list[dict[str, Any]], list[dict[str, Any]]], ...]
    last: list[dict[str, Any]]
    system: str = ""

    @property
    def prefix(self) -> str:
        """The lineage of the earlier turns: what a stored session must have to be continued."""
        return lineage_chain(self.pairs, system=self.system)[-1]


def history_split(messages: Sequence[dict[str, Any]], *, system: str = "") -> History | None:
    """Split Anthropic-shaped messages (``role`` user/assistant, ``content`` a string or blocks) into
    earlier pairs and the new user turn; None when they do not alternate from a user turn to a user
    turn. Consecutive messages of one role count as one turn, as the Messages API treats them."""
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for message in messages:
        role = message.get("role")
        if role not in ("user", "assistant"):
            return None
        blocks = _blocks(message.get("content"))
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, list(blocks)))
    if not turns or turns[0][0] != "user" or turns[-1][0] != "user":
        return None
    pairs = tuple((turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2))
    return History(pairs=pairs, last=turns[-1][1], system=system)
