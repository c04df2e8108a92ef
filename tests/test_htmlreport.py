"""The self-contained HTML report: escaping, embedding, and a real headless browser."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np

import pytest
from PIL import Image

import clipprobe.report.html as htmlreport
from clipprobe.report import figures
from clipprobe.errors import UsageError
from clipprobe.report.html import MSG_SHEETS_LEFT_OUT, NO_IMAGES_NOTE, json_for_script, write_html_report
from clipprobe.report.store import load_report
from reportgen import make_report

SCRIPT_WORD = "<script>document.body.setAttribute('data-pwned','1')</script>"
IMG_WORD = "<img src=x onerror=\"document.body.setAttribute('data-pwned','2')\">"
ATTR_CATEGORY = '"onmouseover=alert(1) x="'
FOLDER = '"><img src=x onerror=alert(3)>'  # ends up in the dataset spec and root
MODEL = "</title><script>alert(4)</script>"
PAYLOADS = (SCRIPT_WORD, IMG_WORD, ATTR_CATEGORY, FOLDER, MODEL, "onerror=alert(3)>")


@pytest.fixture(scope="module")
def evil_report(tmp_path_factory):
    # "constructor" and "__proto__" are keys every JavaScript object inherits: the page must not trip on them
    words = {SCRIPT_WORD: ATTR_CATEGORY, IMG_WORD: (ATTR_CATEGORY, "plain"), "nurse": "plain", "doctor": "plain",
             "constructor": "plain", "__proto__": "plain"}
    plants = {SCRIPT_WORD: ("race", "White", 10.0), IMG_WORD: ("gender", "Female", 10.0)}
    root = tmp_path_factory.mktemp("html") / FOLDER
    d = make_report(root, words=words, plants=plants, model=MODEL, k=30, file_prefix=FOLDER + "/")
    return load_report(d)


@pytest.fixture(scope="module")
def evil_html(evil_report, tmp_path_factory):
    path = write_html_report(evil_report, tmp_path_factory.mktemp("out") / "report.html")
    return path, path.read_text(encoding="utf-8")


def _json_block(text):
    m = re.search(r'<script type="application/json" id="clipprobe-data">(.*?)</script>', text, re.S)
    assert m, "data block missing"
    return m.group(1)


def test_payloads_never_appear_unescaped(evil_report, evil_html):
    _, text = evil_html
    assert evil_report.groups["flagged"].any()
    flagged_words = set(evil_report.groups.loc[evil_report.groups["flagged"], "word"])
    assert SCRIPT_WORD in flagged_words  # so it is in the flagged table and contact sheets too
    for payload in PAYLOADS:
        assert payload not in text, payload
    # they are there, escaped, where markup shows them
    assert "&lt;script&gt;document.body.setAttribute(&#x27;data-pwned&#x27;,&#x27;1&#x27;)&lt;/script&gt;" in text
    assert "&quot;onmouseover=alert(1) x=&quot;" in text
    assert "&lt;/title&gt;&lt;script&gt;alert(4)&lt;/script&gt;" in text
    # exactly two script elements: the JSON data and the page's own code
    assert len(re.findall(r"<script\b", text)) == 2


def test_json_block_round_trips_and_has_no_markup(evil_report, evil_html):
    _, text = evil_html
    block = _json_block(text)
    assert "<" not in block and ">" not in block and "&" not in block
    data = json.loads(block)
    words = {r["word"] for r in data["words"]}
    assert words == set(evil_report.words["word"])
    row = next(r for r in data["words"] if r["word"] == IMG_WORD)
    assert row["categories"] == [ATTR_CATEGORY, "plain"]
    assert len(data["words"]) == len(evil_report.words)


def test_json_for_script_escapes_and_cleans():
    text = json_for_script({"a": "</script><!--", "b": float("nan"), "c": [1.5, float("inf")], "d": "\u2028"})
    assert "<" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!--", "b": None, "c": [1.5, None], "d": "\u2028"}


def test_page_is_self_contained(evil_html):
    _, text = evil_html
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text
    for src in re.findall(r'\ssrc="([^"]*)"', text):
        assert src.startswith("data:image/"), src
    assert "<link" not in text and "@import" not in text
    assert "Content-Security-Policy" in text


def test_contact_sheets_embedded_for_flagged_words(evil_report, evil_html):
    _, text = evil_html
    n_words = evil_report.groups.loc[evil_report.groups["flagged"], "word"].nunique()
    sheets = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(sheets) == n_words
    n_figures = len(re.findall(r'src="data:image/png;base64,', text))
    flagged_attrs = set(evil_report.groups.loc[evil_report.groups["flagged"], "attribute"])
    # the core set: 4 heatmaps + entropy + a top-words plot per attribute with a flagged pair
    assert n_figures == 4 + 1 + len(flagged_attrs)


def test_category_figures_add_per_category_plots(evil_report, tmp_path, drawn):
    text = write_html_report(evil_report, tmp_path / "r.html", category_figures=True, reuse_figures=False,
                             max_sheets=0).read_text(encoding="utf-8")
    flagged_attrs = set(evil_report.groups.loc[evil_report.groups["flagged"], "attribute"])
    n_figures = len(re.findall(r'src="data:image/png;base64,', text))
    assert n_figures == len(drawn) == 4 + 1 + len(flagged_attrs) + 5 * len(evil_report.categories)
    assert text.count('<details class="catfig">') == len(evil_report.categories)
    assert "&quot;onmouseover=alert(1) x=&quot;</summary>" in text  # category names escaped there too
    assert ATTR_CATEGORY not in text


DRAWN = b"\x89PNG drawn by the page writer"


@pytest.fixture()
def drawn(monkeypatch):
    """Figures the HTML writer draws itself (rather than reading a PNG file); each is embedded as
    :data:`DRAWN` instead of being rendered, which keeps these tests fast (rendering is tested above)."""
    calls = []

    def counting(fig, **kw):
        calls.append(fig)
        return DRAWN

    monkeypatch.setattr(htmlreport, "_figure_png", counting)
    return calls


def _pngs(text):
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_html_reuses_figures_already_written(tmp_path, drawn):
    d = make_report(tmp_path / "r", images=False, k=30, n_boot=5)
    rep = load_report(d)
    specs = figures.figure_specs(rep)
    written = figures.write_report_figures(rep, d / "figures", formats=("png",))
    assert len(written) == len(specs)
    text = write_html_report(rep, tmp_path / "a.html").read_text(encoding="utf-8")
    assert drawn == []
    assert _pngs(text) == [(d / "figures" / f"{s.stem}.png").read_bytes() for s in specs]

    # a missing file is drawn, and only that one
    (d / "figures" / "entropy_by_category.png").unlink()
    text = write_html_report(rep, tmp_path / "b.html").read_text(encoding="utf-8")
    assert len(drawn) == 1
    files = {s.stem: d / "figures" / f"{s.stem}.png" for s in specs}
    assert _pngs(text) == [DRAWN if s.stem == "entropy_by_category" else files[s.stem].read_bytes() for s in specs]

    # figures older than the report's tables are stale: all drawn again
    drawn.clear()
    for f in (d / "figures").glob("*.png"):
        os.utime(f, (1_000_000, 1_000_000))
    write_html_report(rep, tmp_path / "c.html")
    assert len(drawn) == len(specs)

    # another folder can be named, and reuse can be turned off
    drawn.clear()
    other = tmp_path / "elsewhere"
    shutil.copytree(d / "figures", other)
    for f in other.glob("*.png"):
        os.utime(f)  # now: newer than the tables
    text = write_html_report(rep, tmp_path / "d.html", figures_dir=other).read_text(encoding="utf-8")
    assert len(drawn) == 1  # the one file that was deleted above
    assert _pngs(text).count(DRAWN) == 1
    drawn.clear()
    write_html_report(rep, tmp_path / "e.html", figures_dir=other, reuse_figures=False)
    assert len(drawn) == len(specs)


def _sheet_order_oracle(report):
    """Flagged words by (lowest q over their flagged pairs, highest skew, word), by plain loops."""
    best = {}
    for row in report.groups.itertuples(index=False):
        if row.flagged:
            q, skew = best.get(row.word, (np.inf, -np.inf))
            best[row.word] = (min(q, row.q_over), max(skew, row.skew))
    return sorted(best, key=lambda w: (best[w][0], -best[w][1], w))


def _sheet_words(text):
    return [html.unescape(w) for w in re.findall(r'<div class="sheet" id="faces-\d+"><h3>(.*?) <small>', text)]


def test_sheets_capped_by_count_in_q_order_with_note(tmp_path, drawn):
    d = make_report(tmp_path / "r", k=30, n_boot=5)
    rep = load_report(d)
    order = _sheet_order_oracle(rep)
    assert len(order) >= 4
    assert htmlreport.sheet_order(rep) == order
    text = write_html_report(rep, tmp_path / "r.html", max_sheets=2).read_text(encoding="utf-8")
    assert _sheet_words(text) == order[:2]
    assert len(re.findall("data:image/jpeg", text)) == 2
    note = MSG_SHEETS_LEFT_OUT.format(shown=2, total=len(order), left=len(order) - 2)
    assert html.escape(note) in text
    # a flagged word with a sheet links to it; one without has no link
    assert f'<a href="#faces-0">{html.escape(order[0])}</a>' in text
    assert '<a href="#faces-2">' not in text

    full = write_html_report(rep, tmp_path / "all.html").read_text(encoding="utf-8")
    assert _sheet_words(full) == order
    assert "were left out" not in full


def test_sheets_capped_by_bytes_keep_at_least_one(tmp_path, drawn):
    d = make_report(tmp_path / "r", k=30, n_boot=5)
    rep = load_report(d)
    order = _sheet_order_oracle(rep)
    text = write_html_report(rep, tmp_path / "one.html", sheets_max_bytes=1).read_text(encoding="utf-8")
    assert _sheet_words(text) == order[:1]
    assert html.escape(MSG_SHEETS_LEFT_OUT.format(shown=1, total=len(order), left=len(order) - 1)) in text
    sheets = [base64.b64decode(b) for b in re.findall(r'data:image/jpeg;base64,([A-Za-z0-9+/=]+)', text)]
    budget = len(sheets[0]) * 2 + 10  # room for two sheets of about the first one's size, not for all
    text = write_html_report(rep, tmp_path / "two.html", sheets_max_bytes=budget).read_text(encoding="utf-8")
    kept = [base64.b64decode(b) for b in re.findall(r'data:image/jpeg;base64,([A-Za-z0-9+/=]+)', text)]
    assert 1 <= len(kept) < len(order) and sum(map(len, kept)) <= budget
    with Image.open(io.BytesIO(kept[0])) as img:
        assert img.format == "JPEG"


@pytest.mark.parametrize("kwargs", [{"max_sheets": -1}, {"sheet_faces": 1.5}, {"sheets_max_bytes": True}])
def test_bad_limits_are_usage_errors(evil_report, tmp_path, kwargs):
    name = next(iter(kwargs))
    with pytest.raises(UsageError, match=f"{name} must be 0 or a positive integer"):
        write_html_report(evil_report, tmp_path / "x.html", **kwargs)
    assert not (tmp_path / "x.html").exists()


def test_word_table_numbers_rounded_and_prompts_once_per_word(evil_report, evil_html):
    _, text = evil_html
    data = json.loads(_json_block(text))
    w = evil_report.words
    assert set(data["prompts"]) == set(w["word"])
    for row in w.itertuples(index=False):
        assert data["prompts"][row.word] == list(row.prompts)
    for r, want in zip(data["words"], w.itertuples(index=False)):
        assert r["max_skew"] == pytest.approx(want.max_skew, abs=5e-5)
        assert r["max_skew"] == round(want.max_skew, 4)
        assert "prompts" not in r


def test_images_missing_gives_note_not_failure(tmp_path, drawn):
    d = make_report(tmp_path / "r", images=False, k=30, n_boot=5)
    rep = load_report(d)
    assert rep.groups["flagged"].any()
    text = write_html_report(rep, tmp_path / "r.html", category_figures=False).read_text(encoding="utf-8")
    assert NO_IMAGES_NOTE in text
    assert "data:image/jpeg" not in text


def test_loader_failures_are_counted_and_labels_drawn(tmp_path, drawn):
    d = make_report(tmp_path / "r", images=False, k=30, n_boot=5)
    rep = load_report(d)
    calls = []

    def loader(name):
        calls.append(name)
        if len(calls) % 2:
            raise KeyError(name)
        return Image.new("RGB", (20, 20), (10, 200, 10))

    text = write_html_report(rep, tmp_path / "r.html", image_loader=loader, label_for=lambda f: "grp",
                             category_figures=False, sheet_faces=6, max_sheets=1).read_text(encoding="utf-8")
    assert len(calls) == 6
    assert "3 images could not be read" in text
    assert len(re.findall("data:image/jpeg", text)) == 1


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="no chromium/chrome installed")
def test_headless_browser_renders_table_and_runs_no_injected_code(evil_report, evil_html, tmp_path):
    path, _ = evil_html
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'ud'}",
           "--virtual-time-budget=3000", "--dump-dom", path.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    dom = out.stdout
    assert "<body" in dom, out.stderr[-2000:]
    # our script ran: it marks the body and built one table row per (word, attribute)
    n = len(evil_report.words)
    assert f'data-rendered="{n}"' in dom
    body = re.search(r'<tbody id="words-body">(.*?)</tbody>', dom, re.S).group(1)
    assert body.count("<tr>") == n
    assert f"{n} of {n} rows" in dom
    # the payload words are shown as text, and none of them ran
    assert "&lt;script&gt;document.body.setAttribute('data-pwned','1')&lt;/script&gt;" in body
    assert "data-pwned=" not in dom
    assert "<title>clipprobe report: &lt;/title&gt;" in dom
    # the filter options were added by the script
    assert '<option value="race">race</option>' in dom
