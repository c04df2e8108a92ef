"""`clipprobe models`: every pretrained open_clip model (and any user spec) with its metadata and cache state."""

from __future__ import annotations

import click


@click.command("models")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
              help="table: the main facts; json and csv: every column (the csv reads back as a --models table "
                   "of `clipprobe sweep`).")
@click.option("--filter", "text", default=None,
              help="Keep rows whose spec, training data or dataset contain TEXT (case-insensitive).")
@click.option("--cached", "only_cached", is_flag=True, help="Only models whose weights are in the local cache.")
@click.option("--model", "extra_specs", multiple=True, metavar="SPEC",
              help="Add a model open_clip does not list (ARCH:/path/weights.safetensors, hf-hub:ORG/NAME, ...); "
                   "repeatable.")
@click.option("--table", "user_table", type=click.Path(dir_okay=False), default=None,
              help="A model CSV (column spec or model; optional dataset_family, dataset_size, samples_seen, "
                   "params_*, performance columns) whose values fill or override the shipped ones.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Hugging Face cache to look in (default: the huggingface_hub default, $HF_HOME).")
@click.option("--download", "download", default=None, metavar="SPEC",
              help="Fetch the weights of a model (e.g. ViT-B-32:openai) into the cache, for later offline use.")
def models(fmt: str, text: str | None, only_cached: bool, extra_specs: tuple[str, ...], user_table: str | None,
           cache_dir: str | None, download: str | None) -> None:
    """Pretrained models (ARCH:TAG for --model) with architecture family, parameters, pretraining data,
    samples seen, published downstream performance and its source, and whether the weights are cached.

    The first row, demo, is the tiny CLIP shipped with clipprobe (trained on the offline demo world; it
    runs offline, and knows only that world's synthetic faces). Other --model forms: hf-hub:ORG/NAME,
    local-dir:PATH, ARCH:/path/to/weights.safetensors. Sources of every value:
    clipprobe/models/zoo_data/PROVENANCE.md.
    """
    from clipprobe.models.catalog import HF_TEXT_EXTRA, list_known_models, shipped_models
    from clipprobe.models.zoo import format_zoo, known_specs, read_user_table, zoo_records

    if download:
        from clipprobe.models import load_model

        encoder = load_model(download, device="cpu", cache_dir=cache_dir)
        click.echo(f"{download}: weights at {encoder.info().get('weights_source')}")
        return
    state = {r["spec"]: r for r in list_known_models(cache_dir=cache_dir)}
    for r in shipped_models():     # `demo`: shipped with clipprobe, runs offline
        state[r["spec"]] = {**r, "cached_path": r["weights"], "needs": [], "missing": []}
    user = read_user_table(user_table) if user_table else None
    specs = [r["spec"] for r in shipped_models()] + list(known_specs())
    for spec in list(extra_specs) + list(user.specs if user else ()):
        if spec not in specs:
            specs.append(spec)
    # plain rows, not a DataFrame: `clipprobe models` answers without importing pandas
    columns, rows = zoo_records(specs, user=user)
    columns = columns[:6] + ["training_data"] + columns[6:] + ["cached", "cached_path", "needs", "extra", "missing"]
    for row in rows:
        r = state.get(row["spec"])
        needs = list(r["needs"]) if r else []
        row.update(training_data=r["training_data"] if r else "", cached=r["cached"] if r else None,
                   cached_path=r["cached_path"] if r else None, needs=needs, extra=HF_TEXT_EXTRA if needs else "",
                   missing=list(r["missing"]) if r else [])
    if text:
        needle = text.lower()
        rows = [r for r in rows if needle in f"{r['spec']}\n{r['training_data']}\n{r['dataset'] or ''}".lower()]
    if only_cached:
        rows = [r for r in rows if r["cached"]]
    if fmt == "json":
        click.echo(format_zoo(rows, "json", columns))
        return
    if fmt == "csv":
        joined = [{**r, "needs": "; ".join(r["needs"]), "missing": "; ".join(r["missing"])} for r in rows]
        click.echo(format_zoo(joined, "csv", columns), nl=False)
        return
    if not rows:
        click.echo("no models match")
        return
    shown = [{**r, "needs": ", ".join(p + (" (missing)" if p in r["missing"] else "") for p in r["needs"])}
             for r in rows]
    click.echo(format_zoo(shown, "table", columns))
    click.echo(f"{sum(bool(r['cached']) for r in rows)} of {len(rows)} cached")
    needing = [r for r in rows if r["needs"]]
    if needing:
        packages = sorted({p for r in needing for p in r["needs"]})
        absent = sorted({p for r in needing for p in r["missing"]})
        where = f"not installed here: pip install 'clipprobe[{HF_TEXT_EXTRA}]'" if absent else "installed"
        click.echo(f"{len(needing)} models need {', '.join(packages)} for their text tokenizer ({where})")
