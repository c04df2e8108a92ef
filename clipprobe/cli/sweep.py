"""`clipprobe sweep`: the report and association tests of many models; `sweep merge`; `sweep analyze`."""

from __future__ import annotations

import click

from clipprobe.cli._options import (
    OASIS_ROOT_HELP,
    STIMULI_ROOT_HELP,
    bootstrap_option,
    check_choice,
    check_count,
    check_fraction,
    compute_options,
    dataset_options,
    deprecated_alias,
    permutations_option,
    pop_compute,
    pop_dataset,
    pop_offline,
    resolve_alias,
    split_attributes,
    split_values,
)

# --permutations and --bootstrap were the reports' counts here, and `eat`'s own counts in `clipprobe eat`: a sweep
# runs both, so each count is named after its probe; the old spellings still work (hidden, with a warning).
OLD_MEANINGS = {"--permutations": "the reports' MaxSkew/MinSkew null; --eat-permutations is the association tests'",
                "--bootstrap": "the reports' intervals; --eat-bootstrap is the association tests'"}
MSG_FAILURES = ("{n} of the {total} model(s) of shard {shard} failed or are unknown (listed above); the others are "
                "finished. --allow-failures exits 0 in this case")

EPILOG = """\b
Examples:
  clipprobe sweep --models all --dataset fairface:/data/fairface --probes report,eat --out sweeps/zoo
  clipprobe sweep --models zoo.csv --shard 3/16 --dataset fairface:/data/fairface --out sweeps/zoo
  clipprobe sweep merge sweeps/zoo
  clipprobe sweep analyze sweeps/zoo
"""


@click.group("sweep", invoke_without_command=True, epilog=EPILOG)
@click.option("--models", "models", multiple=True,
              help="Models: 'all' (every open_clip pretrained pair), a model CSV (a spec or model column, optional "
                   "model_config, preprocess and metadata columns: `clipprobe models --format csv` writes one), or "
                   "specs; repeat or comma-separate.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Sweep folder (shared by every shard; a rerun resumes).")
@click.option("--probes", default="report,eat", show_default=True, help="What to run per model: report, eat.")
@click.option("--shard", default=None, metavar="I/N",
              help="Run only the I-th of N shares of the models (1 <= I <= N), e.g. a slurm array task.")
@click.option("--models-per-pass", type=click.IntRange(min=1), default=4, show_default=True,
              help="Models loaded together; their images are decoded once for all of them.")
@click.option("--no-retry-failed", is_flag=True, help="Skip models that failed in an earlier run of this folder.")
@click.option("--allow-failures", is_flag=True,
              help="Exit 0 when some models failed or are unknown (default: exit 1 after the summary).")
@dataset_options
@click.option("--taxonomy", default=None, help="Report: taxonomy name or YAML/JSON file (default: sobit).")
@click.option("--templates", default="default", show_default=True, help="Report: default, ensemble, or a file.")
@click.option("--k", type=int, default=100, show_default=True, help="Report: faces retrieved per word.")
@click.option("--attributes", default=None, help="Report: comma-separated attributes (default: all present).")
@bootstrap_option(1000, name="--report-bootstrap", unit="the face dataset",
                  what="each group's share and skew in the reports", more=" (0: none; `report --bootstrap`)")
@permutations_option(1000, name="--report-permutations", test="MaxSkew and MinSkew in the reports",
                     more=" (`report --permutations`)")
@deprecated_alias("--bootstrap", "old_bootstrap")
@deprecated_alias("--permutations", "old_permutations", minimum=1)
@click.option("--controls", default="controls", show_default=True, help="Report: control words, or 'none'.")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="Report: false discovery rate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random step.")
@click.option("--model-figures/--no-model-figures", default=False, show_default=True,
              help="Write each model's figures and HTML page (and the association tests' forest plot).")
@click.option("--suite", default=None, help="Association tests: a shipped suite (default ghate2025).")
@click.option("--tests", "tests_file", type=click.Path(dir_okay=False), default=None,
              help="Association tests: your own YAML test file instead of a suite.")
@permutations_option(1_000_000, name="--eat-permutations", test="each association test's effect size", minimum=2,
                     more=" (`eat --permutations`)")
@permutations_option(10_000, name="--sc-permutations", test="each stimulus's SC-WEAT effect size", minimum=2)
@bootstrap_option(2000, name="--eat-bootstrap", unit="the stimuli", what="each association test's d",
                  more="; at least 100 (`eat --bootstrap`)")
@click.option("--paper-signs", is_flag=True,
              help="Association tests: the Gender tests' d and its interval with Ghate et al.'s sign (x -1; "
                   "p-values as the tests are defined).")
@click.option("--strict", is_flag=True,
              help="Association tests: stop before any model runs when a test's stimuli are missing (e.g. no "
                   "--oasis-root) instead of skipping that test.")
@click.option("--stimuli-root", type=click.Path(file_okay=False), default=None, help=STIMULI_ROOT_HELP)
@click.option("--oasis-root", type=click.Path(file_okay=False), default=None, help=OASIS_ROOT_HELP)
@compute_options(cache_help="Embedding cache (default $CLIPPROBE_CACHE or ~/.cache/clipprobe); share it between "
                            "shards on one machine.")
@click.pass_context
def sweep(ctx, models, out, probes, shard, models_per_pass, no_retry_failed, allow_failures, taxonomy, templates, k,
          attributes, controls, alpha, seed, model_figures, suite, tests_file, paper_signs, strict, stimuli_root,
          oasis_root, **kwargs) -> None:
    """Run the report and the association tests over many models (resumable, shardable)."""
    if ctx.invoked_subcommand is not None:
        return
    from clipprobe.pipeline.eat import EatConfig
    from clipprobe.pipeline.probe import ProbeConfig
    from clipprobe.pipeline.report import ReportConfig
    from clipprobe.pipeline.sweep import PROBES, SweepConfig, parse_shard, run_sweep

    if out is None:
        raise click.UsageError("missing option '--out' (the sweep folder)")
    model_list = split_values(models)
    if not model_list:
        raise click.UsageError("missing option '--models' (all, a model CSV, or specs)")
    probe_list = split_values((probes,))
    for p in probe_list:
        check_choice("--probes", p, PROBES)
    parse_shard(shard)
    check_fraction("--alpha", alpha)
    check_count("--seed", seed)
    check_count("--k", k, 1)
    if suite is not None and tests_file is not None:
        raise click.UsageError("give --suite or --tests, not both")
    resolve_alias(ctx, kwargs, old="--permutations", dest="old_permutations", new="--report-permutations",
                  param="report_permutations", meaning=OLD_MEANINGS["--permutations"])
    resolve_alias(ctx, kwargs, old="--bootstrap", dest="old_bootstrap", new="--report-bootstrap",
                  param="report_bootstrap", meaning=OLD_MEANINGS["--bootstrap"])
    offline = pop_offline(kwargs)
    probe = ProbeConfig(**pop_dataset(kwargs), **pop_compute(kwargs), offline=offline)
    report = ReportConfig(probe=probe, taxonomy=taxonomy, templates=templates, k=k,
                          attributes=split_attributes(attributes) if attributes else None,
                          bootstrap=kwargs.pop("report_bootstrap"), seed=seed, alpha=alpha,
                          permutations=kwargs.pop("report_permutations"),
                          controls=None if controls.strip().lower() == "none" else controls,
                          figures=model_figures, html=model_figures)
    eat = EatConfig(out="", suite=suite, tests_file=tests_file, permutations=kwargs.pop("eat_permutations"),
                    sc_permutations=kwargs.pop("sc_permutations"), bootstrap=kwargs.pop("eat_bootstrap"), seed=seed,
                    paper_signs=paper_signs, strict=strict, stimuli_root=stimuli_root, oasis_root=oasis_root,
                    figures=model_figures)
    config = SweepConfig(out=out, models=model_list, probes=probe_list, report=report, eat=eat, shard=shard,
                         models_per_pass=models_per_pass, retry_failed=not no_retry_failed)
    result = run_sweep(config)
    click.echo(f"sweep {result.shard[0]}/{result.shard[1]}: {len(result.done)} model(s) finished, "
               f"{len(result.skipped)} finished before, {len(result.failed)} failed, {len(result.unknown)} unknown")
    for spec, reason in list(result.failed.items()) + list(result.unknown.items()):
        click.echo(f"  {spec}: {reason}")
    click.echo(f"  {result.out}  (next: clipprobe sweep merge {result.out})")
    n_bad = len(result.failed) + len(result.unknown)
    n_all = len(result.record.get("models") or ()) + len(result.unknown)
    if n_bad and not allow_failures:
        from clipprobe.errors import ClipprobeError

        raise ClipprobeError(MSG_FAILURES.format(n=n_bad, total=n_all, shard=f"{result.shard[0]}/{result.shard[1]}"))


@sweep.command("merge")
@click.argument("folders", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where to write sweep.parquet and models.parquet (default: the first folder).")
def merge_command(folders, out) -> None:
    """Merge sweep folders (one, or one per machine) into sweep.parquet; other settings are refused."""
    from clipprobe.pipeline.sweep import merge_sweep

    result = merge_sweep(folders, out=out)
    rec = result.record
    click.echo(f"merged {rec['n_models']} model(s): {rec['n_ok']} finished, {rec['n_failed']} failed; "
               f"{rec['n_rows']} rows")
    click.echo(f"  {result.out / 'sweep.parquet'}")


@sweep.command("analyze")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--performance", default="avg38", show_default=True,
              help="Downstream performance to correlate with: avg38 (open_clip's 38-dataset average; 121 of the 196 "
                   "pairs have it), imagenet1k, vtab+ or vtab (12 pairs and Cherti et al.'s checkpoints), a column "
                   "of --model-table or --performance-csv, or 'none'.")
@click.option("--performance-csv", type=click.Path(dir_okay=False), default=None,
              help="CSV with a spec (or model) column and performance columns, for models without published ones.")
@click.option("--model-table", "model_tables", multiple=True, type=click.Path(dir_okay=False),
              help="Model CSV (as for `sweep --models`) whose values (dataset, dataset_size, params_total_m, "
                   "families, performance) replace the sweep's; repeat for several. Rerun with a fixed table to "
                   "update the analysis.")
@click.option("--measure", "measures", multiple=True,
              help="probe:measure to model (repeat; default eat:effect_size and report:max_skew_excess).")
@click.option("--spec", "spec", type=click.Choice(["paper", "per-test"]), default="paper", show_default=True,
              help="paper: Ghate et al.'s model (sizes per SD of the log, groups = test family x order, only "
                   "architectures pooled); per-test: every test its own group, sizes per tenfold, both factors "
                   "pooled.")
@click.option("--size-units", type=click.Choice(["sd", "log10"]), default=None,
              help="Size terms per standard deviation of the log (the paper) or per tenfold (log10); default: "
                   "the spec's.")
@click.option("--raw-signs", is_flag=True,
              help="Effect sizes as the tests are defined (default: the paper's sign, Gender tests multiplied by -1).")
@click.option("--min-family-rows", type=click.IntRange(min=1), default=30, show_default=True,
              help="Pooled families with fewer rows become 'Other' (Ghate et al.: 30).")
@click.option("--min-family-models", type=click.IntRange(min=1), default=2, show_default=True,
              help="Pooled families with fewer checkpoints become 'Other'.")
@click.option("--reference-dataset-family", default=None,
              help="Reference level (default: the first by name, as the paper's cc12m).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Default: FOLDER/analysis (replaced whole).")
@click.option("--figures/--no-figures", default=True, show_default=True,
              help="Draw the coefficient and scatter plots (and show them in analysis.html).")
def analyze_command(folder, performance, performance_csv, model_tables, measures, spec, size_units, raw_signs,
                    min_family_rows, min_family_models, reference_dataset_family, out, figures) -> None:
    """Upstream factors (mixed model) and correlation with downstream performance."""
    import dataclasses

    from clipprobe.analysis.factors import SPECS
    from clipprobe.pipeline.sweep import DEFAULT_MEASURES, analyze_sweep

    settings = dataclasses.replace(SPECS[spec], min_family_rows=min_family_rows, min_family_models=min_family_models,
                                   reference_dataset_family=reference_dataset_family,
                                   **({"size_units": size_units} if size_units else {}))
    result = analyze_sweep(folder, performance=None if performance.strip().lower() == "none" else performance,
                           performance_csv=performance_csv, measures=split_values(measures) or DEFAULT_MEASURES,
                           spec=spec, settings=settings, signs="raw" if raw_signs else "paper",
                           model_tables=model_tables,
                           out=out, figures=figures)
    signs = result.record.get("signs") or {}
    if signs.get("flipped"):
        click.echo(f"signs: the paper's (effect sizes of {len(signs['flipped'])} Gender test(s) multiplied by -1; "
                   "--raw-signs for the tests as defined)")
    same = result.record.get("same_checkpoint") or {}
    if same:
        click.echo(f"{len(same)} model(s) load the same checkpoint as another and count once")
    for key, fit in result.fits.items():
        units = "per SD of the log" if fit.settings.size_units == "sd" else "per tenfold"
        click.echo(f"{key}: {fit.n_models} models, {fit.n_rows} rows, {fit.n_groups} groups (sizes {units})"
                   + ("" if fit.converged else " (did not converge)"))
        for r in fit.coefficients.itertuples(index=False):
            if r.term == "Intercept":
                continue
            click.echo(f"  {r.term:<42} {r.estimate:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]  p = {r.p_value:.3g}")
        for note in fit.notes:
            click.echo(f"  note: {note}")
    if result.correlations is not None:
        c = result.correlations
        sig = c[c["pearson_q"] <= 0.05]
        click.echo(f"correlations with {performance}: {len(sig)} of {len(c)} with q <= 0.05 (Pearson)")
        for r in c.itertuples(index=False):
            if r.pearson_r != r.pearson_r:
                click.echo(f"  {r.probe}:{r.measure} {r.test} ({r.order}): n = {r.n_models}, too few models")
                continue
            click.echo(f"  {r.probe}:{r.measure} {r.test} ({r.order}): n = {r.n_models}, r = {r.pearson_r:+.3f}, "
                       f"p = {r.pearson_p:.3g}, q = {r.pearson_q:.3g}")
    for path in result.files:
        if path.suffix in (".html", ".parquet", ".csv"):
            click.echo(f"  {path}")
