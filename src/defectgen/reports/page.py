"""Report rendering: one self-contained HTML page (images inlined as data URIs, styles
inline, no script, nothing fetched) and a markdown summary. No paths, no mlflow.

A page is a list of `Section`s; a section holds blocks made by `paragraph`, `table`
and `figure`. Every text is escaped here, so callers pass plain strings.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field

CSS = """
body{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;
font-variant-numeric:tabular-nums}.pass{color:#176b2c;font-weight:600}.fail{color:#a31515;
font-weight:600}.inconclusive{color:#8a6100;font-weight:600}
figure{display:inline-block;margin:.5em 1em .5em 0}figcaption{font-size:.9em;
color:#555}img{max-width:100%;image-rendering:pixelated}.note{color:#555;font-size:.92em}
"""


@dataclass
class Cell:
    """A table cell: text, right-aligned when numeric, optionally styled pass/fail."""

    text: str
    numeric: bool = False
    style: str = ""


@dataclass
class Section:
    title: str
    blocks: list[str] = field(default_factory=list)  # rendered HTML
    markdown: list[str] = field(default_factory=list)

    def paragraph(self, text: str, note: bool = False) -> None:
        cls = ' class="note"' if note else ""
        self.blocks.append(f"<p{cls}>{html.escape(text)}</p>")
        self.markdown.append(text)

    def table(self, headers: list[str], rows: list[list[Cell | str]]) -> None:
        cells = [[c if isinstance(c, Cell) else Cell(str(c)) for c in row] for row in rows]
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join(
            "<tr>"
            + "".join(
                f'<td class="{" ".join(filter(None, ["num" if c.numeric else "", c.style]))}">'
                f"{html.escape(c.text)}</td>"
                for c in row
            )
            + "</tr>"
            for row in cells
        )
        self.blocks.append(f"<table><tr>{head}</tr>{body}</table>")
        md = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        md += ["| " + " | ".join(c.text.replace("|", "/") for c in row) + " |" for row in cells]
        self.markdown.append("\n".join(md))

    def figure(self, png: bytes, caption: str, width: int | None = None) -> None:
        data = base64.b64encode(png).decode()
        size = f' width="{width}"' if width else ""
        self.blocks.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}"'
            f"{size}><figcaption>{html.escape(caption)}</figcaption></figure>"
        )


def render_html(title: str, summary: str, sections: list[Section]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts.extend(section.blocks)
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(title: str, summary: str, sections: list[Section]) -> str:
    out = [f"# {title}", "", summary, ""]
    for section in sections:
        if section.markdown:
            out += [f"## {section.title}", ""]
            for block in section.markdown:
                out += [block, ""]
    return "\n".join(out)


def axis_range(entries: list[tuple[str, float, float]]) -> tuple[float, float]:
    """The x range of a bar chart of scores in [0, 1] with their spread: the bars' span
    widened by half of itself and room for the labels, so differences of a point or two
    are visible; from 0 only when the bars reach near it."""
    lows = [mean - std for _, mean, std in entries]
    highs = [mean + std for _, mean, std in entries]
    span = max(max(highs) - min(lows), 0.02)
    low = max(0.0, min(lows) - span / 2)
    low = 0.0 if low < 0.1 else low
    return low, min(1.0, max(highs) + span / 2) + span / 4


def forest_rows(comparisons: list[dict], metric: str) -> list[tuple[str, float, float, float]]:
    """(label, difference, low, high) per paired comparison of `metric` that has an
    interval: the rows a forest plot draws, each arm minus its control."""
    return [
        (f"{c['arm']} - {c['control']}", c["delta"], *c["ci"])
        for c in comparisons
        if c["metric"] == metric and c["ci"] is not None
    ]


def forest_plot(rows: list[tuple[str, float, float, float]], xlabel: str) -> bytes:
    """Each paired difference as a point with its interval and a line at 0 (no
    difference), in percentage points, as PNG bytes: differences drawn as differences,
    where bars of absolute scores make 2 pp look like nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.3))
    ys = list(range(len(rows)))
    delta = [100 * r[1] for r in rows]
    err = [[100 * (r[1] - r[2]) for r in rows], [100 * (r[3] - r[1]) for r in rows]]
    ax.errorbar(delta, ys, xerr=err, fmt="o", color="#4c72b0", capsize=3)
    ax.axvline(0.0, color="#888888", linewidth=1)
    ax.set_yticks(ys, [r[0] for r in rows], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def accuracy_plot(entries: list[tuple[str, float, float]], xlabel: str) -> bytes:
    """Horizontal bars with error bars: (label, mean, std) each, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(entries) + 1.2))
    labels = [e[0] for e in entries]
    ax.barh(labels, [e[1] for e in entries], xerr=[e[2] for e in entries], color="#4c72b0")
    ax.invert_yaxis()
    low, high = axis_range(entries)
    ax.set_xlim(low, high)
    ax.set_xlabel(xlabel if low == 0 else f"{xlabel} (axis from {low:.2f}, not 0)")
    for i, (_, mean, std) in enumerate(entries):
        ax.text(mean + std + 0.01 * (high - low), i, f"{mean:.3f}", va="center", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
