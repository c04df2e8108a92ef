"""Generate a small, schema-complete report folder for tests.

The folder has the same files and columns as ``clipprobe report`` writes
(groups.parquet, words.parquet, summary.csv, run.json) and, optionally, a
dataset root with tiny face-like JPEGs so contact sheets can be drawn. The
numbers are internally consistent: a synthetic labelled dataset is drawn, each
word retrieves k images with a planted preference for one group, and counts,
shares, skews (count 0 uses share 1/k inside the log), hypergeometric p-values,
Benjamini-Hochberg q-values, Wilson intervals, control-query p-values and a
shuffled-label null for MaxSkew are computed from those retrievals. It is a fixture generator, not the reference
implementation of the metrics.

    from tests.reportgen import make_report
    report_dir = make_report(tmp_path / "report", words={"nurse": "occupation", ...})
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

RACES = ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern")
GENDERS = ("Male", "Female")
AGES = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70")

DEFAULT_WORDS: dict[str, str | Sequence[str]] = {
    "nurse": "occupation",
    "engineer": "occupation",
    "janitor": "occupation",
    "ceo": ("occupation", "status"),
    "rich": "status",
    "poor": "status",
    "homeless": "status",
    "kind": "traits",
    "lazy": "traits",
    "smart": "traits",
}

# Planted preferences: word -> (attribute, group, strength multiplier).
DEFAULT_PLANTS = {
    "nurse": ("gender", "Female", 6.0),
    "engineer": ("gender", "Male", 6.0),
    "ceo": ("race", "White", 8.0),
    "homeless": ("race", "Black", 6.0),
    "janitor": ("race", "Latino_Hispanic", 6.0),
}


def _bh(p):
    import numpy as np

    p = np.asarray(p, dtype=float)
    n = p.size
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


def make_report(
    out_dir,
    *,
    words: Mapping[str, str | Sequence[str]] | None = None,
    plants: Mapping[str, tuple[str, str, float]] | None = None,
    model: str = "TinyCLIP-test:random",
    k: int = 20,
    n_images: int = 300,
    n_boot: int = 40,
    images: bool = True,
    file_prefix: str = "val/",
    alpha: float = 0.05,
    seed: int = 0,
    format_version: int | None = None,
) -> Path:
    """Write a synthetic report folder to ``out_dir`` and return its path.

    ``words`` maps each word to its category or categories; ``plants`` maps a
    word to ``(attribute, group, weight)``: that group's images are ``weight``
    times more likely to be retrieved. With ``images`` a dataset root
    ``out_dir/dataset`` with one small JPEG per image is written and recorded
    in run.json.
    """
    import numpy as np
    import pandas as pd
    from scipy import stats

    from clipprobe.report.store import FORMAT_VERSION, table_checksums

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    words = dict(DEFAULT_WORDS if words is None else words)
    plants = dict(DEFAULT_PLANTS if plants is None else plants)
    rng = np.random.default_rng(seed)

    race = rng.choice(len(RACES), size=n_images, p=[0.25, 0.15, 0.15, 0.13, 0.11, 0.12, 0.09])
    gender = rng.integers(0, 2, size=n_images)
    age = rng.choice(len(AGES), size=n_images, p=[0.02, 0.1, 0.1, 0.3, 0.22, 0.12, 0.08, 0.04, 0.02])
    labels = {
        "race": np.array([RACES[i] for i in race], dtype=object),
        "gender": np.array([GENDERS[i] for i in gender], dtype=object),
        "age": np.array([AGES[i] for i in age], dtype=object),
    }
    labels["race_gender"] = np.array([f"{r}_{g}" for r, g in zip(labels["race"], labels["gender"])], dtype=object)
    group_order = {
        "race": list(RACES), "gender": list(GENDERS), "age": list(AGES),
        "race_gender": [f"{r}_{g}" for r in RACES for g in GENDERS],
    }
    files = [f"{file_prefix}{i + 1}.jpg" for i in range(n_images)]

    if images:
        _write_images(out_dir / "dataset", files, race, gender, rng)

    def top_k_for(word: str) -> np.ndarray:
        weight = np.ones(n_images)
        if word in plants:
            attr, group, strength = plants[word]
            weight[labels[attr] == group] *= strength
        return rng.choice(n_images, size=k, replace=False, p=weight / weight.sum())

    neutral = rng.choice(n_images, size=k, replace=False)
    group_rows, word_rows = [], []
    for word, cats in words.items():
        category = cats if isinstance(cats, str) else "; ".join(cats)
        top = top_k_for(word)
        boot = [top[rng.integers(0, k, size=k)] for _ in range(n_boot)]
        for attr, groups in group_order.items():
            lab = labels[attr]
            base = np.array([(lab == g).mean() for g in groups])
            present = base > 0
            groups_p = [g for g, ok in zip(groups, present) if ok]
            base = base[present]

            def shares(idx):
                return np.array([(lab[idx] == g).sum() for g in groups_p]) / len(idx)

            def skews(sh):
                return np.log(np.where(sh > 0, sh, 1.0 / k) / base)

            def norm_entropy(sh):
                nz = sh[sh > 0]
                return float(-(nz * np.log(nz)).sum() / np.log(len(groups_p)))

            share = shares(top)
            count = np.rint(share * k).astype(int)
            skew = skews(share)
            neutral_skew = skews(shares(neutral))
            boot_shares = np.array([shares(b) for b in boot])
            boot_skews = np.array([skews(s) for s in boot_shares])
            sizes = np.rint(base * n_images).astype(int)
            p_over = stats.hypergeom.sf(count - 1, n_images, sizes, k)
            p_under = stats.hypergeom.cdf(count, n_images, sizes, k)
            # Wilson score interval, written out
            z95 = stats.norm.ppf(0.975)
            centre = (share + z95**2 / (2 * k)) / (1 + z95**2 / k)
            half = z95 * np.sqrt(share * (1 - share) / k + z95**2 / (4 * k**2)) / (1 + z95**2 / k)
            lo, hi = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
            control_share = base
            p_controls = stats.binom.sf(count - 1, k, control_share)
            null_max = [skews(shares(rng.choice(n_images, size=k, replace=False))).max() for _ in range(50)]
            for j, g in enumerate(groups_p):
                with np.errstate(divide="ignore"):
                    skew_lo = float(np.log(lo[j] / base[j]))
                group_rows.append({
                    "word": word, "category": category, "attribute": attr, "group": g, "k": k,
                    "count": int(count[j]), "share": float(share[j]), "base_share": float(base[j]),
                    "skew": float(skew[j]), "p_over": float(p_over[j]), "p_under": float(p_under[j]),
                    "share_ci_low": float(lo[j]), "share_ci_high": float(hi[j]),
                    "skew_ci_low": skew_lo, "skew_ci_high": float(np.log(hi[j] / base[j])),
                    "low_count": bool(count[j] < 5),
                    "control_share": float(control_share[j]), "p_vs_controls": float(p_controls[j]),
                    "c_asc": float(rng.normal(0, 0.3) + 0.2 * skew[j]),
                    "skew_vs_neutral": float(skew[j] - neutral_skew[j]),
                })
            kl = float(sum(s * np.log(s / b) for s, b in zip(share, base) if s > 0))
            z = sum(1 / np.log2(i + 1) for i in range(1, k + 1))
            ndkl = 0.0
            for i in range(1, k + 1):
                si = shares(top[:i])
                ndkl += sum(s * np.log(s / b) for s, b in zip(si, base) if s > 0) / np.log2(i + 1)
            top_idx = int(np.argmax(skew))
            boot_top = np.argmax(boot_skews, axis=1)
            null_mean = float(np.mean(null_max))
            m_present = int((count > 0).sum())
            word_rows.append({
                "word": word, "category": category, "attribute": attr,
                "prompts": [f"a photo of a {word} person", f"a photo of a person who is {word}"],
                "top_group": groups_p[top_idx],
                "max_skew": float(skew.max()), "max_skew_null": null_mean,
                "max_skew_excess": float(skew.max()) - null_mean,
                "p_max_skew": float((1 + sum(v >= skew.max() for v in null_max)) / (1 + len(null_max))),
                "min_skew": float(skew.min()), "min_skew_null": float(skew.min()) - 0.1, "min_skew_excess": 0.1,
                "p_min_skew": 0.5,
                "norm_entropy": norm_entropy(share),
                "norm_entropy_mm": norm_entropy(share) + (m_present - 1) / (2 * k) / np.log(len(groups_p)),
                "kl_to_base": kl, "ndkl_at_k": float(ndkl / z), "ndkl_full": float(ndkl / z) * 0.5,
                "stability": float((boot_top == top_idx).mean()), "n_retrieved": k,
                "top_files": [files[i] for i in top],
            })

    groups = pd.DataFrame(group_rows)
    groups["q_over"] = _bh(groups["p_over"].to_numpy())
    groups["flagged"] = groups["q_over"] < alpha
    groups["q_vs_controls"] = _bh(groups["p_vs_controls"].to_numpy())
    groups["flagged_vs_controls"] = groups["q_vs_controls"] < alpha
    flagged_n = groups.groupby(["word", "attribute"])["flagged"].sum()
    flagged_c = groups.groupby(["word", "attribute"])["flagged_vs_controls"].sum()
    wdf = pd.DataFrame(word_rows)
    wdf["n_flagged"] = [int(flagged_n[(w, a)]) for w, a in zip(wdf["word"], wdf["attribute"])]
    wdf["n_flagged_vs_controls"] = [int(flagged_c[(w, a)]) for w, a in zip(wdf["word"], wdf["attribute"])]

    summary = _summary(wdf, groups, rng, n_boot)
    groups.to_parquet(out_dir / "groups.parquet", index=False)
    wdf.to_parquet(out_dir / "words.parquet", index=False)
    summary.to_csv(out_dir / "summary.csv", index=False)
    run = {
        "format_version": FORMAT_VERSION if format_version is None else format_version,
        "clipprobe_version": "0.1.0",
        "config": {"k": k, "alpha": alpha, "bootstrap": n_boot, "seed": seed, "reference": "base"},
        "versions": {"clipprobe": "0.1.0"},
        "model": {"spec": model},
        "dataset": {
            "spec": f"csv:{out_dir / 'dataset'}", "fingerprint": f"synthetic-{seed}-{n_images}",
            "n_images": n_images, "root": str(out_dir / "dataset") if images else None,
        },
        "timings_s": {"retrieve": 0.01, "stats": 0.02},
        "taxonomy": {"name": "synthetic", "n_words": len(words)},
        "k": k, "alpha": alpha, "reference": "base", "bootstrap": n_boot, "seed": seed,
    }
    run["files"] = table_checksums(out_dir)
    (out_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    return out_dir


def _summary(words, groups, rng, n_boot):
    import pandas as pd

    ex = words.assign(category=words["category"].str.split("; ")).explode("category")
    gex = groups.assign(category=groups["category"].str.split("; ")).explode("category")
    rows = []
    for (cat, attr), part in ex.groupby(["category", "attribute"], sort=True):
        ent = part["norm_entropy"].to_numpy()
        fl = gex[(gex["category"] == cat) & (gex["attribute"] == attr) & gex["flagged"]]
        top = fl.groupby("group")["skew"].mean().sort_values(ascending=False).head(3)
        rows.append({
            "category": cat, "attribute": attr, "n_words": len(part),
            "mean_norm_entropy": float(ent.mean()),
            "mean_max_skew_excess": float(part["max_skew_excess"].mean()),
            "share_flagged": float((part["n_flagged"] > 0).mean()),
            "share_flagged_vs_controls": float((part["n_flagged_vs_controls"] > 0).mean()),
            "top_groups": "; ".join(top.index),
        })
    return pd.DataFrame(rows)


def _write_images(root: Path, files, race, gender, rng) -> None:
    """Tiny face-like JPEGs: a skin-toned oval on a coloured background."""
    from PIL import Image, ImageDraw

    tones = [(240, 205, 180), (120, 80, 55), (200, 150, 110), (235, 200, 160), (190, 140, 95),
             (160, 110, 75), (210, 165, 125)]
    for name, r, g in zip(files, race, gender):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        bg = tuple(int(v) for v in rng.integers(60, 200, size=3))
        img = Image.new("RGB", (48, 48), bg)
        draw = ImageDraw.Draw(img)
        draw.ellipse((12, 6, 36, 42), fill=tones[int(r)])
        draw.rectangle((12, 4, 36, 12 if g == 0 else 20), fill=(40, 30, 20))
        img.save(path, quality=85)
