"""core/page: escaping, inline images, markdown tables, and a real browser render."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectgen.reports import page as page
from defectgen.reports.page import Cell, Section


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        for key in ("href", "src"):
            if key in attrs and not attrs[key].startswith("data:"):
                self.refs.append(attrs[key])


def check_self_contained(html: str) -> list[bytes]:
    """Assert the page fetches nothing and every image is an inline PNG; return them."""
    parser = _Collect()
    parser.feed(html)
    assert parser.refs == [] and "script" not in parser.tags
    assert not re.search(r"https?://", html)
    pngs = []
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        Image.open(io.BytesIO(png)).verify()
        pngs.append(png)
    return pngs


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _page() -> tuple[str, str]:
    sec = Section("Gate <results>")
    sec.paragraph("class <script>alert(1)</script> & co")
    sec.table(["class", "verdict"], [["a|b", Cell("pass: fine", style="pass")]])
    sec.figure(_png(200), "a grid")
    sec.figure(
        page.accuracy_plot([("real", 0.7, 0.02), ("real+synthetic", 0.75, 0.01)], "acc"), "acc"
    )
    title, summary = "report <x>", "summary & more"
    return page.render_html(title, summary, [sec]), page.render_markdown(title, summary, [sec])


def test_text_is_escaped_images_inline_markdown_tables():
    html, md = _page()
    assert "<script>" not in html and "&lt;script&gt;" in html
    pngs = check_self_contained(html)
    assert len(pngs) == 2 and pngs[0] == _png(200)
    assert '<td class="pass">pass: fine</td>' in html
    assert "| class | verdict |" in md and "| a/b | pass: fine |" in md
    assert md.startswith("# report <x>")


CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

# Appended to a copy of the page: records console errors and load failures, then
# writes into the DOM that --dump-dom prints how many images decoded and what a reader
# sees before scrolling (a 1200 x 900 window): the headings, paragraphs and table rows
# whose top lies on the first screen.
FIRST_SCREEN = (1200, 900)
PROBE = """<script>
const errors = [];
const origError = console.error;
console.error = (...a) => { errors.push(a.join(' ')); origError(...a); };
window.addEventListener('error', e => errors.push('error: ' + (e.message || e.target.src)), true);
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const out = document.createElement('pre');
  out.id = 'probe';
  const seen = [...document.body.querySelectorAll('h1, h2, h3, p, tr')]
    .filter(e => e.getBoundingClientRect().top < window.innerHeight)
    .map(e => ({tag: e.tagName.toLowerCase(), text: e.innerText.trim()}));
  out.textContent = JSON.stringify({images: imgs.length, loaded: ok, errors,
                                    first_screen: seen});
  document.body.appendChild(out);
});
</script>"""


def render_in_chromium(html_path: Path, tmp: Path) -> dict:
    """Load a page in headless Chromium: a screenshot, and the probe's findings."""
    import html
    import json

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (make test installs it where apt can)")
    probed = tmp / "probed.html"
    probed.write_text(html_path.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"))
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}"]
    shot = tmp / "shot.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1200,2000", probed.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert Image.open(shot).size == (1200, 2000)
    width, height = FIRST_SCREEN
    dom = subprocess.run(
        [*common, f"--window-size={width},{height}", "--virtual-time-budget=5000",
         "--dump-dom", probed.as_uri()],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the page did not finish loading in Chromium"
    return json.loads(html.unescape(found.group(1)))


def test_page_renders_in_headless_chromium(tmp_path):
    html, _ = _page()
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    probe = render_in_chromium(path, tmp_path)
    assert {k: probe[k] for k in ("images", "loaded", "errors")} == {
        "images": 2, "loaded": 2, "errors": []
    }  # fmt: skip
    assert probe["first_screen"][0] == {"tag": "h1", "text": "report <x>"}


def test_score_charts_start_where_the_differences_show():
    """Bars a point apart near 0.9 get an axis that starts well above 0 (and says so);
    bars that reach near 0 keep the axis from 0."""
    low, high = page.axis_range([("real", 0.90, 0.01), ("real+synthetic", 0.92, 0.01)])
    assert 0.8 < low < 0.89 and 0.93 < high <= 1.05
    assert page.axis_range([("a", 0.12, 0.05), ("b", 0.5, 0.1)])[0] == 0.0
    png = page.accuracy_plot([("real", 0.90, 0.01), ("real+synthetic", 0.92, 0.01)], "accuracy")
    assert png.startswith(b"\x89PNG")


def _blue_and_zero(png: bytes) -> tuple[np.ndarray, int]:
    """Columns of the forest plot's blue marks, and the column of its grey zero line."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    blue = np.all(np.abs(rgb - (0x4C, 0x72, 0xB0)) < 10, axis=-1)
    grey = np.all(np.abs(rgb - (0x88, 0x88, 0x88)) < 6, axis=-1)
    return np.flatnonzero(blue.any(axis=0)), int(np.argmax(grey.sum(axis=0)))


def test_the_forest_plot_draws_each_difference_with_its_interval_against_zero():
    comparisons = [
        {"arm": "a", "control": "b", "metric": "acc", "delta": 0.05, "ci": [0.02, 0.08]},
        {"arm": "a", "control": "c", "metric": "acc", "delta": 0.0, "ci": None},  # no interval
        {"arm": "a", "control": "b", "metric": "f1", "delta": 0.5, "ci": [0.4, 0.6]},
    ]
    rows = page.forest_rows(comparisons, "acc")
    assert rows == [("a - b", 0.05, 0.02, 0.08)]
    # an interval above 0 is drawn wholly right of the zero line ...
    above, zero = _blue_and_zero(page.forest_plot(rows + [("a - d", 0.04, 0.01, 0.07)], "pp"))
    assert above.min() > zero
    # ... one that spans 0 crosses it
    spans, zero = _blue_and_zero(page.forest_plot([("a - d", 0.01, -0.03, 0.05)], "pp"))
    assert spans.min() < zero < spans.max()
