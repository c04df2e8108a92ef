"""`clipprobe association`: a model's representation bias (images without people) and association bias
(occupation pairs on faces)."""

from __future__ import annotations

import click

from clipprobe.cli._options import pop_probe_config, probe_options


@click.command("association")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder (inside a report folder as OUT/association, the report page shows it).")
@click.option("--objects", default=None, metavar="WHERE",
              help="Images without people for RB: a folder (imagenet:DIR, folder:DIR or a path) or a dataset spec. "
                   "The images the model takes for a person are removed first (see --person-filter).")
@click.option("--max-objects", type=int, default=None, help="A seeded random subset of the objects.")
@click.option("--person-filter/--no-person-filter", default=True, show_default=True,
              help="Remove the --objects images whose zero-shot P(first --person-prompts) is above "
                   "--person-threshold (ImageNet, for one, has people in many images). Turn it off only for a set "
                   "you know to be person-free.")
@click.option("--person-prompts", default="a photo of a person|a photo of an object", show_default=True,
              help="The person prompt and the prompt it is weighed against, separated by '|'.")
@click.option("--person-threshold", type=float, default=0.5, show_default=True,
              help="An image is removed when P(person) at the model's logit scale is above this.")
@click.option("--rb-prompts", default="a photo of a man|a photo of a woman", show_default=True,
              help="The two label prompts compared on the objects, separated by '|'.")
@click.option("--ab/--no-ab", default=True, show_default=True, help="Measure AB on the face dataset (--dataset).")
@click.option("--attribute", default="gender", show_default=True, help="The attribute of the two groups.")
@click.option("--groups", default="Female,Male", show_default=True, help="The two groups, comma-separated.")
@click.option("--pairs", default=None, metavar="A/B,C/D",
              help="Occupation pairs (default: librarian/scientist, nurse/doctor, housekeeper/homeowner, "
                   "receptionist/executive, secretary/manager).")
@click.option("--templates", default="default", show_default=True, help="Prompt templates for the occupations.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --max-objects subset.")
@probe_options
def association(out, objects, max_objects, person_filter, person_prompts, person_threshold, rb_prompts, ab, attribute,
                groups, pairs, templates, seed, **kwargs):
    """Model RB on person-free images and AB on faces (Alabdulmohsin et al. 2024), with intervals."""
    from clipprobe.cli._options import check_count
    from clipprobe.errors import UsageError
    from clipprobe.pipeline.association import AssociationConfig, run_association

    prompts = tuple(p.strip() for p in rb_prompts.split("|"))
    if len(prompts) != 2 or not all(prompts):
        raise UsageError(f"--rb-prompts must be two prompts separated by '|', got {rb_prompts!r}")
    person = tuple(p.strip() for p in person_prompts.split("|"))
    if len(person) != 2 or not all(person) or person[0] == person[1]:
        raise UsageError(f"--person-prompts must be two different prompts separated by '|', got {person_prompts!r}")
    if not 0 < person_threshold < 1:
        raise UsageError(f"--person-threshold must be between 0 and 1 (exclusive), got {person_threshold}")
    group_pair = tuple(g.strip() for g in groups.split(","))
    pair_list = None
    if pairs:
        pair_list = tuple(tuple(x.strip() for x in p.split("/")) for p in pairs.split(",") if p.strip())
        if not pair_list or any(len(p) != 2 or not all(p) for p in pair_list):
            raise UsageError(f"--pairs must look like first/second,first/second, got {pairs!r}")
    if max_objects is not None:
        check_count("--max-objects", max_objects, 1)
    check_count("--seed", seed)
    config = AssociationConfig(out=out, probe=pop_probe_config(kwargs), objects=objects, max_objects=max_objects,
                               person_filter=person_filter, person_prompts=person, person_threshold=person_threshold,
                               rb_prompts=prompts, ab=ab, attribute=attribute, groups=group_pair, pairs=pair_list,
                               templates=templates, seed=seed)
    result = run_association(config)
    if result.rb is not None:
        from clipprobe.report.association import person_filter_text

        r = result.rb.iloc[0]
        click.echo(f"model RB: {r['rb']:+.3f} [{r['rb_ci_low']:+.3f}, {r['rb_ci_high']:+.3f}] "
                   f"({int(r['n'])} images without people)")
        click.echo(f"  {person_filter_text(result.run['objects']['person_filter'])}")
    if result.ab is not None:
        for _, r in result.ab.iterrows():
            click.echo(f"model AB {r['first']}/{r['second']}: difference {r['diff']:+.3f} "
                       f"[{r['diff_low']:+.3f}, {r['diff_high']:+.3f}]")
    for path in result.files:
        click.echo(f"  {path}")
