"""`clipprobe models`: the pretrained open_clip models, their training data, cache state."""

from __future__ import annotations

import json

import click


@click.command("models")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--filter", "text", default=None,
              help="Keep rows whose spec or training data contain TEXT (case-insensitive).")
@click.option("--cached", "only_cached", is_flag=True, help="Only models whose weights are in the local cache.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Hugging Face cache to look in (default: the huggingface_hub default, $HF_HOME).")
@click.option("--download", "download", default=None, metavar="SPEC",
              help="Fetch the weights of a model (e.g. ViT-B-32:openai) into the cache, for later offline use.")
def models(fmt: str, text: str | None, only_cached: bool, cache_dir: str | None, download: str | None) -> None:
    """Pretrained models (ARCH:TAG for --model), training data, and whether weights are cached.

    Other --model forms: hf-hub:ORG/NAME, local-dir:PATH, ARCH:/path/to/weights.safetensors.
    """
    from clipprobe.models import list_known_models, load_model
    from clipprobe.models.catalog import HF_TEXT_EXTRA

    if download:
        encoder = load_model(download, device="cpu", cache_dir=cache_dir)
        click.echo(f"{download}: weights at {encoder.info().get('weights_source')}")
        return
    rows = list_known_models(cache_dir=cache_dir)
    if text:
        needle = text.lower()
        rows = [r for r in rows if needle in r["spec"].lower() or needle in r["training_data"].lower()]
    if only_cached:
        rows = [r for r in rows if r["cached"]]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no models match")
        return
    width = max(len(r["spec"]) for r in rows)
    data_width = max(len(r["training_data"]) for r in rows)
    click.echo(f"{'model':<{width}}  {'training data':<{data_width}}  cached  needs")
    for r in rows:
        needs = ", ".join(p + (" (missing)" if p in r["missing"] else "") for p in r["needs"])
        click.echo(f"{r['spec']:<{width}}  {r['training_data']:<{data_width}}  {'yes' if r['cached'] else 'no ':<6}"
                   f"  {needs}".rstrip())
    n_cached = sum(r["cached"] for r in rows)
    click.echo(f"{len(rows)} models, {n_cached} cached")
    needing = [r for r in rows if r["needs"]]
    if needing:
        packages = sorted({p for r in needing for p in r["needs"]})
        missing = sorted({p for r in needing for p in r["missing"]})
        state = (f"not installed here: pip install 'clipprobe[{HF_TEXT_EXTRA}]'" if missing
                 else "installed")
        click.echo(f"{len(needing)} models need {', '.join(packages)} for their text tokenizer ({state})")
