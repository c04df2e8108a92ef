"""Power simulation: its BH shortcut against the plain statistics, its model, its shape, its CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from click.testing import CliRunner

from clipprobe.analysis import power as P
from clipprobe.faces import FAIRFACE_VALIDATION_SIZE
from clipprobe.cli.power import power as power_cmd
from clipprobe.errors import ClipprobeError, UsageError
from clipprobe.analysis.significance import bh_adjust, hypergeom_p


def test_flag_planted_equals_full_bh_adjust():
    rng = np.random.default_rng(0)
    sizes = np.array([300, 200, 100])
    n, k, alpha = int(sizes.sum()), 20, 0.1
    table = hypergeom_p(np.arange(k + 1)[None, :], sizes[:, None], n, k)[0]
    n_sim, n_ratio, g = 200, 3, 3
    m = 30
    null_p = P._null_pvalues(rng, sizes, k, m - g, n_sim, table)
    assert null_p.shape == (n_sim, m - g)
    planted = np.empty((n_sim, n_ratio, g))
    u = rng.random(n_sim)
    for ri, ratio in enumerate((1.0, 2.0, 3.0)):
        counts = P._planted_counts(rng, u, sizes, n, k, 2, ratio)
        assert np.all(counts.sum(axis=1) == k)
        planted[:, ri, :] = table[np.arange(g), counts]
    got = P._flag_planted(null_p, planted, 2, alpha, m)
    for s in range(n_sim):
        for ri in range(n_ratio):
            family = np.concatenate([null_p[s], planted[s, ri]])
            q = bh_adjust(family)
            assert got[s, ri] == (q[m - g + 2] < alpha)
    assert got[:, 2].mean() > got[:, 0].mean()  # the check above covered both outcomes
    assert got.any() and not got.all()


def test_planted_counts_have_the_planted_mean_and_are_null_at_ratio_one():
    rng = np.random.default_rng(1)
    sizes = np.array([5000, 3000, 2000])
    n, k, n_sim = 10000, 100, 20000
    u = rng.random(n_sim)
    for ratio in (1.0, 2.0):
        counts = P._planted_counts(rng, u, sizes, n, k, 2, ratio)
        expect = ratio * 0.2 * k
        se = counts[:, 2].std() / math.sqrt(n_sim)
        assert abs(counts[:, 2].mean() - expect) < 4 * se
    null = P._planted_counts(rng, u, sizes, n, k, 2, 1.0)[:, 0]
    # The others' counts at ratio 1 follow the dataset's own hypergeometric law.
    assert abs(null.mean() - scipy.stats.hypergeom.mean(n, 5000, k)) < 4 * null.std() / math.sqrt(n_sim)


def test_power_curve_shape_and_calibration():
    df = P.power_curve(group_sizes={"A": 6000, "B": 3000, "C": 1000}, k=(20, 100), ratios=(1.0, 1.5, 2.0, 3.0),
                       n_words=100, n_sim=400, seed=0)
    assert list(df.columns) == ["group", "base_share", "k", "ratio", "power"]
    assert len(df) == 3 * 2 * 4
    at_one = df[df.ratio == 1.0]["power"]
    assert at_one.max() <= 0.05  # a null planted row is flagged no more often than alpha
    piv = df.pivot_table(index=["group", "k"], columns="ratio", values="power")
    for _, row in piv.iterrows():
        assert np.all(np.diff(row.to_numpy()) >= -0.02)  # rises with the ratio (MC noise aside)
    c = df[(df.group == "C")].set_index(["k", "ratio"])["power"]
    assert c[(100, 3.0)] > 0.9 and c[(100, 3.0)] > c[(20, 3.0)] + 0.3  # larger k, more power
    assert c[(100, 2.0)] > c[(100, 1.5)] > c[(100, 1.0)]


def test_power_curve_is_deterministic():
    kwargs = dict(group_sizes={"A": 700, "B": 300}, k=30, ratios=(1.0, 2.0), n_words=50, n_sim=100)
    a = P.power_curve(seed=3, **kwargs)
    b = P.power_curve(seed=3, **kwargs)
    pd.testing.assert_frame_equal(a, b)


def test_minimum_detectable_ratio_interpolates():
    curve = pd.DataFrame({
        "group": ["A"] * 4 + ["B"] * 2,
        "base_share": [0.5] * 4 + [0.5] * 2,
        "k": [10] * 6,
        "ratio": [1.0, 1.5, 2.0, 2.5, 1.0, 2.0],
        "power": [0.0, 0.4, 0.9, 1.0, 0.1, 0.2],
    })
    out = P.minimum_detectable_ratio(curve, target_power=0.8).set_index("group")
    assert out.loc["A", "min_ratio"] == pytest.approx(1.5 + 0.5 * (0.4 / 0.5))
    assert np.isnan(out.loc["B", "min_ratio"])
    with pytest.raises(UsageError, match="target power"):
        P.minimum_detectable_ratio(curve, target_power=1.0)


def test_resolve_sizes_defaults_and_errors():
    sizes = P.resolve_sizes()
    assert sum(sizes.values()) == FAIRFACE_VALIDATION_SIZE == 10954
    assert sizes["White"] / 10954 == pytest.approx(0.19, abs=0.005)
    g = P.fairface_sizes("gender")
    assert sum(g.values()) == 10954 and g["Male"] / 10954 == pytest.approx(0.53, abs=0.005)
    assert sum(P.fairface_sizes("age").values()) == 10954
    scaled = P.resolve_sizes(n_total=1001, base_shares={"a": 0.5, "b": 0.25, "c": 0.25})
    assert sum(scaled.values()) == 1001
    with pytest.raises(UsageError, match=r"base shares must sum to 1 \(within 0.02\); they sum to 0.5000"):
        P.resolve_sizes(base_shares={"a": 0.25, "b": 0.25})
    with pytest.raises(UsageError, match="n_total=10 must equal the sum of group_sizes"):
        P.resolve_sizes(n_total=10, group_sizes={"a": 3, "b": 3})
    with pytest.raises(UsageError, match="ratios must be >= 1"):
        P.power_curve(ratios=(0.5, 1.0), n_sim=1)
    with pytest.raises(ClipprobeError, match="unknown FairFace attribute 'rase'"):
        P.fairface_sizes("rase")


def test_cli_power_table_json_and_bad_input(tmp_path):
    runner = CliRunner()
    out_csv = tmp_path / "curve.csv"
    res = runner.invoke(power_cmd, ["--group-sizes", "A=800,B=200", "-k", "50", "--ratios", "1,3",
                                    "--n-sim", "100", "--n-words", "50", "--out", str(out_csv)])
    assert res.exit_code == 0, res.output
    assert "Smallest ratio with power >= 0.8" in res.output
    written = pd.read_csv(out_csv)
    assert set(written["group"]) == {"A", "B"} and set(written["ratio"]) == {1.0, 3.0}
    res = runner.invoke(power_cmd, ["--attribute", "gender", "-k", "20", "--ratios", "1,1.5", "--n-sim", "50",
                                    "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert {row["group"] for row in data["curve"]} == {"Male", "Female"}
    assert len(data["minimum_detectable_ratio"]) == 2


def test_cli_power_reports_malformed_shares():
    from clipprobe.cli import cli

    res = CliRunner().invoke(cli, ["power", "--base-shares", "A0.5,B=0.5", "--n-sim", "1"])
    assert res.exit_code == 2
    assert "--base-shares: expected NAME=VALUE pairs separated by commas, got 'A0.5,B=0.5'" in res.output
