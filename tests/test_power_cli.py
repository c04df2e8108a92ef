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
