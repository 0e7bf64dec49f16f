"""Markdown tables (GitHub-flavoured), for the exports a user pastes into an issue or a report.

One renderer for every table LlamaScope writes: the benchmark export lines its columns up the
way llama-bench's markdown does; the quantization comparison writes compact rows. Either way a
cell is one line of text: a "|" in it is escaped and a line break becomes a space, since either
would otherwise end the cell or the row and shift every column after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

Align = Literal["default", "left", "right", "center"]

# The fewest characters a delimiter cell needs: at least one "-" besides its colons.
_MIN_WIDTH: dict[Align, int] = {"default": 1, "left": 2, "right": 2, "center": 3}


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def _delimiter(align: Align, width: int) -> str:
    if align == "left":
        return ":" + "-" * (width - 1)
    if align == "right":
        return "-" * (width - 1) + ":"
    if align == "center":
        return ":" + "-" * (width - 2) + ":"
    return "-" * width


def _justify(cell: str, align: Align, width: int) -> str:
    if align == "right":
        return cell.rjust(width)
    if align == "center":
        return cell.center(width)
    return cell.ljust(width)


def markdown_table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    align: Sequence[Align] | None = None,
    pad: bool = True,
) -> str:
    """The table as text, one line per row, ending with a newline.

    `align` gives each column's alignment; "default" writes a delimiter without colons (renderers
    align such a column left). With `pad`, every column is as wide as its widest cell, so the
    table lines up as plain text too; without, cells are written as they are and each delimiter
    is three characters ("---", "--:").
    """
    aligns: list[Align] = list(align) if align is not None else ["default"] * len(header)
    if len(aligns) != len(header):
        raise ValueError(f"{len(aligns)} alignments for {len(header)} columns")
    head = [_escape(c) for c in header]
    body = []
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row of {len(row)} cells in a table of {len(header)} columns")
        body.append([_escape(c) for c in row])
    if pad:
        widths = [
            max(len(head[i]), _MIN_WIDTH[a], *(len(row[i]) for row in body)) for i, a in enumerate(aligns)
        ]
    else:
        widths = [0] * len(header)

    def line(cells: Sequence[str]) -> str:
        return (
            "| " + " | ".join(_justify(c, a, w) for c, a, w in zip(cells, aligns, widths, strict=True)) + " |"
        )

    if pad:
        delimiter = "| " + " | ".join(_delimiter(a, w) for a, w in zip(aligns, widths, strict=True)) + " |"
    else:
        delimiter = "|" + "|".join(_delimiter(a, 3) for a in aligns) + "|"
    return "\n".join([line(head), delimiter, *(line(row) for row in body)]) + "\n"


__all__ = ["Align", "markdown_table"]
