"""Subsets on arrays: assignments, local metrics against brute force, KL of recall@k, dispersion,
rank correlations across models, k-means."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from clipprobe.analysis import subsets as S
from clipprobe.analysis.probe import probe_scores
from clipprobe.errors import DataError, UsageError

RACES = ("White", "Black", "East Asian", "Indian")
GENDERS = ("Male", "Female")


def make_data(n=900, n_words=6, seed=0, plant=None):
    """Scores (words x images), labels, and a 3-way context of the images. Word 1 prefers Black everywhere;
    word 3 prefers a different race group in each context (East Asian, White, Indian). ``plant``: (word
    index, group index of race, context) -> the word prefers that race group only within that context."""
    rng = np.random.default_rng(seed)
    race = rng.choice(len(RACES), size=n, p=[0.4, 0.25, 0.2, 0.15])
    gender = rng.choice(2, size=n)
    context = rng.integers(0, 3, size=n)
    scores = rng.standard_normal((n_words, n))
    scores[1] += 1.2 * (race == 1)                           # a global association: word 1 -> Black everywhere
    if n_words > 3:                                          # word 3: another group in each context
        scores[3] += 2.0 * (((race == 2) & (context == 0)) | ((race == 0) & (context == 1))
                            | ((race == 3) & (context == 2)))
    if plant is not None:
        w, g, c = plant
        scores[w] += 2.0 * ((race == g) & (context == c))
    labels = pd.DataFrame({"race": np.asarray(RACES, dtype=object)[race],
                           "gender": np.asarray(GENDERS, dtype=object)[gender]})
    return scores, labels, context


# ----------------------------------------------------------------------------------------------
# parsing and assignments


@pytest.mark.parametrize("text, expected", [
    ("kmeans:20", ("kmeans", 20)), ("attribute:age", ("attribute", "age")), ("column:service_test",
                                                                                ("column", "service_test")),
    ("file:a b.csv", ("file", "a b.csv")),
])
def test_parse_by(text, expected):
    assert S.parse_by(text) == expected


@pytest.mark.parametrize("text, message", [
    ("kmeans:0", "kmeans: the number of clusters must be a whole number of at least 1, got '0'"),
    ("kmeans:", "kmeans: the number of clusters must be a whole number of at least 1, got ''"),
    ("kmeans:-3", "kmeans: the number of clusters must be a whole number of at least 1, got '-3'"),
    ("kmean:3", "unknown subset kind 'kmean' (did you mean 'kmeans'?) in by 'kmean:3'; valid: kmeans, attribute, "
                "column, file"),
    ("attribute", "by must look like KIND:VALUE"),
])
def test_parse_by_errors_are_one_line(text, message):
    with pytest.raises(UsageError) as err:
        S.parse_by(text)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_parse_by_names_the_flag_it_is_given():
    with pytest.raises(UsageError, match="in --by 'x:1'"):
        S.parse_by("x:1", name="--by")


def test_kmeans_more_clusters_than_min_size_allows():
    S.check_kmeans(20, 2000, 100)
    with pytest.raises(UsageError) as err:
        S.check_kmeans(21, 2000, 100)
    assert str(err.value) == S.MSG_KMEANS_TOO_MANY.format(k=21, n=2000, min_size=100, most=20)
    with pytest.raises(UsageError, match="at most 0 cluster"):
        S.check_kmeans(1, 50, 100)
    with pytest.raises(UsageError, match="min_size must be a whole number"):
        S.check_kmeans(2, 50, 0)


def test_from_values_drops_small_and_missing():
    values = ["b"] * 50 + ["a"] * 30 + ["c"] * 5 + [None] * 3 + ["10"] * 20 + ["9"] * 20
    a = S.from_values(values, min_size=10)
    assert a.names == ("9", "10", "a", "b")          # natural order
    assert a.sizes.tolist() == [20, 20, 30, 50]
    assert (a.codes < 0).sum() == 8                  # 5 of "c" (too small) and 3 missing
    assert any("'c' (5 images) is below min_size=10: dropped" in n for n in a.notes)
    assert any("3 image(s) have no value" in n for n in a.notes)
    with pytest.raises(DataError, match="no subset has at least min_size=100"):
        S.from_values(values, min_size=100)


def _brute_merge(labels, centroids, min_size):
    """A direct re-implementation of the merging rule, for the oracle."""
    clusters = {i: {"size": int((labels == i).sum()), "c": centroids[i].astype(float), "members": {i}}
                for i in range(len(centroids)) if (labels == i).any()}
    while True:
        small = sorted((v["size"], i) for i, v in clusters.items() if v["size"] < min_size)
        if not small or len(clusters) == 1:
            break
        i = small[0][1]
        ci = clusters[i]["c"] / np.linalg.norm(clusters[i]["c"])
        j = max((float(ci @ (v["c"] / np.linalg.norm(v["c"]))), -j_) for j_, v in clusters.items() if j_ != i)[1]
        j = -j
        cj = clusters[j]
        cj["c"] = (clusters[i]["size"] * clusters[i]["c"] + cj["size"] * cj["c"]) / (clusters[i]["size"] + cj["size"])
        cj["size"] += clusters[i]["size"]
        cj["members"] |= clusters[i]["members"]
        del clusters[i]
    return {i: sorted(v["members"]) for i, v in clusters.items()}


def test_merge_small_clusters_into_the_nearest():
    rng = np.random.default_rng(3)
    centroids = rng.standard_normal((8, 5))
    sizes = [200, 15, 150, 40, 8, 300, 90, 120]
    labels = np.repeat(np.arange(8), sizes)
    a = S.from_clusters(labels, centroids, min_size=100)
    expected = _brute_merge(labels, centroids, 100)
    assert len(a.names) == len(expected)
    for i, members in expected.items():
        code = a.names.index(f"c{i:02d}")
        assert set(labels[a.codes == code]) == set(members)
    assert (a.sizes >= 100).all() and a.sizes.sum() == len(labels)
    assert sum("merged into" in n for n in a.notes) == 8 - len(expected)
    dropped = S.from_clusters(labels, centroids, min_size=100, small="drop")
    assert dropped.names == ("c00", "c02", "c05", "c07")
    assert (dropped.codes < 0).sum() == 15 + 40 + 8 + 90
    with pytest.raises(UsageError, match="small must be 'merge' or 'drop'"):
        S.from_clusters(labels, centroids, min_size=100, small="keep")


def test_table_round_trip_and_bad_tables():
    files = [f"val/{i}.jpg" for i in range(60)]
    a = S.from_values(np.repeat(["x", "y", "z"], 20), min_size=1)
    table = a.table(files)
    assert list(table.columns) == ["image", "subset"]
    b = S.from_table(table, files)
    assert b.names == a.names and (b.codes == a.codes).all()
    # the same table in another row order, with an image in no subset
    shuffled = table.sample(frac=1, random_state=0).reset_index(drop=True)
    shuffled.loc[shuffled["image"] == "val/0.jpg", "subset"] = None
    c = S.from_table(shuffled, files)
    assert c.codes[0] == -1 and (c.codes[1:] == a.codes[1:]).all()
    with pytest.raises(DataError) as err:
        S.from_table(table.iloc[1:], files, source="assignment file a.csv")
    assert str(err.value) == S.MSG_TABLE_MISSING.format(source="assignment file a.csv", n=1, first="val/0.jpg")
    extra = pd.concat([table, pd.DataFrame({"image": ["val/999.jpg"], "subset": ["x"]})])
    with pytest.raises(DataError, match=r"1 image\(s\) are not in the dataset \(first: 'val/999.jpg'\)"):
        S.from_table(extra, files)
    with pytest.raises(DataError, match="image 'val/3.jpg' is listed 2 times"):
        S.from_table(pd.concat([table, table.iloc[[3]]]), files)
    with pytest.raises(DataError, match="needs a column 'image'"):
        S.from_table(table.rename(columns={"subset": "cluster"}), files)


# ----------------------------------------------------------------------------------------------
# KL of recall@k


def _kl_recall_brute(counts, sizes):
    present = [i for i, s in enumerate(sizes) if s > 0]
    if len(present) < 2:
        return math.nan
    r = np.array([counts[i] / sizes[i] for i in present])
    p = r / r.sum()
    return float(stats.entropy(p, np.full(len(p), 1 / len(p))))


def test_kl_recall_against_scipy():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 60, size=5)
        if sizes.sum() < 10:
            continue
        k = int(rng.integers(1, sizes.sum()))
        counts = rng.multivariate_hypergeometric(sizes, k)
        assert S.kl_recall(counts, sizes) == pytest.approx(_kl_recall_brute(counts, sizes), abs=1e-12, nan_ok=True)
    # every group recalled at the same rate: 0; one group present: NaN
    assert S.kl_recall(np.array([10, 20, 5]), np.array([40, 80, 20])) == pytest.approx(0.0, abs=1e-15)
    assert math.isnan(S.kl_recall(np.array([3, 0]), np.array([10, 0])))


def test_kl_recall_p_value_is_uniform_under_the_null():
    """Top-k labels drawn at random (the null): the permutation p-value is at or below each level about as
    often as the level says (it is conservative by at most its discreteness)."""
    sizes = np.array([400, 250, 200, 150])
    k = 50
    null = S.kl_recall_null(sizes, k, n_perm=999, seed=1)
    rng = np.random.default_rng(2)
    observed = S.kl_recall(rng.multivariate_hypergeometric(sizes, k, size=4000), sizes)
    p = S._upper_p(null, observed)
    for level in (0.01, 0.05, 0.10):
        share = float(np.mean(p <= level))
        se = math.sqrt(level * (1 - level) / len(p))
        assert share <= level + 3 * se, (level, share)
        assert share >= level - 4 * se - 0.01, (level, share)


# ----------------------------------------------------------------------------------------------
# local metrics


@pytest.fixture(scope="module")
def local():
    scores, labels, context = make_data(plant=(2, 2, 0))
    assignment = S.from_values(np.array(["ctx0", "ctx1", "ctx2"])[context], min_size=50)
    controls = np.random.default_rng(9).standard_normal((12, scores.shape[1]))
    words = [f"w{i}" for i in range(scores.shape[0])]
    tables = S.subset_scores(scores, labels, assignment, words=words, k=40, permutations=200, controls=controls,
                             neutral=controls[0], categories={"w1": ["a", "b"]}, seed=4)
    return {"scores": scores, "labels": labels, "assignment": assignment, "tables": tables, "words": words,
            "controls": controls}


def test_global_rows_are_the_report(local):
    from clipprobe.analysis.probe import GROUP_COLUMNS, WORD_COLUMNS

    t = local["tables"]
    report = probe_scores(local["scores"], local["labels"], words=local["words"], k=40, permutations=200,
                          controls=local["controls"], neutral=local["controls"][0], categories={"w1": ["a", "b"]},
                          seed=4)
    g = t.groups[t.groups["scope"] == "global"].reset_index(drop=True)
    w = t.words[t.words["scope"] == "global"].reset_index(drop=True)
    pd.testing.assert_frame_equal(g[list(GROUP_COLUMNS)], report.groups)
    pd.testing.assert_frame_equal(w[list(WORD_COLUMNS)], report.words)


def test_local_rows_are_the_report_on_the_subset(local):
    """Each subset's rows are the report's statistics on that subset's columns and label rows, apart from
    the multiple-testing adjustment, which runs over every local row together."""
    from clipprobe.analysis.probe import GROUP_COLUMNS

    t, a = local["tables"], local["assignment"]
    adjusted = {"q_over", "flagged", "q_vs_controls", "flagged_vs_controls"}
    for i, name in enumerate(a.names):
        idx = a.members(i)
        alone = probe_scores(local["scores"][:, idx], local["labels"].iloc[idx].reset_index(drop=True),
                             words=local["words"], k=40, permutations=200, controls=local["controls"][:, idx],
                             neutral=local["controls"][0, idx], categories={"w1": ["a", "b"]}, seed=4)
        mine = t.groups[(t.groups["scope"] == "local") & (t.groups["subset"] == name)].reset_index(drop=True)
        cols = [c for c in GROUP_COLUMNS if c not in adjusted]
        pd.testing.assert_frame_equal(mine[cols], alone.groups[cols])
        assert (mine["n_images"] == len(idx)).all()


def test_local_counts_and_skews_by_brute_force(local):
    t, a, s, labels = local["tables"], local["assignment"], local["scores"], local["labels"]
    g = t.groups[t.groups["scope"] == "local"]
    for i, name in enumerate(a.names):
        idx = a.members(i)
        race = labels["race"].to_numpy()[idx]
        for w, word in enumerate(local["words"]):
            top = idx[np.argsort(-s[w, idx], kind="stable")[:40]]
            for group in RACES:
                row = g[(g["subset"] == name) & (g["word"] == word) & (g["attribute"] == "race") & (g["group"] == group)]
                count = int((labels["race"].to_numpy()[top] == group).sum())
                base = float(np.mean(race == group))
                assert int(row["count"].iloc[0]) == count
                assert row["skew"].iloc[0] == pytest.approx(math.log(max(count, 1) / 40 / base))
                p_over = stats.hypergeom.sf(count - 1, len(idx), int((race == group).sum()), 40)
                assert row["p_over"].iloc[0] == pytest.approx(p_over, rel=1e-9)
                glob = float(np.mean(labels["race"] == group))
                assert row["skew_vs_global"].iloc[0] == pytest.approx(math.log(max(count, 1) / 40 / glob))
                assert row["global_base_share"].iloc[0] == pytest.approx(glob)


def test_bh_over_every_local_row(local):
    from statsmodels.stats.multitest import multipletests

    g = local["tables"].groups
    lg = g[g["scope"] == "local"]
    q = multipletests(lg["p_over"].to_numpy(), method="fdr_bh")[1]
    np.testing.assert_allclose(lg["q_over"].to_numpy(), q, rtol=1e-12)
    assert (lg["flagged"] == (lg["q_over"] < 0.05)).all()
    qc = multipletests(lg["p_vs_controls"].to_numpy(), method="fdr_bh")[1]
    np.testing.assert_allclose(lg["q_vs_controls"].to_numpy(), qc, rtol=1e-12)
    w = local["tables"].words
    lw = w[w["scope"] == "local"]
    n = lg.groupby(["subset", "word", "attribute"])["flagged"].sum()
    for r in lw.itertuples():
        assert r.n_flagged == n.get((r.subset, r.word, r.attribute), 0)


def test_skew_vs_global_interval_is_the_share_interval_over_the_global_share(local):
    from statsmodels.stats.proportion import proportion_confint

    g = local["tables"].groups
    row = g[(g["scope"] == "local") & (g["count"] > 0)].iloc[7]
    lo, hi = proportion_confint(int(row["count"]), int(row["k"]), alpha=0.05, method="wilson")
    assert row["skew_vs_global_ci_low"] == pytest.approx(math.log(lo / row["global_base_share"]))
    assert row["skew_vs_global_ci_high"] == pytest.approx(math.log(hi / row["global_base_share"]))


def test_kl_recall_columns_by_brute_force(local):
    t, a, s, labels = local["tables"], local["assignment"], local["scores"], local["labels"]
    w = t.words
    for i, name in enumerate(a.names):
        idx = a.members(i)
        race = labels["race"].to_numpy()[idx]
        sizes = [int((race == g).sum()) for g in RACES]
        for word_i, word in enumerate(local["words"]):
            top = np.argsort(-s[word_i, idx], kind="stable")[:40]
            counts = [int((race[top] == g).sum()) for g in RACES]
            row = w[(w["subset"] == name) & (w["word"] == word) & (w["attribute"] == "race")]
            assert row["kl_recall"].iloc[0] == pytest.approx(_kl_recall_brute(counts, sizes), abs=1e-12)
            assert row["kl_recall_excess"].iloc[0] == pytest.approx(row["kl_recall"].iloc[0]
                                                                     - row["kl_recall_null"].iloc[0])
            assert 0 < row["p_kl_recall"].iloc[0] <= 1


def test_the_local_plant_is_found_in_its_context_and_the_global_one_everywhere(local):
    g = local["tables"].groups
    flagged = g[g["flagged"] & (g["attribute"] == "race") & (g["scope"] == "local")]
    planted = flagged[(flagged["word"] == "w2") & (flagged["group"] == "East Asian")]
    assert set(planted["subset"]) == {"ctx0"}
    glob = flagged[(flagged["word"] == "w1") & (flagged["group"] == "Black")]
    assert set(glob["subset"]) == {"ctx0", "ctx1", "ctx2"}


def test_a_word_whose_top_group_changes_with_the_context(local):
    """Word 3 prefers East Asian faces in ctx0, White in ctx1, Indian in ctx2: each subset flags its own
    group as the top group, the dispersion says the flagged top group changes, and the global probe sees
    a blend whose largest skew is smaller than any subset's."""
    t = local["tables"]
    w = t.words[(t.words["word"] == "w3") & (t.words["attribute"] == "race")].set_index("subset")
    assert w.loc["ctx0", "top_group"] == "East Asian" and w.loc["ctx1", "top_group"] == "White"
    assert w.loc["ctx2", "top_group"] == "Indian"
    assert w.loc["all", "max_skew"] < min(w.loc[c, "max_skew"] for c in ("ctx0", "ctx1", "ctx2"))
    d = t.dispersion[(t.dispersion["word"] == "w3") & (t.dispersion["attribute"] == "race")].iloc[0]
    assert d["n_top_groups"] == 3 and d["flagged_top_group_changes"] and d["n_subsets_flagged"] == 3
    assert set(d["flagged_top_groups"].split("; ")) == {"East Asian", "White", "Indian"}
    w1 = t.dispersion[(t.dispersion["word"] == "w1") & (t.dispersion["attribute"] == "race")].iloc[0]
    assert w1["flagged_top_groups"] == "Black" and not w1["flagged_top_group_changes"]


def test_k_modes_and_skipped_subsets():
    scores, labels, context = make_data(n=600)
    names = np.array(["a", "b", "tiny"])
    ctx = names[np.where(np.arange(600) < 30, 2, context % 2)]
    a = S.from_values(ctx, min_size=1)
    t = S.subset_scores(scores, labels, a, words=[f"w{i}" for i in range(6)], k=40, permutations=50)
    info = t.info.set_index("subset")
    assert not info.loc["tiny", "probed"] and "not more than k=40" in info.loc["tiny", "note"]
    assert any("subset 'tiny' skipped" in n for n in t.notes)
    assert "tiny" not in set(t.groups["subset"])
    f = S.subset_scores(scores, labels, a, words=[f"w{i}" for i in range(6)], k=40, k_mode="fraction",
                        permutations=50)
    for r in f.info.itertuples():
        assert r.k == max(1, round(40 * r.n_images / 600))
    with pytest.raises(UsageError, match="k_mode must be 'fixed' or 'fraction'"):
        S.subset_scores(scores, labels, a, words=[f"w{i}" for i in range(6)], k=40, k_mode="prop")


def test_an_attribute_with_one_group_in_every_subset_is_not_probed():
    scores, labels, _ = make_data(n=600)
    a = S.from_values(labels["gender"], min_size=1, kind="attribute")
    t = S.subset_scores(scores, labels, a, words=[f"w{i}" for i in range(6)], k=30, permutations=50,
                        include_global=False)
    assert set(t.groups["attribute"]) == {"race"}
    assert all("single group of gender" in n for n in t.info["note"])


def test_dispersion_by_brute_force(local):
    t = local["tables"]
    d = t.dispersion
    w = t.words
    lw = w[w["scope"] == "local"]
    for (word, attribute), part in lw.groupby(["word", "attribute"]):
        for measure in ("kl_recall", "max_skew_excess"):
            row = d[(d["word"] == word) & (d["attribute"] == attribute) & (d["measure"] == measure)].iloc[0]
            v = part[measure].to_numpy()
            q25, q75 = np.percentile(v, [25, 75])
            assert row["range"] == pytest.approx(v.max() - v.min())
            assert row["iqr"] == pytest.approx(q75 - q25)
            assert row["subset_max"] == part["subset"].iloc[int(np.argmax(v))]
            glob = w[(w["scope"] == "global") & (w["word"] == word) & (w["attribute"] == attribute)][measure]
            assert row["global"] == pytest.approx(float(glob.iloc[0]))
        tops = part["top_group"].unique()
        row = d[(d["word"] == word) & (d["attribute"] == attribute)].iloc[0]
        assert row["n_top_groups"] == len(tops) and row["top_group_changes"] == (len(tops) > 1)
    summary = S.dispersion_summary(d)
    per_word = d.drop_duplicates(["word", "attribute"])
    race = summary.set_index("attribute").loc["race"]
    assert race["share_top_group_changes"] == pytest.approx(per_word[per_word["attribute"] == "race"]
                                                            ["top_group_changes"].mean())


def test_bad_input_is_one_line():
    scores, labels, context = make_data(n=300)
    a = S.from_values(context.astype(str), min_size=1)
    with pytest.raises(DataError, match=r"assignment: 299 subset code\(s\) for 300 image\(s\)"):
        S.subset_scores(scores, labels, S.Assignment(a.codes[1:], a.names), words=[f"w{i}" for i in range(6)], k=10)
    with pytest.raises(DataError, match="'w1' appears more than once"):
        S.subset_scores(scores, labels, a, words=["w1"] * 6, k=10)
    with pytest.raises(UsageError, match="attribute 'age' is not a column of labels"):
        S.subset_scores(scores, labels, a, words=[f"w{i}" for i in range(6)], k=10, attributes=["age"])


# ----------------------------------------------------------------------------------------------
# across models


def test_spearman_against_scipy_with_ties():
    rng = np.random.default_rng(1)
    for n in (5, 9, 30):
        x = rng.integers(0, 4, size=n).astype(float)
        y = x + rng.standard_normal(n)
        assert S.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert math.isnan(S.spearman([1, 1, 1, 1], [1, 2, 3, 4]))


def test_fisher_interval_formula():
    lo, hi = S.fisher_interval(0.6, 20)
    z, se = math.atanh(0.6), math.sqrt((1 + 0.18) / 17)
    assert lo == pytest.approx(math.tanh(z - 1.959963984540054 * se))
    assert hi == pytest.approx(math.tanh(z + 1.959963984540054 * se))
    assert all(math.isnan(v) for v in S.fisher_interval(0.5, 3))
    lo1, hi1 = S.fisher_interval(1.0, 10)
    assert lo1 < 1 and hi1 <= 1


def _spearman_along(a, b, axis=-1):
    """Spearman's rho along an axis from scipy's ranks (a vectorised statistic for scipy's resampling)."""
    ra, rb = stats.rankdata(a, axis=axis), stats.rankdata(b, axis=axis)
    ra = ra - ra.mean(axis=axis, keepdims=True)
    rb = rb - rb.mean(axis=axis, keepdims=True)
    return (ra * rb).sum(axis=axis) / np.sqrt((ra * ra).sum(axis=axis) * (rb * rb).sum(axis=axis))


def test_bca_close_to_scipy():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(25)
    y = 0.6 * x + rng.standard_normal(25)
    assert _spearman_along(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    mine = S.bootstrap_interval(x, y, method="bca", n_boot=4000, seed=1)
    theirs = stats.bootstrap((x, y), _spearman_along, paired=True, vectorized=True,
                             n_resamples=4000, method="BCa", random_state=2).confidence_interval
    assert mine[0] == pytest.approx(theirs.low, abs=0.06) and mine[1] == pytest.approx(theirs.high, abs=0.06)
    pct = S.bootstrap_interval(x, y, method="percentile", n_boot=4000, seed=1)
    boot = S.bootstrap_rhos(x, y, n_boot=4000, seed=1)
    assert pct == pytest.approx(tuple(np.percentile(boot[np.isfinite(boot)], [2.5, 97.5])))


def test_permutation_p_exact_and_sampled():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal(7), rng.standard_normal(7)

    def stat(a, axis=-1):
        return _spearman_along(a, np.broadcast_to(y, a.shape), axis=axis)

    exact = stats.permutation_test((x,), stat, permutation_type="pairings", vectorized=True, n_resamples=np.inf,
                                   alternative="two-sided").pvalue
    assert S.spearman_p(x, y) == pytest.approx(exact, abs=1e-9)
    x, y = rng.standard_normal(15), rng.standard_normal(15)
    sampled = S.spearman_p(x, y, permutations=20000, seed=1)
    ref = stats.permutation_test((x,), stat, permutation_type="pairings", vectorized=True, n_resamples=20000,
                                 alternative="two-sided", random_state=4).pvalue
    assert sampled == pytest.approx(ref, abs=0.02)


def test_permutation_p_is_valid_under_the_null():
    rng = np.random.default_rng(11)
    p = np.array([S.spearman_p(rng.standard_normal(12), rng.standard_normal(12), permutations=199, seed=i)
                  for i in range(600)])
    for level in (0.05, 0.10):
        se = math.sqrt(level * (1 - level) / len(p))
        assert abs(np.mean(p <= level) - level) < 3.5 * se


def test_correlate_measures_and_its_errors():
    rng = np.random.default_rng(2)
    n = 12
    a = rng.standard_normal(n)
    wide = pd.DataFrame({"model": [f"m{i}" for i in range(n)], "a": a, "b": a + 0.3 * rng.standard_normal(n),
                         "c": rng.standard_normal(n)})
    out = S.correlate_measures(wide, permutations=999)
    assert list(out.columns) == list(S.CORRELATION_COLUMNS)
    ab = out[(out["measure_a"] == "a") & (out["measure_b"] == "b")].iloc[0]
    assert ab["rho"] == pytest.approx(stats.spearmanr(wide["a"], wide["b"]).statistic)
    assert ab["ci_low"] < ab["rho"] < ab["ci_high"] and ab["p_value"] < 0.01
    few = S.correlate_measures(wide.head(3), pairs=[("a", "b")])
    assert few["n_models"].iloc[0] == 3 and math.isnan(few["rho"].iloc[0])
    some = S.correlate_measures(wide.head(6), pairs=[("a", "b")]).iloc[0]    # rho and p, no interval yet
    assert math.isfinite(some["rho"]) and math.isfinite(some["p_value"]) and math.isnan(some["ci_low"])
    with pytest.raises(DataError, match="measures: model 'm0' is listed 2 times"):
        S.correlate_measures(pd.concat([wide, wide.head(1)]))
    with pytest.raises(DataError, match="needs a column 'model'"):
        S.correlate_measures(wide.drop(columns="model"))
    with pytest.raises(DataError, match="measure 'd' is not a column"):
        S.correlate_measures(wide, pairs=[("a", "d")])
    with pytest.raises(UsageError, match="interval must be one of"):
        S.correlate_measures(wide, interval="bootstrap")


def test_ranking_transfer_finds_which_subsets_keep_the_ranking():
    rng = np.random.default_rng(4)
    models = [f"m{i}" for i in range(10)]
    glob = rng.standard_normal(10)
    rows = []
    for m, g in zip(models, glob):
        rows.append((m, "all", "race", "kl_recall", g))
        rows.append((m, "keeps", "race", "kl_recall", g + 0.05 * rng.standard_normal()))
        rows.append((m, "loses", "race", "kl_recall", rng.standard_normal()))
    per_model = pd.DataFrame(rows, columns=["model", "subset", "attribute", "statistic", "value"])
    t = S.ranking_transfer(per_model, permutations=999).set_index("subset")
    assert t.loc["keeps", "rho"] > 0.9 and t.loc["keeps", "ci_low"] > 0.5
    assert abs(t.loc["loses", "rho"]) < 0.8
    assert t.loc["keeps", "q_value"] < 0.05


def test_model_measures_are_means_over_words(local):
    m = S.model_measures(local["tables"].words)
    w = local["tables"].words
    row = m[(m["subset"] == "ctx1") & (m["attribute"] == "race") & (m["statistic"] == "kl_recall")]
    part = w[(w["subset"] == "ctx1") & (w["attribute"] == "race")]
    assert row["value"].iloc[0] == pytest.approx(part["kl_recall"].mean())
    sf = m[(m["subset"] == "all") & (m["attribute"] == "race") & (m["statistic"] == "share_flagged")]
    glob = w[(w["subset"] == "all") & (w["attribute"] == "race")]
    assert sf["value"].iloc[0] == pytest.approx((glob["n_flagged"] > 0).mean())


# ----------------------------------------------------------------------------------------------
# k-means


def test_kmeans_is_seeded_and_separates_planted_clusters():
    from clipprobe.embeddings.cluster import kmeans

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16)) * 3
    truth = rng.integers(0, 4, size=800)
    x = centres[truth] + rng.standard_normal((800, 16))
    one, two = kmeans(x, 4, seed=5), kmeans(x, 4, seed=5)
    assert (one.labels == two.labels).all() and np.array_equal(one.centroids, two.centroids)
    table = pd.crosstab(one.labels, truth).to_numpy()
    assert (table.max(axis=1) == table.sum(axis=1)).all()          # each cluster is one planted group
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(one.similarity, np.einsum("ij,ij->i", unit, one.centroids[one.labels]), rtol=1e-5)
    assert (np.argmax(unit @ one.centroids.T, axis=1) == one.labels).all()
    assert np.allclose(np.linalg.norm(one.centroids, axis=1), 1, atol=1e-5)


def test_kmeans_errors():
    from clipprobe.embeddings.cluster import kmeans

    x = np.random.default_rng(0).standard_normal((10, 4))
    with pytest.raises(UsageError, match="n_clusters must be a whole number of at least 1, got 0"):
        kmeans(x, 0)
    with pytest.raises(UsageError, match="n_clusters=11 is more than the 10 image"):
        kmeans(x, 11)
    x[3] = 0
    with pytest.raises(DataError, match="row 3 is not finite or has length 0"):
        kmeans(x, 2)


def test_typical_members_are_closest_to_the_centroid():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    a = S.from_values(rng.integers(0, 3, 200).astype(str), min_size=1)
    typical = S.typical_members(x, a, n=5)
    cents = S.centroids_of(x, a)
    for i, name in enumerate(a.names):
        idx = a.members(i)
        sims = x[idx] @ cents[i]
        assert list(typical[name]) == list(idx[np.argsort(-sims)[:5]])


# ----------------------------------------------------------------------------------------------
# top-group changes against the control queries


def _brute_top_group(score_row, codes, names, k):
    """The group of largest skew (floored count / k over the subset's base share) in a stable top-k."""
    top = np.argsort(-score_row, kind="stable")[:k]
    best, best_skew = None, -math.inf
    for g, name in enumerate(names):
        base = np.mean(codes == g)
        if base == 0:
            continue
        skew = math.log(max(int(np.sum(codes[top] == g)), 1) / k / base)
        if skew > best_skew:
            best, best_skew = name, skew
    return best


def test_control_top_groups_and_change_rates_by_brute_force(local):
    from clipprobe.analysis.probe import encode_labels

    t, a, labels = local["tables"], local["assignment"], local["labels"]
    lab = encode_labels(labels)
    controls = local["controls"]
    assert list(t.controls.columns) == list(S.CONTROL_CHANGE_COLUMNS)
    assert len(t.controls) == len(controls) * 2
    for attribute in ("race", "gender"):
        names = lab.names[attribute]
        codes = lab.codes[attribute]
        for c in range(len(controls)):
            glob = _brute_top_group(controls[c], codes, names, 40)
            changed = [_brute_top_group(controls[c, a.members(i)], codes[a.members(i)], names, 40) != glob
                       for i in range(len(a.names))]
            row = t.controls[(t.controls["query"] == f"control {c + 1}") & (t.controls["attribute"] == attribute)]
            assert row["top_group_global"].iloc[0] == glob
            assert row["n_subsets"].iloc[0] == len(a.names)
            assert row["top_group_change_rate"].iloc[0] == pytest.approx(np.mean(changed))


def test_query_top_groups_are_the_reports_top_groups(local):
    """The control queries' top groups are computed as score_words computes a word's, with either tie rule."""
    from clipprobe.analysis.probe import encode_labels, score_words

    s, labels = local["scores"], local["labels"]
    lab = encode_labels(labels)
    for ties in ("index", "keep-all"):
        for reference in ("base", "uniform"):
            words = score_words(s, lab, words=local["words"], k=40, permutations=20, ties=ties,
                                reference=reference).words
            mine = S.query_top_groups(s, lab, lab.attributes, 40, queries=local["words"], ties=ties,
                                      reference=reference)
            merged = words.merge(mine, left_on=["word", "attribute"], right_on=["query", "attribute"])
            assert len(merged) == len(words)
            assert (merged["top_group_x"] == merged["top_group_y"]).all()


def test_word_change_rates_and_p_values_against_the_controls_by_brute_force(local):
    from statsmodels.stats.multitest import multipletests

    t = local["tables"]
    w = t.words
    glob = w[w["scope"] == "global"].set_index(["word", "attribute"])["top_group"]
    d = t.dispersion.drop_duplicates(["word", "attribute"]).set_index(["word", "attribute"])
    ps = []
    for (word, attribute), part in w[w["scope"] == "local"].groupby(["word", "attribute"], sort=False):
        rate = float(np.mean(part["top_group"].to_numpy() != glob[(word, attribute)]))
        assert d.loc[(word, attribute), "top_group_change_rate"] == pytest.approx(rate)
        c = t.controls[t.controls["attribute"] == attribute]["top_group_change_rate"].to_numpy()
        u = S.tie_uniforms([f"{word}\0{attribute}"], 4)[0]
        higher = sum(x > rate + 1e-12 for x in c)
        same = sum(abs(x - rate) <= 1e-12 for x in c)
        p = (1 + higher + math.floor(u * (same + 1))) / (len(c) + 1)
        assert d.loc[(word, attribute), "p_changes_vs_controls"] == pytest.approx(p)
        ps.append(((word, attribute), p))
    q = multipletests([p for _k, p in ps], method="fdr_bh")[1]
    for ((key, _p), qv) in zip(ps, q):
        assert d.loc[key, "q_changes_vs_controls"] == pytest.approx(qv)
        assert d.loc[key, "top_group_changes_vs_controls"] == (qv < 0.05)
    summary = S.dispersion_summary(t.dispersion, t.controls).set_index("attribute")
    race = t.controls[t.controls["attribute"] == "race"]["top_group_change_rate"]
    assert summary.loc["race", "n_controls"] == 12
    assert summary.loc["race", "control_change_rate_median"] == pytest.approx(race.median())
    assert summary.loc["race", "control_change_rate_max"] == pytest.approx(race.max())
    assert list(summary.columns[:5]) == ["n_words", "n_controls", "share_top_group_changes_vs_controls",
                                         "share_top_group_changes", "median_top_group_change_rate"]


def test_without_control_queries_nothing_is_compared():
    scores, labels, context = make_data(n=600)
    a = S.from_values(np.array(["a", "b", "c"])[context], min_size=1)
    t = S.subset_scores(scores, labels, a, words=[f"w{i}" for i in range(6)], k=30, permutations=20)
    assert t.controls is None
    assert t.dispersion["p_changes_vs_controls"].isna().all()
    assert not t.dispersion["top_group_changes_vs_controls"].any()
    summary = S.dispersion_summary(t.dispersion)
    assert (summary["n_controls"] == 0).all() and summary["share_top_group_changes_vs_controls"].isna().all()
    with pytest.raises(DataError, match=r"control_words: 2 name\(s\) for 3 row\(s\) of controls"):
        S.subset_scores(scores, labels, a, words=[f"w{i}" for i in range(6)], k=30, permutations=20,
                        controls=scores[:3], control_words=["x", "y"])


def test_the_change_p_value_is_exact_when_the_word_is_exchangeable_with_the_controls():
    """Rates on few subsets tie often; with ties split at random, P(p <= a) = floor(a (C + 1)) / (C + 1)
    for a rate drawn like the control queries' (the null), where counting ties against the word would
    fall far below it."""
    rng = np.random.default_rng(5)
    n_controls, reps = 49, 20000
    draws = rng.binomial(6, 0.7, size=(reps, n_controls + 1)) / 6
    u = rng.random(reps)
    p = np.array([S.changes_vs_controls(draws[i, :1], draws[i, 1:], uniforms=u[i:i + 1])[0] for i in range(reps)])
    ties_count = np.array([(1 + np.sum(draws[i, 1:] >= draws[i, 0])) / (n_controls + 1) for i in range(reps)])
    for level in (0.02, 0.05, 0.10, 0.30):
        exact = math.floor(level * (n_controls + 1)) / (n_controls + 1)
        share = float(np.mean(p <= level))
        se = math.sqrt(exact * (1 - exact) / reps)
        assert abs(share - exact) <= 4 * se, (level, share, exact)
    assert float(np.mean(ties_count <= 0.10)) < 0.05          # the conservative rule the random split replaces
    assert math.isnan(S.changes_vs_controls([np.nan], [0.5, 0.6])[0])
    assert math.isnan(S.changes_vs_controls([0.5], [])[0])
    assert S.changes_vs_controls([1.0], [0.2, 0.5, 0.9], uniforms=[0.99])[0] == pytest.approx(1 / 4)
    assert S.changes_vs_controls([0.5], [0.5, 0.5, 0.9], uniforms=[0.99])[0] == pytest.approx(4 / 4)
    assert S.changes_vs_controls([0.5], [0.5, 0.5, 0.9], uniforms=[0.0])[0] == pytest.approx(2 / 4)


def test_tie_draws_depend_on_the_seed_and_the_key_only():
    a = S.tie_uniforms(["nurse\0race", "CEO\0race"], 3)
    b = S.tie_uniforms(["CEO\0race"], 3)
    assert a[1] == b[0] and a[0] != a[1]
    assert S.tie_uniforms(["CEO\0race"], 4)[0] != b[0]
    assert ((a >= 0) & (a < 1)).all()


@pytest.mark.slow
def test_the_change_test_holds_its_level_in_null_worlds():
    """Worlds with nothing planted (random scores for words and control queries, random labels and
    subsets): a word is flagged as changing top group more often than the control queries at about the
    level (measured over 24 worlds of 120 words and 120 control queries, 8 subsets, race and gender)."""
    shares = {0.05: [], 0.10: []}
    flagged = []
    for rep in range(24):
        rng = np.random.default_rng(700 + rep)
        n, n_words, n_controls = 1000, 120, 120
        race = rng.choice(4, size=n, p=[0.4, 0.25, 0.2, 0.15])
        gender = rng.choice(2, size=n)
        labels = pd.DataFrame({"race": np.asarray(RACES, dtype=object)[race],
                               "gender": np.asarray(GENDERS, dtype=object)[gender]})
        a = S.from_values(rng.integers(0, 8, size=n).astype(str), min_size=1)
        t = S.subset_scores(rng.standard_normal((n_words, n)), labels, a, words=[f"w{i}" for i in range(n_words)],
                            k=30, permutations=20, controls=rng.standard_normal((n_controls, n)), seed=rep)
        d = t.dispersion.drop_duplicates(["word", "attribute"])
        p = d["p_changes_vs_controls"].to_numpy()
        for level in shares:
            shares[level].append(float(np.mean(p <= level)))
        flagged.append(float(d["top_group_changes_vs_controls"].mean()))
    for level, values in shares.items():
        exact = math.floor(level * 121) / 121
        v = np.asarray(values)
        se = v.std(ddof=1) / math.sqrt(len(v))
        assert abs(v.mean() - exact) <= 3 * se + 0.002, (level, v.mean(), se)
    assert np.mean(flagged) <= 0.05


def test_what_was_skipped_is_counted():
    """A subset dropped below min_size, one of k images (not probed), images with no value: each counted."""
    scores, labels, _ = make_data(n=600)
    values = np.array(["big"] * 400 + ["exact"] * 40 + ["small"] * 20 + [None] * 140, dtype=object)
    a = S.from_values(values, min_size=30)
    assert a.dropped == (("small", 20),)
    t = S.subset_scores(scores, labels, a, words=[f"w{i}" for i in range(6)], k=40, permutations=20)
    summary = S.skipped_summary(a, t.info)
    assert summary["n_images"] == 600 and summary["n_images_probed"] == 400
    assert summary["dropped"] == {"n_subsets": 1, "n_images": 20, "subsets": [{"subset": "small", "n_images": 20}]}
    assert summary["not_probed"]["n_subsets"] == 1 and summary["not_probed"]["n_images"] == 40
    assert "not more than k=40" in summary["not_probed"]["subsets"][0]["why"]
    assert summary["no_value"] == {"n_images": 140}


@pytest.mark.parametrize("ties", ["index", "keep-all"])
def test_tied_and_duplicated_images_rank_as_the_report_ranks_each_subset(ties):
    """Each subset's ranking is taken from the one global ranking: with many tied scores and the same image
    at several positions (ties broken by the lower index), every subset's rows are the report's on it."""
    from clipprobe.analysis.probe import GROUP_COLUMNS, WORD_COLUMNS

    scores, labels, context = make_data(n=400, n_words=5, seed=3)
    scores = np.round(scores, 1)                                  # many ties at the k-th score
    dup = np.arange(0, 400, 7)
    scores[:, dup + 3 - (dup + 3 >= 400) * 400] = scores[:, dup]  # the same image again, further on
    assignment = S.from_values(np.array(["a", "b", "c"])[context], min_size=50)
    controls = np.round(np.random.default_rng(2).standard_normal((6, 400)), 1)
    words = [f"w{i}" for i in range(5)]
    t = S.subset_scores(scores, labels, assignment, words=words, k=30, permutations=50, controls=controls,
                        ties=ties, seed=1)
    adjusted = {"q_over", "flagged", "q_vs_controls", "flagged_vs_controls", "n_flagged", "n_flagged_vs_controls"}
    for i, name in enumerate(assignment.names):
        idx = assignment.members(i)
        alone = probe_scores(scores[:, idx], labels.iloc[idx].reset_index(drop=True), words=words, k=30,
                             permutations=50, controls=controls[:, idx], ties=ties, seed=1)
        mine = t.groups[(t.groups["scope"] == "local") & (t.groups["subset"] == name)].reset_index(drop=True)
        cols = [c for c in GROUP_COLUMNS if c not in adjusted]
        pd.testing.assert_frame_equal(mine[cols], alone.groups[cols], check_exact=True)
        mw = t.words[(t.words["scope"] == "local") & (t.words["subset"] == name)].reset_index(drop=True)
        wcols = [c for c in WORD_COLUMNS if c not in adjusted]
        pd.testing.assert_frame_equal(mw[wcols], alone.words[wcols], check_exact=True)


def test_lookup_matches_a_left_merge_with_missing_keys():
    """The dispersion's lookups give what a pandas left merge gives: a match where the right frame has the
    key (missing values matching missing values), none elsewhere, the right row's position where matched."""
    rng = np.random.default_rng(3)
    right = pd.DataFrame({"s": rng.choice(["a", "b", "c"], 60), "w": rng.choice(["x", "y", "z", None], 60),
                          "g": rng.choice(["p", "q", "r", "t"], 60)}).drop_duplicates(ignore_index=True)
    right["value"] = np.arange(len(right), dtype=np.float64)
    left = pd.DataFrame({"s": rng.choice(["a", "b", "c", "d"], 200), "w": rng.choice(["x", "y", "z", None], 200),
                         "h": rng.choice(["p", "q", "r", "t", None], 200)})
    found, at = S._lookup(left, ["s", "w", "h"], right, ["s", "w", "g"])
    merged = left.merge(right.rename(columns={"g": "h"}), on=["s", "w", "h"], how="left")
    assert len(merged) == len(left)
    want = merged["value"].to_numpy()
    np.testing.assert_array_equal(found, ~np.isnan(want))
    np.testing.assert_array_equal(right["value"].to_numpy()[at][found], want[found])
    assert found.any() and not found.all()
    with pytest.raises(ValueError):
        S._lookup(left, ["s"], right, ["s"])            # right keys repeat
