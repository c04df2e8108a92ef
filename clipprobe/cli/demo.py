"""`clipprobe demo`: the whole pipeline, offline, on a synthetic world with planted associations."""

from __future__ import annotations

import click

from clipprobe.cli._options import bootstrap_option


@click.command("demo")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for everything the demo writes.")
@click.option("--retrain", is_flag=True, help="Retrain the world's tiny CLIP from scratch (a few minutes on CPU).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the world (and of the retraining).")
@bootstrap_option(1000, unit="the world's faces", what="each group's share and skew in the demo's report",
                  more=" (0: none)")
def demo(out, retrain, seed, bootstrap) -> None:
    """Generate the planted world, probe it end to end, and check what was found against the truth."""
    from clipprobe.world.demo import TARGETS, run_demo

    result = run_demo(out, retrain=retrain, seed=seed, bootstrap=bootstrap)
    v = result.validation
    total = sum(t for t in result.timings.values())
    click.echo(f"clipprobe demo: planted-bias world, seed {seed}, {'retrained' if retrain else 'shipped'} model "
               f"({total:.0f} s)")
    click.echo(f"  recall of planted associations: {v['recall']:.2f} ({v['n_planted']} planted; target >= "
               f"{TARGETS['recall']})")
    click.echo(f"  false-positive rate on control words: {v['false_positive_rate']:.3f} ({v['n_control_rows']} rows; "
               f"target <= {TARGETS['false_positive_rate']})")
    if "vs_controls" in v:
        c = v["vs_controls"]
        click.echo(f"  against control queries: recall {c['recall']:.2f}, control-word rows flagged "
                   f"{c['false_positive_rate']:.3f} (unadjusted p <= alpha: "
                   f"{c['unadjusted_p_below_alpha_on_control_words']:.3f})")
    if "captions" in v:
        c = v["captions"]
        click.echo(f"  caption counts equal to the planted counts: {'yes' if c['exact'] else 'NO'} "
                   f"({c['cells_checked']} cells, {c['n_mismatches']} mismatches)")
    if "null" in v:
        n = v["null"]
        click.echo(f"  labels shuffled: {n['flagged']} of {n['n_rows']} rows flagged ({n['flagged_share']:.3f}; "
                   f"alpha {v['alpha']})" + (f"; p_max_skew <= alpha for {n['p_max_skew_below_alpha']:.3f} of "
                                             f"word-attribute pairs" if "p_max_skew_below_alpha" in n else ""))
    click.echo(f"  targets met: {'yes' if v['passed'] else 'NO'}")
    click.echo("files:")
    labels = {"retrieve": "retrieval table", "grid": "contact sheet", "captions": "caption counts",
              "report": "report folder", "html": "HTML report (open in a browser)", "truth": "planted truth",
              "validation": "validation", "index": "index page (open in a browser)"}
    for key, label in labels.items():
        if key in result.paths:
            click.echo(f"  {label:<32} {result.paths[key]}")
