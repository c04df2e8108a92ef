"""Options shared by the commands that load a model and a face dataset."""

from __future__ import annotations

from typing import Any, Callable

import click

MODEL_HELP = ("Model: ARCH:TAG (open_clip pretrained pair, see `clipprobe models`), hf-hub:ORG/NAME, "
              "local-dir:PATH, ARCH:PATH to a local weights file, or demo (the tiny CLIP of the offline demo "
              "world, shipped; runs offline). Default: ViT-B-32:openai.")
DATASET_HELP = ("Face dataset: fairface:ROOT, hf:HuggingFaceM4/FairFace, utkface:DIR or csv:PATH. "
                "Default: FairFace validation from Hugging Face.")


def probe_options(func: Callable) -> Callable:
    """Model, dataset, cache and device options (they build a ProbeConfig)."""
    options = [
        click.option("--model", default="ViT-B-32:openai", show_default=True, help=MODEL_HELP),
        click.option("--model-config", type=click.Path(dir_okay=False), default=None,
                     help="JSON config of a custom architecture; its file name is the architecture name."),
        click.option("--quick-gelu", "quick_gelu", is_flag=True,
                     help="Build a weights file or folder with QuickGELU (fine-tunes of OpenAI, LAION-400M ViT-B-32, "
                          "MetaCLIP, DFN models); or name the ARCH-quickgelu architecture."),
        click.option("--preprocess", default=None,
                     help="Preprocessing for a bare weights file: a pretrained tag whose settings to use "
                          "(e.g. openai) or 'default'. Recorded in the output."),
        click.option("--dataset", default=None, help=DATASET_HELP),
        click.option("--split", default="validation", show_default=True, help="validation or train."),
        click.option("--hf-config", "hf_config", default=None,
                     help="Configuration of an hf: dataset (FairFace: 0.25, the default, or 1.25 padding)."),
        click.option("--image-root", type=click.Path(file_okay=False), default=None,
                     help="Folder that image paths of a csv: dataset are relative to."),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="Embedding cache (default $CLIPPROBE_CACHE or ~/.cache/clipprobe)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
                     help="Model precision (default: fp16 on CUDA, fp32 on the CPU)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True),
        click.option("--workers", "num_workers", type=click.IntRange(min=0), default=None,
                     help="Image decoding workers (default: number of cores)."),
        click.option("--index", "index_kind", type=click.Choice(["flat", "hnsw", "ivf"]), default="flat",
                     show_default=True, help="flat is exact; hnsw/ivf are approximate, for very large sets."),
        click.option("--offline", is_flag=True, help="Never touch the network (same as HF_HUB_OFFLINE=1)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


EMBEDDINGS_HELP = ("Folder of the dataset's image embeddings computed elsewhere, in clip-retrieval's layout "
                   "(img_emb/img_emb_N.npy + metadata/metadata_N.parquet, as LAION ships them): the images are "
                   "not embedded, only the text tower of --model is used (its dimension must match).")
EMBEDDINGS_KEY_HELP = ("Metadata column of --embeddings naming each row's image, matched to the dataset's image "
                       "paths by their trailing path (default: the first of image_path, path, file, filepath, "
                       "key, url present).")


def embeddings_options(func: Callable) -> Callable:
    """``--embeddings DIR`` and ``--embeddings-key COLUMN`` (commands whose probe can read its image side
    from a folder; :func:`pop_probe_config` puts them in the ProbeConfig)."""
    func = click.option("--embeddings-key", "embeddings_key", default=None, metavar="COLUMN",
                        help=EMBEDDINGS_KEY_HELP)(func)
    return click.option("--embeddings", "embeddings", type=click.Path(file_okay=False), default=None, metavar="DIR",
                        help=EMBEDDINGS_HELP)(func)


MSG_KEY_WITHOUT_EMBEDDINGS = "--embeddings-key {key} is given without --embeddings"


def pop_probe_config(kwargs: dict[str, Any]):
    """Remove the probe options from a command's kwargs and build the ProbeConfig."""
    from clipprobe.hub import env_offline, set_process_offline
    from clipprobe.pipeline.probe import ProbeConfig

    offline = kwargs.pop("offline") or env_offline()
    set_process_offline(offline)
    model, quick_gelu = kwargs.pop("model"), kwargs.pop("quick_gelu")
    if quick_gelu:
        from clipprobe.errors import UsageError
        from clipprobe.models import parse_model_spec

        if parse_model_spec(model).kind == "pretrained":
            raise UsageError(f"--quick-gelu is for a weights file or folder; {model} is built with the activation "
                             "its pretrained tag was trained with")
    embeddings, embeddings_key = kwargs.pop("embeddings", None), kwargs.pop("embeddings_key", None)
    if embeddings_key is not None and embeddings is None:
        from clipprobe.errors import UsageError

        raise UsageError(MSG_KEY_WITHOUT_EMBEDDINGS.format(key=embeddings_key))
    return ProbeConfig(
        model=model,
        quick_gelu=quick_gelu,
        model_config=kwargs.pop("model_config"),
        preprocess=kwargs.pop("preprocess"),
        dataset=kwargs.pop("dataset"),
        split=kwargs.pop("split"),
        hf_config=kwargs.pop("hf_config"),
        image_root=kwargs.pop("image_root"),
        cache_dir=kwargs.pop("cache_dir"),
        device=kwargs.pop("device"),
        precision=kwargs.pop("precision"),
        batch_size=kwargs.pop("batch_size"),
        num_workers=kwargs.pop("num_workers"),
        offline=offline,
        index=kwargs.pop("index_kind"),
        embeddings=embeddings,
        embeddings_key=embeddings_key,
    )


def attributes_option(default: str) -> Callable:
    return click.option("--attributes", default=default, show_default=True,
                        help="Comma-separated attributes: race, gender, age, race_gender.")


def split_values(values: tuple[str, ...]) -> tuple[str, ...]:
    """Values of a repeatable option that may also be comma-separated, in order, once each."""
    out: list[str] = []
    for value in values:
        out.extend(v.strip() for v in value.split(",") if v.strip())
    return tuple(dict.fromkeys(out))


def split_attributes(text: str) -> tuple[str, ...]:
    parts = tuple(a.strip() for a in text.split(",") if a.strip())
    if not parts:
        raise click.BadParameter("give at least one attribute", param_hint="--attributes")
    return parts


MSG_FRACTION = "{option} must be between 0 and 1 (exclusive), got {value}"
MSG_COUNT = "{option} must be {minimum} or more, got {value}"


def check_fraction(option: str, value: float) -> float:
    """A probability-like option in (0, 1), or a one-line usage error naming the option (exit 2)."""
    from clipprobe.errors import UsageError

    if not 0 < value < 1:
        raise UsageError(MSG_FRACTION.format(option=option, value=value))
    return value


def check_count(option: str, value: int, minimum: int = 0) -> int:
    """A whole-number option of at least ``minimum``, or a one-line usage error naming the option (exit 2)."""
    from clipprobe.errors import UsageError

    if value < minimum:
        raise UsageError(MSG_COUNT.format(option=option, minimum=minimum, value=value))
    return value


def check_choice(option: str, value: str, choices) -> str:
    """A value from a fixed list, or a one-line usage error naming the option and the valid values (exit 2)."""
    from clipprobe.errors import UsageError, did_you_mean

    choices = list(choices)
    if value not in choices:
        raise UsageError(f"{option} {value!r} is not one of {', '.join(repr(c) for c in choices)}"
                         f"{did_you_mean(value, choices)}")
    return value
