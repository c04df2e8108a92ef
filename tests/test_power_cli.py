import json

import pandas as pd
from click.testing import CliRunner

from clipprobe.cli import cli
from clipprobe.analysis.power import power_curve, power_plot
from clipprobe.pipeline.probe import dataset_group_sizes
from facegen import write_fairface


def test_group_sizes_from_dataset_label_file(tmp_path):
    root = write_fairface(tmp_path / "ff", n=40)
    sizes = dataset_group_sizes(f"fairface:{root}", "race")
    expected = pd.read_csv(root / "fairface_label_val.csv")["race"].value_counts().to_dict()
    assert sizes == expected


def test_power_cli_with_dataset_and_figure(tmp_path):
    root = write_fairface(tmp_path / "ff", n=200)
    fig = tmp_path / "power.png"
    r = CliRunner().invoke(cli, ["power", "--dataset", f"fairface:{root}", "--attribute", "gender", "-k", "20",
                                 "--ratios", "1,2", "--n-sim", "50", "--n-words", "20", "--format", "json",
                                 "--figure", str(fig)])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output[r.output.index("{"):])
    groups = {row["group"] for row in data["curve"]}
    assert groups == {"Male", "Female"}
    assert fig.stat().st_size > 1000


def test_power_cli_rejects_two_sources(tmp_path):
    r = CliRunner().invoke(cli, ["power", "--dataset", "fairface:/x", "--base-shares", "A=0.5,B=0.5"])
    assert r.exit_code == 2 and "give one of" in r.output


def test_power_plot_lines_are_the_curve():
    curve = power_curve(n_total=1000, base_shares={"A": 0.7, "B": 0.3}, k=(50,), ratios=(1.0, 2.0), n_sim=40,
                        n_words=10)
    ax = power_plot(curve)
    assert len(ax.get_lines()) == 2 + 1  # one per group + the 0.8 guide
    a = curve[curve["group"] == "A"]
    assert list(ax.get_lines()[0].get_ydata()) == list(a["power"])


def test_power_table_says_not_reached_where_json_says_null():
    """Ratios of 1 and 1.05 never reach power 0.8 for k=10: the table names that (and the largest ratio tested)
    instead of printing NaN; JSON keeps null."""
    args = ["power", "--base-shares", "A=0.5,B=0.5", "-k", "10", "--ratios", "1,1.05", "--n-sim", "20",
            "--n-words", "10"]
    table = CliRunner().invoke(cli, args)
    assert table.exit_code == 0, table.output
    mdr = table.output[table.output.index("Smallest ratio"):]
    assert "NaN" not in table.output and "nan" not in mdr
    assert mdr.count("not reached (> 1.05)") == 2
    js = CliRunner().invoke(cli, [*args, "--format", "json"])
    assert js.exit_code == 0, js.output
    rows = json.loads(js.output[js.output.index("{"):])["minimum_detectable_ratio"]
    assert [row["min_ratio"] for row in rows] == [None, None]


def test_power_table_prints_reached_ratios_as_numbers():
    from clipprobe.cli.power import _mdr_table

    mdr = pd.DataFrame({"group": ["A", "B"], "base_share": [0.5, 0.5], "k": [50, 50],
                        "min_ratio": [1.41666, float("nan")]})
    lines = _mdr_table(mdr, max_ratio=3.0).splitlines()
    assert lines[1].split()[-1] == "1.417" and lines[2].endswith("not reached (> 3)")
