"""A multi-turn chat: its turns, the file it is saved in, and what the KV cache can keep between turns.

Nothing here runs the model. The engine (app.engine.core) renders the conversation with the
model's chat template, tokenizes it and asks `reusable_prefix` how much of what its context
already holds it may keep: only the tokens after the longest common prefix are evaluated. A
template that renders an earlier turn differently once a later one exists (some drop the
reasoning of old replies) only shortens that prefix; the result stays what a fresh context gives.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

CHAT_FILE_FORMAT = "llamascope-chat"
CHAT_FILE_VERSION = 1
ROLES = ("user", "assistant")


class ChatFileError(Exception):
    """A conversation file cannot be read; the message says why, for the user."""


@dataclass(frozen=True)
class ChatTurn:
    """One message of the conversation: what the user wrote, or the model's reply."""

    role: str  # "user" or "assistant"
    content: str
    stats: str = ""  # the reply's figures as shown ("prompt 12 new tokens (84 reused) · TTFT 40 ms …")


@dataclass(frozen=True)
class Conversation:
    """What a chat file holds: enough to read the chat again and to know what produced it."""

    system_prompt: str = ""
    turns: tuple[ChatTurn, ...] = ()
    model_file: str = ""  # the model's file name (not its path: a file is shared between machines)
    settings: dict[str, Any] = field(default_factory=dict)  # {"load": …, "sampling": …} as last used

    def to_json(self) -> str:
        data = {
            "format": CHAT_FILE_FORMAT,
            "version": CHAT_FILE_VERSION,
            "system_prompt": self.system_prompt,
            "turns": [
                {"role": t.role, "content": t.content, **({"stats": t.stats} if t.stats else {})}
                for t in self.turns
            ],
            "model_file": self.model_file,
            "settings": self.settings,
        }
        return json.dumps(data, indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Conversation:
        """Parse a chat file; anything else (another program's JSON, a newer version, a broken
        file) raises ChatFileError with a sentence saying what is wrong."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ChatFileError(
                f"it is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
            ) from None
        if not isinstance(data, dict) or data.get("format") != CHAT_FILE_FORMAT:
            raise ChatFileError(
                'it is JSON, but not a LlamaScope conversation (no "format": "llamascope-chat")'
            )
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ChatFileError("it has no version number")
        if version > CHAT_FILE_VERSION:
            raise ChatFileError(
                f"it was saved by a newer LlamaScope (format version {version}; this one reads up to "
                f"{CHAT_FILE_VERSION})"
            )
        system = data.get("system_prompt", "")
        if not isinstance(system, str):
            raise ChatFileError("its system_prompt is not text")
        raw_turns = data.get("turns")
        if not isinstance(raw_turns, list):
            raise ChatFileError("it has no list of turns")
        turns = []
        for i, raw in enumerate(raw_turns, 1):
            if not isinstance(raw, dict):
                raise ChatFileError(f"turn {i} is not an object with a role and a content")
            role, content, stats = raw.get("role"), raw.get("content"), raw.get("stats", "")
            if role not in ROLES:
                raise ChatFileError(f"turn {i} has role {role!r}; a turn is 'user' or 'assistant'")
            if not isinstance(content, str) or not isinstance(stats, str):
                raise ChatFileError(f"turn {i} has no text content")
            turns.append(ChatTurn(role, content, stats))
        model_file = data.get("model_file", "")
        settings = data.get("settings", {})
        if not isinstance(model_file, str) or not isinstance(settings, dict):
            raise ChatFileError("its model_file or settings are not what a LlamaScope conversation holds")
        return cls(system, tuple(turns), model_file, settings)

    def save(self, path: str) -> None:
        """Write the file whole or not at all: a temporary file in the same folder, then renamed."""
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(self.to_json())
                f.write("\n")
            os.replace(tmp, path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise ChatFileError(f"it could not be written: {exc.strerror or exc}") from None

    @classmethod
    def load(cls, path: str) -> Conversation:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read(16 * 1024 * 1024 + 1)
        except OSError as exc:
            raise ChatFileError(f"it could not be read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ChatFileError("it is not a text file") from None
        if len(text) > 16 * 1024 * 1024:
            raise ChatFileError("it is larger than 16 MiB, far more than a conversation")
        return cls.from_json(text)


def chat_messages(
    system_prompt: str | None, history: Sequence[ChatTurn], prompt: str
) -> list[dict[str, str]]:
    """The messages a chat template renders: system prompt, earlier turns, the new user message."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": t.role, "content": t.content} for t in history]
    messages.append({"role": "user", "content": prompt})
    return messages


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def reusable_prefix(cached: Sequence[int], prompt: Sequence[int]) -> int:
    """How many of the cached tokens a new prompt keeps: their common prefix, less one when the
    prompt adds nothing (at least one token must be evaluated for the logits to sample from)."""
    keep = common_prefix_len(cached, prompt)
    return min(keep, len(prompt) - 1) if prompt else 0


def reply_reserve(n_ctx: int, max_tokens: int) -> int:
    """Room kept for the reply when older turns have to go: max_tokens, or a quarter of the
    context when that is less (a long chat must not shrink to one turn because max_tokens is big)."""
    return max(1, min(max_tokens, math.ceil(n_ctx / 4)))


def fit_history(
    history: Sequence[ChatTurn],
    render: Callable[[Sequence[ChatTurn]], list[int]],
    n_ctx: int,
    reserve: int,
) -> tuple[list[int], int]:
    """Drop the oldest turns until the rendered prompt leaves `reserve` tokens for the reply.

    Turns go in user/assistant pairs (a reply without its question would confuse the model); the
    system prompt and the new message always stay. Returns the prompt's tokens and how many turns
    were dropped; the caller refuses a prompt that still does not fit the context at all.
    """
    dropped = 0
    tokens = render(history)
    while len(tokens) + reserve > n_ctx and dropped < len(history):
        step = 2 if dropped + 1 < len(history) and history[dropped].role == "user" else 1
        dropped += step
        tokens = render(history[dropped:])
    return tokens, dropped
