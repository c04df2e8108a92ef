"""Image-derived attributes on the command line: ``clipprobe balance attributes`` (the attribute pass alone)
and the options of ``balance measure|fit --attribute-source images|both``."""

from __future__ import annotations

from typing import Any, Callable

import click

from clipprobe.cli._options import (
    DATASET_FORMS,
    FORMAT_HELP,
    MODEL_CONFIG_HELP,
    MODEL_HELP,
    pop_probe_config,
    probe_options,
)

MSG_SOURCE_NEEDS = "--attribute-source {source} needs {option}"
MSG_SOURCE_ONLY = "{option} is for --attribute-source images or both"
MSG_CAPTIONS_NEEDED = "--captions is required (or --attribute-source images|both with --embeddings)"
MSG_CAPTIONS_SOURCE = "--captions: with --attribute-source {source} the captions are the metadata of --embeddings"
MSG_THRESHOLD = "--threshold must be in [0, 1), got {value}"
MSG_LABEL_THRESHOLD = "--label-threshold must be in [0, 1), got {value}"
MSG_SOFT_THRESHOLD = "--threshold makes the hard labels; --attribute-mode soft balances the probabilities instead"

_EMBEDDINGS_HELP = ("A clip-retrieval embedding folder (LAION's layout: img_emb/img_emb_N.npy beside "
                    "metadata/metadata_N.parquet), computed with --model.")
_PROMPTS_HELP = ("Attribute prompt set: a name (shipped: gender) or a YAML file (groups and their prompts, optional "
                 "'none' classes such as 'no person').")
_THRESHOLD_HELP = "A group whose probability is lower gives the image no group (0: the best class wins)."
_LABEL_PROMPTS_HELP = ("Concept labels from the images: a YAML file of labels, each with 'prompts' and 'negations' "
                       "(yes/no zero-shot); writes image_labels (the labels above --label-threshold) and "
                       "pl_LABEL per shard.")
_LABEL_THRESHOLD_HELP = "With --label-prompts: a label is on when its probability is above this."
_FIT_SCALE_HELP = ("Fit the softmax scale of the soft probabilities on --dataset (temperature scaling: the scale "
                   "that gives the true groups the highest likelihood) instead of taking the model's logit scale; "
                   "the calibration is then measured on held-out halves. Hard labels do not change.")


def _label_threshold(value: float) -> float:
    from clipprobe.errors import UsageError

    if not 0 <= value < 1:
        raise UsageError(MSG_LABEL_THRESHOLD.format(value=value))
    return value


def _threshold(value: float) -> float:
    from clipprobe.errors import UsageError

    if not 0 <= value < 1:
        raise UsageError(MSG_THRESHOLD.format(value=value))
    return value


def image_source_options(func: Callable) -> Callable:
    """The options of ``--attribute-source`` for ``balance measure|fit``."""
    options = [
        click.option("--attribute-source", type=click.Choice(["captions", "images", "both"]), default="captions",
                     show_default=True,
                     help="Where each example's group comes from: the caption's words (lexicon), the image "
                          "(zero-shot, from --embeddings), or both (the caption's group where it names one)."),
        click.option("--embeddings", default=None, type=click.Path(file_okay=False), help=_EMBEDDINGS_HELP),
        click.option("--attribute-prompts", default="gender", show_default=True, help=_PROMPTS_HELP),
        click.option("--threshold", type=float, default=0.0, show_default=True, help=_THRESHOLD_HELP),
        click.option("--label-prompts", default=None, type=click.Path(dir_okay=False),
                     help=_LABEL_PROMPTS_HELP + " The fit reads that column as --label-column unless "
                                                "--label-source captions."),
        click.option("--label-threshold", type=float, default=0.5, show_default=True, help=_LABEL_THRESHOLD_HELP),
        click.option("--attribute-mode", type=click.Choice(["hard", "soft"]), default="hard", show_default=True,
                     help="hard: balance each image's label (its best group); soft: balance its probabilities "
                          "E[s_k] (quantised to 1/--soft-bins), which the paper's moments allow; with a "
                          "calibrated classifier they balance the true groups in expectation."),
        click.option("--soft-bins", type=click.IntRange(min=1, max=1024), default=16, show_default=True,
                     help="Steps of the soft probabilities (--attribute-mode soft): each is rounded to a multiple "
                          "of 1/N."),
        click.option("--fit-scale", is_flag=True, default=False, help=_FIT_SCALE_HELP),
        click.option("--model", default=None,
                     help=MODEL_HELP + " Its text tower classifies the images (needed with --attribute-source "
                                       "images or both)."),
        click.option("--model-config", type=click.Path(dir_okay=False), default=None, help=MODEL_CONFIG_HELP),
        click.option("--dataset", default=None,
                     help="Labelled face dataset the image classifier's accuracy is measured on (stored with the "
                          "run). " + DATASET_FORMS + " Without it the accuracy is not measured."),
        click.option("--split", default="validation", show_default=True, help="Split of --dataset."),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="Embedding cache for --dataset (default $CLIPPROBE_CACHE or ~/.cache/clipprobe)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def pop_image_source(kwargs: dict[str, Any]):
    """Remove the ``--attribute-source`` options from ``kwargs``: an AttributeSource, or None for captions.

    Checks ``--captions`` against the source (the caller's ``--captions`` is optional for that reason)."""
    from clipprobe.errors import UsageError
    from clipprobe.pipeline.attributes import AttributeConfig, AttributeSource
    from clipprobe.pipeline.probe import ProbeConfig

    source = kwargs.pop("attribute_source")
    values = {k: kwargs.pop(k) for k in ("embeddings", "attribute_prompts", "threshold", "model", "model_config",
                                         "dataset", "split", "cache_dir", "device", "attribute_mode", "soft_bins",
                                         "label_prompts", "label_threshold", "fit_scale")}
    if source == "captions":
        for option, key, default in (("--embeddings", "embeddings", None), ("--model", "model", None),
                                     ("--dataset", "dataset", None), ("--threshold", "threshold", 0.0),
                                     ("--attribute-prompts", "attribute_prompts", "gender"),
                                     ("--attribute-mode", "attribute_mode", "hard"), ("--soft-bins", "soft_bins", 16),
                                     ("--label-prompts", "label_prompts", None),
                                     ("--label-threshold", "label_threshold", 0.5), ("--fit-scale", "fit_scale", False)):
            if values[key] != default:
                raise UsageError(MSG_SOURCE_ONLY.format(option=option))
        if not kwargs.get("captions_"):
            raise UsageError(MSG_CAPTIONS_NEEDED)
        return None
    if kwargs.get("captions_"):
        raise UsageError(MSG_CAPTIONS_SOURCE.format(source=source))
    for option, key in (("--embeddings", "embeddings"), ("--model", "model")):
        if not values[key]:
            raise UsageError(MSG_SOURCE_NEEDS.format(source=source, option=option))
    if values["attribute_mode"] == "soft" and values["threshold"] != 0.0:
        raise UsageError(MSG_SOFT_THRESHOLD)
    probe = ProbeConfig(model=values["model"], model_config=values["model_config"], dataset=values["dataset"],
                        split=values["split"], cache_dir=values["cache_dir"], device=values["device"])
    attributes = AttributeConfig(embeddings=values["embeddings"], out="", probe=probe,
                                 prompts=values["attribute_prompts"], threshold=_threshold(values["threshold"]),
                                 label_prompts=values["label_prompts"],
                                 label_threshold=_label_threshold(values["label_threshold"]),
                                 fit_scale=values["fit_scale"])
    return AttributeSource(source=source, attributes=attributes, mode=values["attribute_mode"],
                           bins=values["soft_bins"])


@click.command("attributes")
@click.option("--embeddings", required=True, type=click.Path(file_okay=False), help=_EMBEDDINGS_HELP)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (resumable).")
@click.option("--attribute-prompts", default="gender", show_default=True, help=_PROMPTS_HELP)
@click.option("--threshold", type=float, default=0.0, show_default=True, help=_THRESHOLD_HELP)
@click.option("--label-prompts", default=None, type=click.Path(dir_okay=False), help=_LABEL_PROMPTS_HELP)
@click.option("--label-threshold", type=float, default=0.5, show_default=True, help=_LABEL_THRESHOLD_HELP)
@click.option("--scale", type=float, default=None,
              help="Softmax scale (inverse temperature) of the soft probabilities (default: the model's logit "
                   "scale).")
@click.option("--fit-scale", is_flag=True, default=False, help=_FIT_SCALE_HELP)
@click.option("--lexicon", default=None,
              help="Also write both_ATTRIBUTE: the group the caption names (by this lexicon) where it names one.")
@click.option("--text-column", default=None, help="Metadata column of the captions (default caption, TEXT or text).")
@click.option("--key-column", default=None, help="Metadata column copied as the key (default url or URL).")
@click.option("--nan-rows", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="Embedding rows that are NaN, infinite or zero: stop naming the shard, or count them and "
                   "give them no group.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Shards classified at a time (local) or local[N] (spark). Default: all cores.")
@click.option("--engine", type=click.Choice(["local", "spark"]), default="local", show_default=True,
              help="spark: one task per shard; executors need the folders at the same paths.")
@click.option("--spark-master", default=None, help="Spark master URL (default local[--threads]).")
@click.option("--spark-conf", multiple=True, metavar="KEY=VALUE",
              help="A setting of the Spark session (repeatable), e.g. spark.archives=env.tar.gz#environment.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help=FORMAT_HELP)
@probe_options
def attributes_cmd(embeddings, out, attribute_prompts, threshold, label_prompts, label_threshold, scale, fit_scale,
                   lexicon, text_column, key_column, nan_rows,
                   threads, engine, spark_master, spark_conf, fmt, **kwargs):
    """Each image's group from its embedding (zero-shot, the model's text tower), per shard beside its caption;
    the classifier's accuracy per group on --dataset. Feed OUT/shards to `balance measure|fit
    --attribute-column image_ATTRIBUTE`."""
    import json

    from clipprobe.errors import printable
    from clipprobe.pipeline.attributes import AttributeConfig, run_attributes

    if scale is not None and not scale > 0:
        from clipprobe.errors import UsageError

        raise UsageError(f"--scale must be positive, got {scale}")
    config = AttributeConfig(embeddings=embeddings, out=out, probe=pop_probe_config(kwargs), prompts=attribute_prompts,
                             threshold=_threshold(threshold), scale=scale, fit_scale=fit_scale, lexicon=lexicon,
                             text_column=text_column,
                             key_column=key_column, nan_rows=nan_rows, workers=threads, engine=engine,
                             spark_master=spark_master, spark_conf=tuple(spark_conf), label_prompts=label_prompts,
                             label_threshold=_label_threshold(label_threshold))
    result = run_attributes(config)
    run = result.run
    if fmt == "json":
        click.echo(json.dumps({k: v for k, v in run.items() if k not in ("versions", "shards")}, indent=2, default=str))
        return
    summary = run["summary"]
    click.echo(f"{summary['rows']:,} images in {len(result.shards)} shard(s); attribute {run['attribute']!r}: "
               + ", ".join(f"{printable(g)} {summary['counts'][g]:,}" for g in result.groups)
               + f", none {summary['counts']['none']:,}, unsure {summary['counts']['unsure']:,}, "
                 f"invalid {summary['counts']['invalid']:,}")
    if run.get("label_prompts"):
        click.echo(f"labels above {run['label_threshold']} (column {run['label_column']}): "
                   + ", ".join(f"{printable(n)} {c:,}" for n, c in summary["labels"].items()))
    cal = run["calibration"]
    if cal is None:
        click.echo("classifier accuracy: not measured (give --dataset)")
    else:
        click.echo(f"classifier accuracy on {printable(run['dataset']['spec'])}: {cal['accuracy']:.3f} "
                   f"(gap between groups {cal['accuracy_gap']:.3f})")
        fit = run.get("scale_fit")
        if fit:
            click.echo(f"softmax scale fitted on it: {fit['scale']:.4g} (the model's {fit['scale_before']:.4g}); "
                       f"calibration error up to {fit['before']['calibration_error_max']:.3f} at the model's scale, "
                       f"{cal['soft']['calibration_error_max']:.3f} held out at a fitted one")
        for row in cal["by_group"]:
            soft = (f"; mean probability {row['soft_share']:.3f} against a true share of {row['true_share']:.3f}, "
                    f"calibration error {row['calibration_error']:.3f} (by chance up to "
                    f"{row['calibration_error_by_chance']:.3f}; calibrated: p {row['calibration_p']:.3g})"
                    if "soft_share" in row else "")
            click.echo(f"  {printable(row['group'])}: accuracy {row['accuracy']:.3f} [{row['accuracy_ci_low']:.3f}, "
                       f"{row['accuracy_ci_high']:.3f}], precision {row['precision']:.3f}, none {row['none_rate']:.3f}"
                       + soft)
    click.echo(f"wrote {printable(result.out)}/: run.json, shards/ (column {result.column})")


def echo_source(run: dict, fmt: str) -> None:
    """The image classifier's accuracy, after a balance run whose groups came from the images."""
    from clipprobe.errors import printable

    source = run.get("attribute_source")
    if not source or fmt == "json":
        return
    cal = source.get("calibration")
    mode = source.get("mode", "hard")
    head = (f"groups from the {source['source']} (column {source['column']}, {printable(source['folder'])}"
            + (f"; soft: E[s_k] in steps of 1/{source['bins']}" if mode == "soft" else "") + ")")
    if cal is None:
        click.echo(f"{head}; the image classifier's accuracy was not measured (give --dataset)")
        return
    click.echo(f"{head}; image classifier accuracy {cal['accuracy']:.3f} (gap between groups "
               f"{cal['accuracy_gap']:.3f}): " + ", ".join(f"{printable(r['group'])} {r['accuracy']:.3f}"
                                                          for r in cal["by_group"]))
    fit = source.get("scale_fit")
    if fit:
        click.echo(f"softmax scale fitted on the labelled images: {fit['scale']:.4g} (the model's "
                   f"{fit['scale_before']:.4g})")
    if mode == "soft" and cal.get("soft"):
        click.echo("soft probabilities on the labelled images: mean p_k against the true share "
                   + ", ".join(f"{printable(r['group'])} {r['soft_share']:.3f} / {r['true_share']:.3f}"
                               for r in cal["by_group"])
                   + f"; calibration error up to {cal['soft']['calibration_error_max']:.3f}")
