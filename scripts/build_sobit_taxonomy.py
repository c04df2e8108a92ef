"""Rebuild taxonomy/sobit.json from the public So-B-IT derivative lists.

Input: the reference folder described in its PROVENANCE.md (default ../shared/reference/sobit):
  derivative_lists_union.json  category -> [{word, in_ameliagmz, in_fairclip, in_broken_mirror}]
  pos_tags_third_party.json    word -> NOUN | ADJECTIVE (one re-implementation's tags)
Words the third-party tagging lacks (mostly from the `stereotyping` category) are tagged here,
by hand, and marked with pos_source "clipprobe".

Usage: python scripts/build_sobit_taxonomy.py [REFERENCE_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Our own part-of-speech tags for the words the third-party file does not cover.
OWN_POS = {
    "Karen": "noun", "jock": "noun", "racist": "noun", "migrant": "noun", "goth": "noun",
    "dumb blonde": "noun", "boomer": "noun", "gold digger": "noun", "welfare-dependent": "adjective",
    "nerd": "noun", "drama queen": "noun", "geek": "noun", "neckbeard": "noun", "basic": "adjective",
    "redneck": "noun", "workaholic": "noun", "soccer mom": "noun", "snowflake": "noun",
    "valley girl": "noun", "crazy cat lady": "noun", "player": "noun", "feminazi": "noun",
    "incel": "noun", "bro": "noun", "hippie": "noun", "chad": "noun", "abnormal": "adjective",
    "oriental": "adjective", "tradwife": "noun", "alpha male": "noun", "beta male": "noun",
    "attorney": "noun", "stoner": "noun", "cheerleader": "noun",
}
LISTS = ("ameliagmz", "fairclip", "broken_mirror")
RENAME = {"behavorial": "behavioral"}

HEADER = {
    "name": "sobit",
    "title": "So-B-IT taxonomy (public derivative lists, union)",
    "citation": "Hamidieh, Zhang, Gerych, Hartvigsen, Ghassemi. Identifying Implicit Social Biases in "
    "Vision-Language Models. AIES 2024 (arXiv:2411.00997).",
    "note": (
        "The paper defines 374 words in ten categories, but its exact list is not public. This file is "
        "the union of the three public derivative lists (ameliagmz/Debiasing_CLIP_Neural_Interventions "
        "So-B-IT_taxonomy.json; lluisgomez/FairCLIP evals/So-B-IT_taxonomy.json; InterVisions/"
        "broken_mirror config/sobit_taxonomy.json): 441 category entries, 434 unique words, ten "
        "categories ('stereotyping' is in the first list only). Each word records the lists that "
        "contain it; the 'sobit-core' taxonomy keeps the words that all three lists contain. The "
        "lists' quirks are kept as published (the misspelling 'attourney' beside 'attorney', the "
        "non-word 'uncare', scraped-looking occupations such as 'drawer', 'printer', 'army')."
    ),
    "aliases": {"behavorial": "behavioral"},
    "pos_source": "third-party re-implementation tags; words it lacks tagged by clipprobe (pos_source 'clipprobe')",
}


def build(reference: Path) -> tuple[dict, dict]:
    union = json.loads((reference / "derivative_lists_union.json").read_text())
    pos = json.loads((reference / "pos_tags_third_party.json").read_text())
    full = dict(HEADER, categories={})
    core = dict(HEADER, name="sobit-core", title="So-B-IT taxonomy (words in all three public lists)",
                categories={})
    for category, entries in union.items():
        name = RENAME.get(category, category)
        rows = []
        for e in entries:
            word = e["word"]
            if word in pos:
                tag, src = pos[word].lower(), "third-party"
            else:
                tag, src = OWN_POS[word], "clipprobe"
            lists = [l for l in LISTS if e[f"in_{l}"]]
            rows.append({"word": word, "pos": tag, "lists": lists, "pos_source": src})
        full["categories"][name] = rows
        kept = [r for r in rows if len(r["lists"]) == len(LISTS)]
        if kept:
            core["categories"][name] = kept
    return full, core


def main(argv: list[str]) -> int:
    reference = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[2] / "shared/reference/sobit"
    out = Path(__file__).resolve().parents[1] / "taxonomy"
    full, core = build(reference)
    for data, fname in ((full, "sobit.json"), (core, "sobit-core.json")):
        (out / fname).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        n = sum(len(v) for v in data["categories"].values())
        print(f"{fname}: {len(data['categories'])} categories, {n} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
