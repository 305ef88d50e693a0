"""Plain-text tables, the one renderer behind every table refbbp prints (the CLI, the
network and decomposition summaries, the benchmarks)."""

from __future__ import annotations

__all__ = ["cell", "text_table"]


def cell(value):
    """A table cell: floats with 3 significant digits, everything else as ``str``."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def text_table(rows, header, *, align="left", sep="  "):
    """Columns under a header and a rule of dashes.

    Parameters
    ----------
    rows : iterable of sequences
        One sequence of cells per line (formatted with :func:`cell`).
    header : sequence of str
    align : {"left", "right"}
        Left-aligned (trailing spaces stripped) or right-aligned cells.
    sep : str
        Between columns. With white space only, the rule under the header is a solid
        line as wide as the header; otherwise (``" | "``, a Markdown-like table) it joins
        each column's dashes with the separator's dashes (``"-|-"``).

    Returns
    -------
    str
    """
    if align not in ("left", "right"):
        raise ValueError(f"align must be 'left' or 'right', got {align!r}")
    cells = [[str(h) for h in header]] + [[cell(c) for c in r] for r in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]
    pad = str.ljust if align == "left" else str.rjust
    lines = [sep.join(pad(c, w) for c, w in zip(r, widths)).rstrip() for r in cells]
    if sep.strip():   # " | ": the columns' dashes joined by "-|-"
        lines.insert(1, sep.replace(" ", "-").join("-" * w for w in widths))
    else:             # a solid rule as wide as the header
        lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
