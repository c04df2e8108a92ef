"""``clipprobe power``: what size of over-representation can the probe flag on a dataset?"""

from __future__ import annotations

import click

from clipprobe.cli._options import FORMAT_CSV_HELP

from clipprobe.errors import UsageError

MSG_PAIRS = "{option}: expected NAME=VALUE pairs separated by commas, got {text!r}"
MSG_RATIOS = "--ratios: expected numbers separated by commas, got {text!r}"


def _parse_pairs(text: str, option: str, cast) -> dict:
    out = {}
    for part in text.split(","):
        name, sep, value = part.rpartition("=")
        if not sep or not name.strip():
            raise UsageError(MSG_PAIRS.format(option=option, text=text))
        try:
            out[name.strip()] = cast(value.strip())
        except ValueError:
            raise UsageError(MSG_PAIRS.format(option=option, text=text)) from None
    return out


def _parse_ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(MSG_RATIOS.format(text=text)) from None


NOT_REACHED = "not reached (> {max_ratio:g})"


def _mdr_table(mdr, *, max_ratio: float) -> str:
    """The minimum-detectable-ratio table as text: a ratio the grid never reaches reads as
    :data:`NOT_REACHED` (with the largest ratio tested), not NaN. JSON output keeps null."""
    table = mdr.round(3).astype({"min_ratio": object})
    missing = table["min_ratio"].isna()
    table.loc[missing, "min_ratio"] = NOT_REACHED.format(max_ratio=max_ratio)
    table.loc[~missing, "min_ratio"] = [f"{v:g}" for v in table.loc[~missing, "min_ratio"]]
    return table.to_string(index=False)


@click.command("power")
@click.option("--attribute", type=click.Choice(["race", "gender", "age"]), default="race", show_default=True,
              help="FairFace validation groups to use when no sizes or shares are given.")
@click.option("--dataset", default=None,
              help="Face dataset whose label file gives the group sizes (fairface:ROOT, csv:PATH, ...).")
@click.option("--split", default="validation", show_default=True, help="Split of --dataset: validation or train.")
@click.option("--dataset-size", type=click.IntRange(min=1), default=None,
              help="Number of images (default: FairFace validation, 10954).")
@click.option("--base-shares", default=None, metavar="NAME=SHARE,...",
              help="Group shares of the dataset, e.g. 'A=0.7,B=0.3'.")
@click.option("--group-sizes", default=None, metavar="NAME=COUNT,...",
              help="Group sizes of the dataset (sets the dataset size).")
@click.option("-k", "--k", "ks", type=click.IntRange(min=1), multiple=True,
              help="Top-k size; repeat for several (default 10, 50, 100).")
@click.option("--ratios", default="1,1.25,1.5,1.75,2,2.5,3", show_default=True,
              help="Planted share / base share ratios, comma-separated.")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="BH level of the report.")
@click.option("--n-words", type=click.IntRange(min=1), default=400, show_default=True,
              help="Words in the report (the BH family is words x groups).")
@click.option("--family-size", type=click.IntRange(min=1), default=None,
              help="Override the number of rows in the BH family.")
@click.option("--n-sim", type=click.IntRange(min=1), default=500, show_default=True,
              help="Simulated reports per point.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the simulations.")
@click.option("--target-power", type=float, default=0.8, show_default=True,
              help="Power for the minimum detectable ratio table.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help=FORMAT_CSV_HELP)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the curve as CSV here.")
@click.option("--figure", type=click.Path(dir_okay=False), default=None,
              help="Write the power curve figure (PNG or PDF, from the suffix).")
def power(attribute, dataset, split, figure, dataset_size, base_shares, group_sizes, ks, ratios, alpha, n_words, family_size, n_sim,
          seed, target_power, fmt, out):
    """Simulate the probability of flagging a planted over-representation (power curve)."""
    import json

    from clipprobe.analysis import power as lib

    if sum(x is not None for x in (base_shares, group_sizes, dataset)) > 1:
        raise UsageError("give one of --dataset, --base-shares or --group-sizes")
    kwargs = dict(n_total=dataset_size, k=tuple(ks) or lib.DEFAULT_KS, ratios=_parse_ratios(ratios),
                  alpha=alpha, n_words=n_words, family_size=family_size, n_sim=n_sim, seed=seed)
    if dataset:
        from clipprobe.pipeline.probe import dataset_group_sizes

        kwargs["group_sizes"] = dataset_group_sizes(dataset, attribute, split=split)
        kwargs["n_total"] = None
    elif base_shares:
        kwargs["base_shares"] = _parse_pairs(base_shares, "--base-shares", float)
    elif group_sizes:
        kwargs["group_sizes"] = _parse_pairs(group_sizes, "--group-sizes", int)
    curve = lib.power_curve(**kwargs, attribute=attribute)
    mdr = lib.minimum_detectable_ratio(curve, target_power=target_power)
    if figure:
        from clipprobe.report.figures import save_figure_file

        save_figure_file(lib.power_plot(curve).figure, figure)
        click.echo(f"wrote {figure}", err=True)
    if out:
        from clipprobe._io import write_text

        write_text(out, curve.to_csv(index=False))
    if fmt == "csv":
        click.echo(curve.to_csv(index=False), nl=False)
    elif fmt == "json":
        # DataFrame.to_json writes NaN as null, which json.dumps alone would not.
        click.echo(json.dumps({"curve": json.loads(curve.to_json(orient="records")),
                               "minimum_detectable_ratio": json.loads(mdr.to_json(orient="records"))}, indent=2))
    else:
        table = curve.pivot_table(index=["group", "k"], columns="ratio", values="power", sort=False)
        click.echo(f"Power (probability of flagging) by planted ratio; BH alpha={alpha}, {n_sim} simulations")
        click.echo(table.round(3).to_string())
        click.echo(f"\nSmallest ratio with power >= {target_power}:")
        click.echo(_mdr_table(mdr, max_ratio=float(curve["ratio"].max())))
