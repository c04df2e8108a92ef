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
from pathlib import Path

import numpy as np
import pandas as pd

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
    # flagged: against the control queries (the headline flag, where that test ran)
    headline = evil_report.groups["flagged_vs_controls"].astype(bool)
    n_words = evil_report.groups.loc[headline, "word"].nunique()
    sheets = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(sheets) == n_words
    n_figures = len(re.findall(r'src="data:image/png;base64,', text))
    flagged_attrs = set(evil_report.groups.loc[headline, "attribute"])
    # the core set: 4 heatmaps + entropy + a top-words plot per attribute with a flagged pair
    assert n_figures == 4 + 1 + len(flagged_attrs)


def test_category_figures_add_per_category_plots(evil_report, tmp_path, drawn):
    text = write_html_report(evil_report, tmp_path / "r.html", category_figures=True, reuse_figures=False,
                             max_sheets=0).read_text(encoding="utf-8")
    flagged_attrs = set(evil_report.groups.loc[evil_report.groups["flagged_vs_controls"].astype(bool), "attribute"])
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


@pytest.mark.slow        # over the default suite's 10 s per test on 2 shared cores
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
    """Words flagged against the controls by (lowest q vs controls over their flagged pairs, highest skew,
    word), by plain loops."""
    best = {}
    for row in report.groups.itertuples(index=False):
        if row.flagged_vs_controls:
            q, skew = best.get(row.word, (np.inf, -np.inf))
            best[row.word] = (min(q, row.q_vs_controls), max(skew, row.skew))
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


# --------------------------------------------------------------------------- the headline flag

APPEARANCE_WORDS = ["planted", "w1", "w2", "w3", "w4", "w5"]


def appearance_tables(controls: bool = True, seed: int = 0):
    """Report tables where every query, control queries too, over-retrieves White and Male faces (faces
    cluster by appearance), and one word also the group planted for it: the hypergeometric test flags the
    common groups for every word, the test against the controls only the planted pair."""
    import pandas as pd

    from clipprobe.analysis.probe import probe_scores

    rng = np.random.default_rng(seed)
    n = 600
    race = rng.choice(["White", "Black", "East Asian"], size=n, p=[0.4, 0.3, 0.3])
    gender = rng.choice(["Male", "Female"], size=n)
    common = 1.2 * (race == "White") + 0.8 * (gender == "Male")

    def queries(m):
        return common[None, :] + rng.normal(0, 1, size=(m, n))

    scores = queries(len(APPEARANCE_WORDS))
    scores[0] += 2.0 * (race == "Black")
    ctrl = queries(40) if controls else None
    return probe_scores(scores, pd.DataFrame({"race": race, "gender": gender}), words=APPEARANCE_WORDS, k=60,
                        permutations=50, controls=ctrl, neutral=ctrl[0] if controls else None)


def _appearance_report(tmp_path, controls: bool):
    from clipprobe.report.writer import write_report

    tables = appearance_tables(controls)
    write_report(tables, tmp_path / "rep", figures=False, html=False)
    return load_report(tmp_path / "rep")


def _cards(text):
    return re.findall(r'<div class="card"><span class="big">(.*?)</span><span>(.*?)</span></div>', text)


def test_headlines_filter_and_sheets_use_the_flag_against_controls(tmp_path, drawn):
    rep = _appearance_report(tmp_path, controls=True)
    g = rep.groups
    vs, hyper = g["flagged_vs_controls"].astype(bool), g["flagged"].astype(bool)
    # the situation of the issue: many hypergeometric flags, few against the controls
    assert vs.sum() >= 1 and hyper.sum() >= vs.sum() + 5
    assert set(g.loc[vs, "word"]) == {"planted"} and hyper[g["word"] == "w3"].any()
    assert rep.run["controls_ran"] is True and rep.run["headline_flag"] == "flagged_vs_controls"
    assert (rep.run["n_flagged_vs_controls"], rep.run["n_flagged"]) == (int(vs.sum()), int(hyper.sum()))
    text = write_html_report(rep, tmp_path / "r.html", image_loader=lambda f: Image.new("RGB", (8, 8)),
                             max_sheets=50).read_text(encoding="utf-8")
    cards = _cards(text)
    flag_cards = [c for c in cards if "flagged" in c[1] or "hypergeometric" in c[1]]
    assert flag_cards == [(str(int(vs.sum())), "pairs flagged vs controls"), ("1", "words flagged vs controls"),
                          (str(int(hyper.sum())), "pairs not a random sample (hypergeometric)")]
    # the "how to read" box says the control flag first
    howto = re.search(r'<div class="howto">(.*?)</div>', text, re.S).group(1)
    assert howto.index("control queries") < howto.index("hypergeometric")
    assert htmlreport.HOWTO_CONTROLS in text
    # the word table's "flagged only" filter uses the count against the controls
    data = json.loads(_json_block(text))
    assert data["flag"] == "n_flagged_vs_controls" and "flagged vs controls only</label>" in text
    flagged_rows = [r for r in data["words"] if r["n_flagged_vs_controls"] > 0]
    assert {r["word"] for r in flagged_rows} == {"planted"}
    # faces: only for words flagged against the controls
    assert _sheet_words(text) == ["planted"]
    # the flagged table: the pairs flagged against the controls first and bold, every hypergeometric one after
    section = re.search(r'<section id="flagged">(.*?)</section>', text, re.S).group(1)
    assert f"<b>{int(vs.sum())} word-group pairs flagged</b>" in section
    body = re.search(r"<tbody>(.*?)</tbody>", section, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    assert len(rows) == int((vs | hyper).sum())
    bold = ['font-weight:600' in r for r in rows]
    assert bold == sorted(bold, reverse=True) and sum(bold) == int(vs.sum())


def test_without_controls_the_flags_are_null_and_the_page_says_no_test_ran(tmp_path, drawn):
    import pyarrow.parquet as pq

    from clipprobe.pipeline.report import summary_line

    rep = _appearance_report(tmp_path, controls=False)
    g = rep.groups
    # null, not False: in the files and in the tables read back
    for name, column in (("groups.parquet", "flagged_vs_controls"), ("groups.parquet", "q_vs_controls"),
                         ("words.parquet", "n_flagged_vs_controls")):
        table = pq.read_table(tmp_path / "rep" / name)
        assert table.column(column).null_count == table.num_rows, column
    assert g["flagged_vs_controls"].isna().all() and rep.words["n_flagged_vs_controls"].isna().all()
    assert rep.summary["share_flagged_vs_controls"].isna().all()
    assert rep.run["controls_ran"] is False and rep.run["n_flagged_vs_controls"] is None
    assert rep.run["headline_flag"] == "flagged" and rep.run["n_flagged"] == int(g["flagged"].sum()) > 0
    run = {**rep.run, "taxonomy": {"n_words": 6}}
    line = summary_line(run)
    assert "no control test was run" in line and f"{rep.run['n_flagged']} with a top-k that is not a random" in line
    text = write_html_report(rep, tmp_path / "r.html", max_sheets=0).read_text(encoding="utf-8")
    assert ("none", "control test (not run)") in _cards(text)
    assert (str(rep.run["n_flagged"]), "pairs flagged, hypergeometric only") in _cards(text)
    assert htmlreport.HOWTO_NO_CONTROLS in text
    data = json.loads(_json_block(text))
    assert data["flag"] == "n_flagged" and all(r["n_flagged_vs_controls"] is None for r in data["words"])
    assert "No control test was run" in re.search(r'<section id="flagged">(.*?)</section>', text, re.S).group(1)


NODE_RUN = r"""
const fs = require("fs");
const page = fs.readFileSync(process.argv[2], "utf8");
const data = /<script type="application\/json" id="clipprobe-data">([\s\S]*?)<\/script>/.exec(page)[1];
const code = /<script>([\s\S]*?)<\/script><\/body>/.exec(page)[1];
function el() {
  return { value: "", checked: false, children: [], listeners: {}, style: {}, attrs: {},
    classList: { add() {}, remove() {}, contains() { return false; } },
    addEventListener(t, f) { (this.listeners[t] = this.listeners[t] || []).push(f); },
    appendChild(c) { this.children.push(c); return c; },
    replaceChildren(f) { this.children = f ? f.children : []; },
    setAttribute(k, v) { this.attrs[k] = v; }, getAttribute(k) { return this.attrs[k]; },
    hasAttribute(k) { return k in this.attrs; } };
}
const els = { "clipprobe-data": { textContent: data } };
global.document = { getElementById: (id) => els[id] || (els[id] = el()), querySelectorAll: () => [],
  createElement: () => el(), createDocumentFragment: () => el(), body: el() };
new Function(code)();
const body = els["words-body"], box = els["words-flagged"];
const all = body.children.length;
box.checked = true;
box.listeners.input.forEach((f) => f());
console.log(JSON.stringify({ all: all, shown: body.children.map((tr) => [tr.children[0].textContent,
  tr.children[2].textContent]) }));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="no node installed")
@pytest.mark.parametrize("controls", [True, False])
def test_flagged_only_filter_runs_on_the_headline_flag(tmp_path, drawn, controls):
    """The page's own script, run by node against a minimal document: ticking "flagged only" keeps the
    (word, attribute) rows flagged against the controls (the hypergeometric flag where no control test ran)."""
    rep = _appearance_report(tmp_path, controls=controls)
    page = write_html_report(rep, tmp_path / "r.html", max_sheets=0)
    script = tmp_path / "run.js"
    script.write_text(NODE_RUN)
    out = subprocess.run(["node", str(script), str(page)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    w = rep.words
    column = "n_flagged_vs_controls" if controls else "n_flagged"
    want = w[w[column].fillna(0) > 0]
    assert got["all"] == len(w)
    assert sorted(map(tuple, got["shown"])) == sorted(zip(want["word"], want["attribute"]))
    if controls:
        assert {word for word, _ in got["shown"]} == {"planted"} and (w["n_flagged"] > 0).sum() > len(want)


# --------------------------------------------------------------------------- the caption cross-check section


def _write_counts(report, folder, *, skip_group=None, seed=3):
    """A `captions count` folder whose lexicon names the report's groups (but ``skip_group``)."""
    from clipprobe._io import write_parquet
    from clipprobe.analysis.cooccurrence import cooccurrence_table

    rng = np.random.default_rng(seed)
    words = sorted(set(report.groups["word"]))
    groups = [p for p in dict.fromkeys(zip(report.groups["attribute"], report.groups["group"])) if p[1] != skip_group]
    n_word = rng.integers(40, 200, size=len(words))
    n_group = rng.integers(300, 900, size=len(groups))
    n_both = (np.minimum.outer(n_word, n_group) * rng.uniform(0, 0.5, size=(len(words), len(groups)))).astype(int)
    write_parquet(folder / "cooccurrence.parquet", cooccurrence_table(words, groups, 5000, n_word, n_group, n_both))
    return folder


def _empty_scatter(joined, *, attribute=None, correlations=None, ax=None):
    """A stand-in for the cross-check's scatter plot (tested in test_captions_crosscheck): empty axes, fast."""
    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(2, 2)).add_subplot()
    return ax


@pytest.fixture(scope="module")
def crosschecked(evil_report, tmp_path_factory):
    """A copy of the evil report with a cross-check written into it (scatter plots left empty: fast)."""
    from clipprobe.report import crosscheck as module

    root = tmp_path_factory.mktemp("cross")
    report_dir = root / "report"
    shutil.copytree(evil_report.path, report_dir)
    rep = load_report(report_dir)
    counts = _write_counts(rep, root / FOLDER / "counts")
    real = module.crosscheck_scatter
    module.crosscheck_scatter = _empty_scatter
    try:
        module.write_crosscheck(rep.groups, counts, report_dir)
    finally:
        module.crosscheck_scatter = real
    return rep, counts


def test_crosscheck_has_its_section_with_escaped_strings(crosschecked, tmp_path, drawn):
    from scipy.stats import spearmanr

    rep, counts = crosschecked
    text = write_html_report(rep, tmp_path / "after.html").read_text(encoding="utf-8")
    for payload in PAYLOADS:
        assert payload not in text, payload
    assert '<a href="#captions">Captions</a>' in text and '<section id="captions">' in text
    section = text.split('<section id="captions">')[1].split("</section>")[0]
    assert html.escape(str(counts), quote=True) in section       # the counts folder, escaped
    joined = pd.read_parquet(rep.path / "crosscheck.parquet")
    for attribute, rows in joined.groupby("attribute"):
        rho = spearmanr(rows["skew"], rows["caption_log_odds"]).statistic
        assert f"<td>{attribute}</td><td class=\"num\" data-v=\"{rho:.7g}\">{rho:.3f}</td>" in section
    # the figures written beside it are embedded, and the strongest caption associations listed
    for attribute in joined["attribute"].unique():
        png = (rep.path / "figures" / f"crosscheck_{attribute}.png").read_bytes()
        assert base64.b64encode(png).decode() in section
    top = joined.sort_values("caption_log_odds", ascending=False).iloc[0]
    assert f">{html.escape(top.word, quote=True)}</td>" in section.split('id="crosscheck-top"')[1]


def test_a_report_without_crosscheck_has_no_caption_section(evil_report, tmp_path, drawn):
    text = write_html_report(evil_report, tmp_path / "a.html").read_text(encoding="utf-8")
    assert 'id="captions"' not in text and 'href="#captions"' not in text


def test_crosscheck_of_another_report_is_left_out(crosschecked, tmp_path, drawn):
    rep, _ = crosschecked
    folder = tmp_path / "r"
    shutil.copytree(rep.path, folder)
    rep = load_report(folder)
    assert htmlreport.crosscheck_data(rep) is not None
    record = json.loads((folder / "crosscheck.json").read_text())
    other = rep.groups.assign(skew=rep.groups["skew"] + 0.5)      # a rerun of the report changed its rows
    from clipprobe.report.crosscheck import groups_fingerprint

    assert groups_fingerprint(other) != record["report_groups"] == groups_fingerprint(rep.groups)
    (folder / "crosscheck.json").write_text(json.dumps({**record, "report_groups": groups_fingerprint(other)}))
    assert htmlreport.crosscheck_data(rep) is None
    assert 'id="captions"' not in write_html_report(rep, tmp_path / "a.html").read_text(encoding="utf-8")


def test_crosscheck_with_a_lexicon_that_does_not_name_the_groups_is_an_error(tmp_path):
    from clipprobe.errors import DataError
    from clipprobe.report.crosscheck import MSG_GROUPS_MISMATCH, check_counts, write_crosscheck

    rep = load_report(make_report(tmp_path / "r", images=False, k=30, n_boot=5))
    missing = rep.groups_of("gender")[0]
    counts = _write_counts(rep, tmp_path / "counts", skip_group=missing)
    with pytest.raises(DataError) as err:
        write_crosscheck(rep.groups, counts, tmp_path / "out")
    have = sorted(g for g in rep.groups_of("gender") if g != missing)
    assert str(err.value) == MSG_GROUPS_MISMATCH.format(
        source=f"caption counts folder {counts}", attribute="gender", missing=repr(missing),
        counts=", ".join(repr(g) for g in have))
    assert not (tmp_path / "out").exists()
    groups = {a: rep.groups_of(a) for a in rep.attributes}
    with pytest.raises(DataError, match="the caption lexicon does not match the report"):
        check_counts(counts, list(rep.words["word"]), groups=groups)
    with pytest.raises(DataError, match="no attribute in common"):
        check_counts(counts, list(rep.words["word"]), groups={"skin_tone": ["light", "dark"]})
    # an attribute the lexicon lacks altogether (race_gender is derived) is only left out
    only = _write_counts(rep, tmp_path / "only", skip_group=None)
    check_counts(only, list(rep.words["word"]), groups={**groups, "hair": ["long", "short"]})


# --------------------------------------------------------------------------- the index page of a folder of runs


def test_index_links_every_page_of_the_runs_under_a_folder(evil_report, tmp_path):
    from urllib.parse import quote

    from click.testing import CliRunner

    from clipprobe.cli import cli
    from clipprobe.report.pages import find_runs, write_index

    root = tmp_path / "runs"
    shutil.copytree(evil_report.path, root / "reports" / FOLDER)
    (root / "reports" / FOLDER / "report.html").write_text("<html></html>")
    sub = root / "subsets" / "vit"
    sub.mkdir(parents=True)
    (sub / "run.json").write_text(json.dumps({"command": "subsets", "model": {"canonical": MODEL},
                                              "dataset": {"spec": FOLDER}, "started": "2026-01-02T03:04:05"}))
    for name in ("subsets.html", "compare.html"):
        (sub / name).write_text("<html></html>")
    (sub / "figures").mkdir()
    (sub / "figures" / "local_skew.png").write_bytes(b"png")
    (sub / "figures" / "local_skew.pdf").write_bytes(b"pdf")
    (root / "cache" / "x").mkdir(parents=True)          # caches and partial results are not runs
    (root / "cache" / "x" / "run.json").write_text(json.dumps({"command": "report"}))
    (root / "notes").mkdir()
    (root / "notes" / "run.json").write_text("{not json")  # unreadable records are skipped
    (root / "retrieve-nurse.txt").write_text("table")

    runs = find_runs(root)
    assert [(r["path"], r["command"]) for r in runs] == [(f"reports/{FOLDER}", "report"), ("subsets/vit", "subsets")]
    assert runs[1]["pages"] == ["subsets/vit/subsets.html", "subsets/vit/compare.html"]
    assert runs[1]["figures"] == ["subsets/vit/figures/local_skew.pdf", "subsets/vit/figures/local_skew.png"]
    assert runs[0]["model"] == MODEL and runs[1]["started"] == "2026-01-02 03:04"

    result = CliRunner().invoke(cli, ["index", str(root)])
    assert result.exit_code == 0, result.output
    text = (root / "index.html").read_text(encoding="utf-8")
    assert write_index(root).read_text(encoding="utf-8") == text     # the same page from the same folder
    for payload in PAYLOADS:
        assert payload not in text, payload
    hrefs = re.findall(r'href="([^"]*)"', text)
    for page in (f"reports/{FOLDER}/report.html", "subsets/vit/subsets.html", "subsets/vit/compare.html",
                 "subsets/vit/figures/local_skew.png", "subsets/vit/figures/local_skew.pdf", "retrieve-nurse.txt"):
        assert html.escape(quote(page, safe="/"), quote=True) in hrefs, page
    assert all(not h.startswith(("/", "javascript:", "http")) and ".." not in h for h in hrefs)
    assert "cache/x" not in text and "<script" not in text
    assert "<script" not in text and html.escape(MODEL) in text


def test_index_command_keeps_build_and_refuses_an_empty_folder(tmp_path):
    from click.testing import CliRunner

    from clipprobe.cli import cli

    runner = CliRunner()
    assert runner.invoke(cli, ["index", "build", "--help"]).exit_code == 0
    result = runner.invoke(cli, ["index", str(tmp_path)])
    assert result.exit_code == 1 and f"no run folder (a folder with run.json written by clipprobe) under {tmp_path}" \
        in result.output
    result = runner.invoke(cli, ["index", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_crosscheck_command_adds_the_section_to_an_existing_page(evil_report, tmp_path, monkeypatch, drawn):
    from click.testing import CliRunner
    from matplotlib.figure import Figure

    from clipprobe.cli import cli
    from clipprobe.report import crosscheck as module

    # figures are tested above: here they are stubs
    monkeypatch.setattr(module, "crosscheck_scatter", _empty_scatter)
    monkeypatch.setattr(Figure, "savefig", lambda self, path, **kw: Path(path).write_bytes(DRAWN))
    monkeypatch.setattr(htmlreport._FigureSource, "png", lambda self, spec: DRAWN)
    shutil.copytree(evil_report.path, tmp_path / "r")
    rep = load_report(tmp_path / "r")
    (rep.path / "report.html").write_text("<html>an earlier page</html>")
    counts = _write_counts(rep, tmp_path / "counts")
    result = CliRunner().invoke(cli, ["crosscheck", str(rep.path), str(counts)])
    assert result.exit_code == 0, result.output
    assert 'id="captions"' in (rep.path / "report.html").read_text(encoding="utf-8")
    assert f"  {rep.path / 'report.html'}" in result.output.splitlines()
    # numbers printed rounded: rho to 3 decimals, p to 2 significant digits
    lines = [ln for ln in result.output.splitlines() if "Spearman rho" in ln]
    assert lines and all(re.fullmatch(r"\w+: Spearman rho\(skew, caption log-odds\) = -?\d\.\d{3} "
                                      r"\(p = [-+.e\d]+, n = \d+\)", ln) for ln in lines), lines
    assert not re.search(r"\d\.\d{6,}", result.output)


@pytest.mark.skipif(_chromium() is None, reason="no chromium/chrome installed")
def test_wide_tables_show_every_column_in_a_laptop_window(tmp_path, monkeypatch):
    """At 1280 px every column of the flagged-pairs table fits its box: headers and text cells wrap instead of
    pushing columns ("q vs controls") out of sight. Measured in the browser by a script added to a copy of
    the page (the page itself runs only its own script)."""
    words = {f"{w}-word-with-a-long-name": ("criminal justice", "education and wealth", "portrayal in media")
             for w in ("first", "second", "third")}
    plants = {w: ("race_gender", "Southeast Asian_Female", 12.0) for w in words}
    rep = load_report(make_report(tmp_path / "r", words=words, plants=plants, images=False, k=30, n_boot=5))
    monkeypatch.setattr(htmlreport._FigureSource, "png", lambda self, spec: DRAWN)     # figures are not measured
    text = write_html_report(rep, tmp_path / "report.html").read_text(encoding="utf-8")
    probe = ("<script>addEventListener('load', function () {"
             "var out = [];"
             "document.querySelectorAll('.tablewrap').forEach(function (w) {"
             "  var t = w.querySelector('table');"
             "  out.push((t.id || 'table') + ':' + (w.scrollWidth - w.clientWidth));"
             "});"
             "document.body.setAttribute('data-overflow', out.join(','));"
             "});</script></body>")
    page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", text).replace("</body>", probe)
    (tmp_path / "measured.html").write_text(page, encoding="utf-8")
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'ud'}",
           "--window-size=1280,900", "--virtual-time-budget=3000", "--dump-dom", (tmp_path / "measured.html").as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    found = re.search(r'data-overflow="([^"]*)"', out.stdout)
    assert found, out.stderr[-2000:]
    overflow = dict(item.rsplit(":", 1) for item in found.group(1).split(","))
    assert "flagged-table" in overflow and "summary-table" in overflow
    assert {k: int(v) for k, v in overflow.items() if int(v) > 0} == {}
