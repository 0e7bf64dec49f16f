"""Text around the driver: token pieces to UTF-8, stop strings, and the model's chat template.

A token can end in the middle of a UTF-8 character and a stop string can span tokens, so both
are handled on a stream of pieces rather than per token.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass

from app.llama.driver import DriverError, LlamaModel


class TextStream:
    """Generated tokens to text, one token at a time: a character split over several tokens
    (emoji, CJK) comes out whole with the token that completes it."""

    def __init__(self, model: LlamaModel, *, special: bool = False) -> None:
        self._model = model
        self._special = special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self._decoder.decode(self._model.token_to_piece(token, special=self._special))

    def flush(self) -> str:
        """What an unfinished character left behind (as U+FFFD)."""
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Finds stop strings in streamed text, holding back only what could be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """Returns (text safe to show, whether a stop string was hit)."""
        if not self._stops:
            return piece, False
        text = self._pending + piece
        hits = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._pending = ""
            return text[: min(hits)], True
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return rest


@dataclass(frozen=True)
class ChatPrompt:
    """A conversation rendered by the model's chat template, ready to evaluate."""

    text: str
    tokens: list[int]
    stops: list[str]  # extra stop strings the template asks for (its EOS text)


def apply_chat_template(model: LlamaModel, messages: Sequence[dict[str, str]]) -> ChatPrompt:
    """Render `messages` ({"role", "content"}) with the model's template and tokenize the result.

    Rendered by llama-cpp-python's Jinja2ChatFormatter (Jinja in a sandbox, as Transformers
    renders it), so the prompt is the one LlamaScope always sent. Raises DriverError if the model
    has no template or the template fails.
    """
    template = model.chat_template
    if not template:
        raise DriverError("This model has no chat template; switch to completion mode.")
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import SecurityError
    from llama_cpp import llama_chat_format

    try:
        formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_text(model.eos),
            bos_token=model.token_text(model.bos),
        )
        result = formatter(messages=list(messages))  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 (a template is a program from the model file: anything can fail)
        if isinstance(exc, TemplateSyntaxError):
            problem = f"it is not valid Jinja (line {exc.lineno}: {exc.message})"
        elif isinstance(exc, SecurityError):
            problem = f"it tried something the template sandbox forbids ({exc})"
        elif isinstance(exc, ValueError) and exc.args:  # raise_exception('...') in the template
            problem = f"it refused the conversation: {exc}"
        else:
            problem = f"{type(exc).__name__}: {exc}"
        raise DriverError(
            f"The model's chat template could not render the conversation: {problem}. "
            "Completion mode works without it."
        ) from None
    # The template writes BOS itself when the model wants one (added_special).
    tokens = model.tokenize(result.prompt, add_special=not result.added_special, parse_special=True)
    stops = result.stop if isinstance(result.stop, list) else ([result.stop] if result.stop else [])
    return ChatPrompt(result.prompt, tokens, [s for s in stops if s])
