"""`clipprobe eat`: Embedding Association Tests (WEAT, SEAT, iEAT, cross-modal) of one model."""

from __future__ import annotations

import click

from clipprobe.cli._options import (
    OASIS_ROOT_HELP,
    STIMULI_ROOT_HELP,
    bootstrap_option,
    compute_options,
    model_options,
    permutations_option,
    pop_compute,
    pop_model,
    pop_offline,
    split_values,
)
from clipprobe.errors import printable

EPILOG = """\b
Examples:
  clipprobe eat --model ViT-B-32:openai --suite ghate2025 --oasis-root ~/OASIS --out eats/vitb32
  clipprobe eat --model ViT-B-32:openai --suite weat --out eats/weat
  clipprobe eat --tests my-tests.yaml --permutations 100000 --seed 0 --out eats/mine
  clipprobe eat list
"""


@click.group("eat", invoke_without_command=True, epilog=EPILOG)
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for eat.parquet, stimuli.parquet, run.json and the forest plot.")
@click.option("--suite", default=None, help="Shipped suite: ghate2025 (default), weat, seat, seat-nrc (see `eat list`).")
@click.option("--tests", "tests_file", type=click.Path(dir_okay=False), default=None,
              help="Your own YAML test file instead of a suite (paths in it are relative to the file).")
@click.option("--test", "test_names", multiple=True, help="Run only these tests (repeat or comma-separate).")
@click.option("--order", "orders", multiple=True,
              help="Run only these modality orders: text, image, image-text, text-image.")
@permutations_option(1_000_000, test="each test's effect size", minimum=2,
                     more="; exact enumeration when the partitions of X and Y are fewer")
@permutations_option(10_000, test="each stimulus's SC-WEAT effect size", name="--sc-permutations", minimum=2)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the random partitions and of the bootstrap (reruns are identical).")
@click.option("--ddof", type=click.IntRange(0, 1), default=1, show_default=True,
              help="Degrees of freedom of the effect size's standard deviation: 1 (Caliskan, sent-bias) or 0 (WEFE).")
@click.option("--two-sided", is_flag=True, help="Two-sided p-values (default: one-sided, X more associated with A).")
@click.option("--interval", type=click.Choice(["fisher-z", "none"]), default="fisher-z", show_default=True,
              help="Two-sided 95% interval of d from a bootstrap of the stimuli (words, images) of X, Y, A and B "
                   "(normal on the Fisher-z scale), or none.")
@bootstrap_option(2000, unit="the stimuli", what="d (--interval)", more="; at least 100")
@click.option("--fixed-attributes", is_flag=True,
              help="The interval resamples X and Y only: A and B are the whole population of interest.")
@click.option("--no-sc-weat", is_flag=True, help="Skip the per-stimulus SC-WEAT statistics.")
@click.option("--strict", is_flag=True,
              help="Fail (exit 1) when a test's stimuli are missing (e.g. no --oasis-root) instead of skipping it.")
@click.option("--paper-signs", is_flag=True,
              help="Report the Gender tests' effect sizes with the sign of Ghate et al. (d and its interval x -1: positive = female more pleasant; p-values as the tests are defined, as in the paper).")
@click.option("--stimuli-root", type=click.Path(file_okay=False), default=None,
              help=STIMULI_ROOT_HELP)
@click.option("--oasis-root", type=click.Path(file_okay=False), default=None,
              help=OASIS_ROOT_HELP)
@click.option("--figures/--no-figures", default=True, show_default=True, help="Write the forest plot (PNG, PDF).")
@model_options
@compute_options(cache_help="Embedding (and iEAT download) cache (default $CLIPPROBE_CACHE or ~/.cache/clipprobe).",
                 offline_help="Never touch the network (model and iEAT images must be local).")
@click.pass_context
def eat(ctx, out, suite, tests_file, test_names, orders, permutations, sc_permutations, seed, ddof, two_sided,
        interval, bootstrap, fixed_attributes, no_sc_weat, strict, paper_signs, stimuli_root, oasis_root, figures,
        **kwargs) -> None:
    """Embedding Association Tests: effect sizes, permutation p-values, intervals, per-stimulus SC-WEAT."""
    if ctx.invoked_subcommand is not None:
        return
    from clipprobe.pipeline.eat import EatConfig, run_eat

    if out is None:
        raise click.UsageError("missing option '--out' (the results folder)")
    offline = pop_offline(kwargs)
    config = EatConfig(
        out=out, **pop_model(kwargs), **pop_compute(kwargs), suite=suite, tests_file=tests_file,
        tests=split_values(test_names), orders=split_values(orders), permutations=permutations,
        sc_permutations=sc_permutations,
        seed=seed, ddof=ddof, two_sided=two_sided, interval=None if interval == "none" else interval,
        bootstrap=bootstrap, fixed_attributes=fixed_attributes, sc_weat=not no_sc_weat, strict=strict,
        paper_signs=paper_signs, stimuli_root=stimuli_root, oasis_root=oasis_root, offline=offline, figures=figures,
    )
    run = run_eat(config)
    _summary(run)


def _summary(run) -> None:
    """The run's tests, one line each, with what every number is (sidedness, units)."""
    from clipprobe.report.eat import order_label, p_words

    table = run.table
    done = table[table["available"]]
    n_skipped = int((table["status"] == "skipped").sum())
    click.echo(f"eat: {len(done)} of {len(table)} tests computed ({printable(run.record['suite']['name'])}), "
               f"{int((done['q_value'] <= 0.05).sum())} with q <= 0.05"
               + (f", {n_skipped} skipped (listed below)" if n_skipped else ""))
    if len(done):
        level = done["ci_level"].dropna()
        ci_text = f"two-sided {100 * float(level.iloc[0]):g}% interval of d" if len(level) else "no interval"
        click.echo(f"  d [{ci_text}], {p_words(table)} over stimuli (words, images), q: BH over these tests; "
                   "n = stimuli X/Y/A/B")
    name_width = max([28] + [len(printable(t)) for t in table["test"]])
    order_width = max([28] + [len(order_label(o)) for o in table["order"]])
    for r in table.itertuples(index=False):
        order = order_label(r.order)
        if r.available:
            ci = (f" [{r.effect_ci_low:.2f}, {r.effect_ci_high:.2f}]" if r.effect_ci_low == r.effect_ci_low
                  else " [interval withheld]" if r.ci_note else "")
            click.echo(f"  {printable(r.test):<{name_width}} {order:<{order_width}} n = {r.n_x}/{r.n_y}/{r.n_a}/{r.n_b}  "
                       f"d = {r.effect_size:6.2f}{ci}"
                       f"  p ({r.p_sides}) = {r.p_value:.3g}{' (exact)' if r.exact else ''}  q = {r.q_value:.3g}")
        else:
            click.echo(f"  {printable(r.test):<{name_width}} {order:<{order_width}} {r.status}: {printable(r.unavailable_reason)}")
    skipped = run.record["skipped_images"]["n"]
    if skipped:
        click.echo(f"  {skipped} unreadable image(s) skipped (listed in run.json)")
    for path in run.files:
        click.echo(f"  {printable(path)}")


@eat.command("list")
@click.option("--suite", default=None, help="Show only this suite (or a YAML test file).")
def list_command(suite) -> None:
    """List the shipped suites and their tests."""
    from clipprobe.resources.eat import ORDER_LABELS, get_suite, list_suites

    names = [suite] if suite else list_suites()
    for name in names:
        s = get_suite(name)
        click.echo(f"{printable(s.name)}: {len(s.tests)} tests")
        if s.description:
            click.echo(f"  {printable(s.description)}")
        for t in s.tests:
            sizes = ", ".join(f"{k}: {printable(v.label)}" for k, v in t.sets.items())
            extra = f"  [unavailable: {printable(t.unavailable)}]" if t.unavailable else ""
            click.echo(f"  {printable(t.name):<26} {ORDER_LABELS[t.order]:<16} {sizes}{extra}")
        click.echo("")
