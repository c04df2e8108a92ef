"""Several models' reports side by side.

Reports are compared on the (word, attribute) pairs they share: reports made
with different taxonomies are not refused, the comparison is restricted to the
intersection and :attr:`CompareResult.notes` says how many pairs were left out.
Differences in k, dataset, reference or alpha are also noted, since they change
what the numbers mean.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from pathlib import Path
from typing import Any, Sequence

from clipprobe._io import atomic_path, csv_text, write_parquet
from clipprobe.errors import ClipprobeError, one_of
from clipprobe.faces import ATTRIBUTES
from clipprobe.report.store import explode_categories

log = logging.getLogger(__name__)

MSG_TOO_FEW = "compare needs at least two reports, got {n}"
MSG_NO_OVERLAP = "the reports share no (word, attribute) pair; nothing to compare ({names})"


@dataclasses.dataclass(frozen=True)
class CompareResult:
    """Tables of a comparison; every table has one column per model name where it is wide.

    - ``categories``: long table ``category, attribute, model, n_words, mean_norm_entropy, share_flagged``
      over the shared words;
    - ``correlations``: ``attribute, model_a, model_b, n_words, spearman_rho, p_value`` of word-level
      ``max_skew``;
    - ``words``: ``word, category, attribute`` and per model ``max_skew:<m>``, ``top_group:<m>``,
      ``flagged_groups:<m>``, plus ``top_group_differs`` and ``flagged_differs``;
    - ``disagreements``: the rows of ``words`` where the top or the flagged groups differ.
    """

    names: list[str]
    categories: Any
    correlations: Any
    words: Any
    disagreements: Any
    notes: list[str]


def short_model_name(report) -> str:
    """A short display name of a report's model: the spec of a pretrained or Hub model
    (``ViT-B-32:openai``), ``ARCH:file stem`` for a weights file (``ARCH`` alone when the file is named after
    it), the folder name for a local folder; never a full path."""
    from pathlib import PurePath

    spec = report.model_spec
    model = report.run.get("model") if isinstance(report.run.get("model"), dict) else {}
    kind, path, arch = model.get("kind"), model.get("path"), model.get("arch")
    if kind == "file" and path and arch:
        stem = PurePath(str(path)).stem
        return str(arch) if stem == arch else f"{arch}:{stem}"
    if kind == "local-dir" and path:
        return PurePath(str(path)).name or spec
    if kind != "hf-hub" and not spec.startswith("hf-hub:") and ("/" in spec or "\\" in spec):
        arch, sep, rest = spec.partition(":")
        if sep and "/" not in arch and "\\" not in arch:
            return f"{arch}:{PurePath(rest).stem}"
        return PurePath(spec).name or spec
    return spec


def model_names(reports) -> list[str]:
    """A distinct display name per report: :func:`short_model_name`, with the folder name where names repeat."""
    short = [short_model_name(r) for r in reports]
    names = [s if short.count(s) == 1 else f"{s} ({r.path.name})" for s, r in zip(short, reports)]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return out


def _setting_notes(reports, names) -> list[str]:
    notes = []
    for key, label in (("k", "k"), ("reference", "reference"), ("alpha", "alpha")):
        values = [r.run.get(key) for r in reports]
        if len({repr(v) for v in values}) > 1:
            notes.append(f"reports differ in {label}: " + ", ".join(f"{n}={v}" for n, v in zip(names, values)))
    prints = [(r.run.get("dataset") or {}).get("fingerprint") for r in reports]
    if len({repr(p) for p in prints}) > 1:
        notes.append("reports were computed on different datasets (fingerprints differ): "
                     + ", ".join(f"{n}={p}" for n, p in zip(names, prints)))
    return notes


def compare_reports(reports: Sequence, *, names: Sequence[str] | None = None) -> CompareResult:
    """Compare two or more loaded reports (see :func:`clipprobe.report.store.load_report`)."""
    import pandas as pd
    from scipy import stats

    reports = list(reports)
    if len(reports) < 2:
        raise ClipprobeError(MSG_TOO_FEW.format(n=len(reports)))
    names = list(names) if names is not None else model_names(reports)
    if len(names) != len(reports) or len(set(names)) != len(names):
        raise ClipprobeError(f"compare needs one distinct name per report, got {names!r}")
    notes = _setting_notes(reports, names)

    keysets = [set(zip(r.words["word"], r.words["attribute"])) for r in reports]
    shared = set.intersection(*keysets)
    if not shared:
        raise ClipprobeError(MSG_NO_OVERLAP.format(names=", ".join(names)))
    for name, keys in zip(names, keysets):
        if len(keys) > len(shared):
            notes.append(f"{name}: {len(keys) - len(shared)} of {len(keys)} (word, attribute) pairs are not in "
                         "every report and were left out")

    # The first report's category labels name each shared word.
    base = reports[0].words
    base = base[[k in shared for k in zip(base["word"], base["attribute"])]]
    wide = base[["word", "category", "attribute"]].reset_index(drop=True)
    long_rows = []
    for name, rep in zip(names, reports):
        w = rep.words.set_index(["word", "attribute"])
        g = rep.groups[rep.groups["flagged"]]
        flagged = g.groupby(["word", "attribute"])["group"].apply(lambda s: "; ".join(sorted(map(str, s))))
        idx = list(zip(wide["word"], wide["attribute"]))
        wide[f"max_skew:{name}"] = w.loc[idx, "max_skew"].to_numpy(dtype=float)
        wide[f"norm_entropy:{name}"] = w.loc[idx, "norm_entropy"].to_numpy(dtype=float)
        wide[f"top_group:{name}"] = w.loc[idx, "top_group"].astype(str).to_numpy()
        wide[f"flagged_groups:{name}"] = [flagged.get(i, "") for i in idx]
        part = wide[["word", "category", "attribute"]].copy()
        part["model"] = name
        part["norm_entropy"] = wide[f"norm_entropy:{name}"]
        part["flagged"] = wide[f"flagged_groups:{name}"] != ""
        long_rows.append(part)
    tops = wide[[f"top_group:{n}" for n in names]]
    flags = wide[[f"flagged_groups:{n}" for n in names]]
    wide["top_group_differs"] = tops.nunique(axis=1) > 1
    wide["flagged_differs"] = flags.nunique(axis=1) > 1
    wide = wide.sort_values(["attribute", "word"], key=_attribute_key).reset_index(drop=True)

    per_word = explode_categories(pd.concat(long_rows, ignore_index=True))
    categories = (per_word.groupby(["category", "attribute", "model"], sort=False)
                  .agg(n_words=("word", "nunique"), mean_norm_entropy=("norm_entropy", "mean"),
                       share_flagged=("flagged", "mean"))
                  .reset_index())
    categories["model"] = pd.Categorical(categories["model"], categories=names, ordered=True)
    categories = categories.sort_values(["category", "attribute", "model"], key=_attribute_key)
    categories["model"] = categories["model"].astype(str)
    categories = categories.reset_index(drop=True)

    corr_rows = []
    for attr in sorted(set(wide["attribute"]), key=_attr_rank):
        rows = wide[wide["attribute"] == attr]
        for a, b in itertools.combinations(names, 2):
            x, y = rows[f"max_skew:{a}"].to_numpy(), rows[f"max_skew:{b}"].to_numpy()
            if len(rows) >= 3 and x.std() > 0 and y.std() > 0:
                res = stats.spearmanr(x, y)
                rho, p = float(res.statistic), float(res.pvalue)
            else:
                rho = p = float("nan")
            corr_rows.append({"attribute": attr, "model_a": a, "model_b": b, "n_words": len(rows),
                              "spearman_rho": rho, "p_value": p})
    correlations = pd.DataFrame(corr_rows)
    disagreements = wide[wide["top_group_differs"] | wide["flagged_differs"]].reset_index(drop=True)
    for note in notes:
        log.warning("%s", note)
    return CompareResult(names=names, categories=categories, correlations=correlations, words=wide,
                         disagreements=disagreements, notes=notes)


def _attr_rank(attr: str):
    return (ATTRIBUTES.index(attr) if attr in ATTRIBUTES else len(ATTRIBUTES), attr)


def _attribute_key(col):
    if col.name == "attribute":
        return col.map(lambda a: _attr_rank(a)[0])  # canonical attribute order
    return col


def compare_entropy_plot(result: CompareResult, attribute: str, *, ax=None):
    """Mean normalized entropy per category, one colour per model (shared words only); returns the Axes."""
    import numpy as np

    from clipprobe.report import figures

    cats = result.categories
    present = sorted(set(cats["attribute"]), key=_attr_rank)
    if attribute not in present:
        raise one_of(attribute, present, "attribute")
    rows = cats[cats["attribute"] == attribute]
    order = rows.groupby("category")["mean_norm_entropy"].mean().sort_values().index.tolist()
    n, m = len(order), len(result.names)
    offsets = np.linspace(-0.25, 0.25, m) if m > 1 else [0.0]
    with figures.style():
        if ax is None:
            ax = figures.new_axes(figures.COLUMN_WIDTH, 1.1 + 0.25 * max(n, 2) + 0.12 * math.ceil(m / 2))
        for j, name in enumerate(result.names):
            part = rows[rows["model"] == name].set_index("category").reindex(order)
            color, marker = figures.series_style(j)
            ax.scatter(part["mean_norm_entropy"], np.arange(n) + offsets[j], s=figures.scaled(12), color=color,
                       marker=marker, label=figures.short(name, 32), zorder=3)
        ax.set_yticks(range(n), figures._ticks(order))
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlim(0, 1.02)
        ax.axvline(1.0, color="0.6", lw=figures.scaled(0.6), ls="--", zorder=0)
        ax.grid(axis="x", color="0.9", lw=figures.scaled(0.5))
        ax.set_axisbelow(True)
        ax.set_xlabel(figures.LABELS["norm_entropy"])
        ax.set_title(f"Diversity of the top-k by model ({figures.literal(attribute)})", **figures.TITLE_AT_TOP)
        handles, labels = ax.get_legend_handles_labels()
        ax.figure.legend(handles, labels, loc="outside lower center",
                         ncol=figures._legend_columns(ax.figure, labels), handletextpad=0.1, columnspacing=0.8)
    return ax


def compare_skew_scatter(result: CompareResult, attribute: str, model_a: str, model_b: str, *, ax=None):
    """Word-level max skew of one model against another, with the identity line and Spearman rho;
    returns the Axes."""
    import numpy as np

    from clipprobe.report import figures

    for name in (model_a, model_b):
        if name not in result.names:
            raise one_of(name, result.names, "model")
    rows = result.words[result.words["attribute"] == attribute]
    if rows.empty:
        raise one_of(attribute, sorted(set(result.words["attribute"]), key=_attr_rank), "attribute")
    x, y = rows[f"max_skew:{model_a}"].to_numpy(float), rows[f"max_skew:{model_b}"].to_numpy(float)
    corr = result.correlations
    rho = corr[(corr["attribute"] == attribute) & (corr["model_a"] == model_a) & (corr["model_b"] == model_b)]
    with figures.style():
        if ax is None:
            ax = figures.new_axes(figures.COLUMN_WIDTH, figures.COLUMN_WIDTH)
        ax.scatter(x, y, s=figures.scaled(9), color=figures.OKABE_ITO[0], alpha=0.8, lw=0)
        finite = np.concatenate([x[np.isfinite(x)], y[np.isfinite(y)]])
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=figures.scaled(0.6), ls="--", zorder=0)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal")
        label = figures.LABELS["max_skew"]
        ax.set_xlabel(f"{label}, {figures.short(model_a, 36)}")
        ax.set_ylabel(f"{label}, {figures.short(model_b, 36)}")
        title = f"Max skew per word ({figures.literal(attribute)})"
        if not rho.empty and np.isfinite(rho["spearman_rho"].iloc[0]):
            title += f"\nSpearman rho = {rho['spearman_rho'].iloc[0]:.2f}, {int(rho['n_words'].iloc[0])} words"
        ax.set_title(title, **figures.TITLE_AT_TOP)
    return ax


def write_comparison(result: CompareResult, out_dir, *, formats: Sequence[str] | None = None) -> list[Path]:
    """Write the comparison tables (CSV and parquet), notes and figures to ``out_dir``."""
    from clipprobe.report import figures

    from clipprobe._io import ensure_dir

    out_dir = ensure_dir(out_dir)
    paths: list[Path] = []
    for stem, df in (("compare_categories", result.categories), ("compare_correlations", result.correlations),
                     ("compare_words", result.words), ("compare_disagreements", result.disagreements)):
        csv = out_dir / f"{stem}.csv"
        with atomic_path(csv) as tmp:
            tmp.write_text(csv_text(df), encoding="utf-8")
        write_parquet(out_dir / f"{stem}.parquet", df)
        paths += [csv, out_dir / f"{stem}.parquet"]
    notes = out_dir / "compare_notes.txt"
    with atomic_path(notes) as tmp:
        tmp.write_text("".join(f"{n}\n" for n in result.notes) or "no notes\n", encoding="utf-8")
    paths.append(notes)
    formats = figures.FIGURE_FORMATS if formats is None else tuple(formats)
    attributes = sorted(set(result.words["attribute"]), key=_attr_rank)
    for attr in attributes:
        ax = compare_entropy_plot(result, attr)
        paths += figures.save_figure(ax.figure, out_dir / f"compare_entropy_{figures.slug(attr)}", formats=formats)
        a, b = result.names[0], result.names[1]
        ax = compare_skew_scatter(result, attr, a, b)
        paths += figures.save_figure(ax.figure, out_dir / f"compare_skew_{figures.slug(attr)}", formats=formats)
    return paths
