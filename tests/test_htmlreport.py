"""The self-contained HTML report: escaping, embedding, and a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from PIL import Image

from clipprobe.htmlreport import NO_IMAGES_NOTE, json_for_script, write_html_report
from clipprobe.reportio import load_report
from reportgen import make_report

SCRIPT_WORD = "<script>document.body.setAttribute('data-pwned','1')</script>"
IMG_WORD = "<img src=x onerror=\"document.body.setAttribute('data-pwned','2')\">"
ATTR_CATEGORY = '"onmouseover=alert(1) x="'
FOLDER = '"><img src=x onerror=alert(3)>'  # ends up in the dataset spec and root
MODEL = "</title><script>alert(4)</script>"
PAYLOADS = (SCRIPT_WORD, IMG_WORD, ATTR_CATEGORY, FOLDER, MODEL, "onerror=alert(3)>")


@pytest.fixture(scope="module")
def evil_report(tmp_path_factory):
    words = {SCRIPT_WORD: ATTR_CATEGORY, IMG_WORD: (ATTR_CATEGORY, "plain"), "nurse": "plain", "doctor": "plain"}
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
    # 4 heatmaps + entropy + per category (4 dot plots + 1 stability plot)
    assert n_figures == 4 + 1 + 5 * len(evil_report.categories)


def test_images_missing_gives_note_not_failure(tmp_path):
    d = make_report(tmp_path / "r", images=False, k=30, n_boot=5)
    rep = load_report(d)
    assert rep.groups["flagged"].any()
    text = write_html_report(rep, tmp_path / "r.html", category_figures=False).read_text(encoding="utf-8")
    assert NO_IMAGES_NOTE in text
    assert "data:image/jpeg" not in text


def test_loader_failures_are_counted_and_labels_drawn(tmp_path):
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
