"""Options shared by the commands that load a model and a face dataset."""

from __future__ import annotations

from typing import Any, Callable

import click

# The forms of --model and --dataset; the options' defaults are shown by click (show_default) or said by the
# command where it has none.
MODEL_HELP = ("Model: ARCH:TAG (open_clip pretrained pair, see `clipprobe models`), hf-hub:ORG/NAME, "
              "local-dir:PATH, ARCH:PATH to a local weights file, or demo (the tiny CLIP of the offline demo "
              "world, shipped; runs offline).")
DATASET_FORMS = "Face dataset: fairface:ROOT, hf:HuggingFaceM4/FairFace, utkface:DIR or csv:PATH."
DATASET_HELP = DATASET_FORMS + " Default: FairFace validation from Hugging Face."


CACHE_HELP = "Embedding cache (default $CLIPPROBE_CACHE or ~/.cache/clipprobe)."
FORMAT_HELP = "table: text to read; json: the same for scripts."
FORMAT_CSV_HELP = "table: text to read; json or csv: the same for scripts."
ENGINE_HELP = "local: processes on this machine; spark: a Spark session (--spark-master, --spark-conf)."
TAXONOMY_HELP = "Taxonomy name (see `clipprobe taxonomy list`) or YAML/JSON file (default: sobit)."
MODEL_CONFIG_HELP = "JSON config of a custom architecture; its file name is the architecture name."
STIMULI_ROOT_HELP = ("Local copy of the iEAT images (the folder holding data/experiments); default: fetch them "
                     "once.")
OASIS_ROOT_HELP = "OASIS folder (OASIS.csv and images/), for the image valence attributes."
OFFLINE_HELP = "Never touch the network (same as HF_HUB_OFFLINE=1)."


def _apply(func: Callable, options: list[Callable]) -> Callable:
    for option in reversed(options):
        func = option(func)
    return func


def _model_options() -> list[Callable]:
    return [
        click.option("--model", default="ViT-B-32:openai", show_default=True, help=MODEL_HELP),
        click.option("--model-config", type=click.Path(dir_okay=False), default=None, help=MODEL_CONFIG_HELP),
        click.option("--quick-gelu", "quick_gelu", is_flag=True,
                     help="Build a weights file or folder with QuickGELU (fine-tunes of OpenAI, LAION-400M ViT-B-32, "
                          "MetaCLIP, DFN models); or name the ARCH-quickgelu architecture."),
        click.option("--preprocess", default=None,
                     help="Preprocessing for a bare weights file: a pretrained tag whose settings to use "
                          "(e.g. openai) or 'default'. Recorded in the output."),
    ]


def _dataset_options() -> list[Callable]:
    return [
        click.option("--dataset", default=None, help=DATASET_HELP),
        click.option("--split", default="validation", show_default=True, help="validation or train."),
        click.option("--hf-config", "hf_config", default=None,
                     help="Configuration of an hf: dataset (FairFace: 0.25, the default, or 1.25 padding)."),
        click.option("--image-root", type=click.Path(file_okay=False), default=None,
                     help="Folder that image paths of a csv: dataset are relative to."),
    ]


def _compute_options(cache_help: str) -> list[Callable]:
    return [
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help=cache_help),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
                     help="Model precision (default: fp16 on CUDA, fp32 on the CPU)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
                     help="Images (or prompts) per forward pass of the model."),
        click.option("--workers", "num_workers", type=click.IntRange(min=0), default=None,
                     help="Image decoding workers (default: number of cores)."),
    ]


def _offline_option(help: str) -> Callable:
    return click.option("--offline", is_flag=True, help=help)


def model_options(func: Callable) -> Callable:
    """--model, --model-config, --quick-gelu, --preprocess (:func:`pop_model`)."""
    return _apply(func, _model_options())


def dataset_options(func: Callable) -> Callable:
    """--dataset, --split, --hf-config, --image-root (:func:`pop_dataset`)."""
    return _apply(func, _dataset_options())


def compute_options(*, cache_help: str = CACHE_HELP, offline_help: str = OFFLINE_HELP) -> Callable:
    """--cache-dir, --device, --precision, --batch-size, --workers and --offline (:func:`pop_compute`,
    :func:`pop_offline`); a command may say more about its cache or what offline needs."""
    def decorator(func: Callable) -> Callable:
        return _apply(func, _compute_options(cache_help) + [_offline_option(offline_help)])
    return decorator


def probe_options(func: Callable) -> Callable:
    """Model, dataset, cache and device options (they build a ProbeConfig)."""
    options = _model_options() + _dataset_options() + _compute_options(CACHE_HELP) + [
        click.option("--index", "index_kind", type=click.Choice(["flat", "hnsw", "ivf"]), default="flat",
                     show_default=True, help="flat is exact; hnsw/ivf are approximate, for very large sets."),
        _offline_option(OFFLINE_HELP),
    ]
    return _apply(func, options)


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


def pop_offline(kwargs: dict[str, Any]) -> bool:
    """Remove --offline from a command's kwargs, apply it (or HF_HUB_OFFLINE) to the process, return it."""
    from clipprobe.hub import env_offline, set_process_offline

    offline = kwargs.pop("offline") or env_offline()
    set_process_offline(offline)
    return offline


def pop_model(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the :func:`model_options` from a command's kwargs: the config fields model, quick_gelu,
    model_config, preprocess."""
    model, quick_gelu = kwargs.pop("model"), kwargs.pop("quick_gelu")
    if quick_gelu:
        from clipprobe.errors import UsageError
        from clipprobe.models import parse_model_spec

        if parse_model_spec(model).kind == "pretrained":
            raise UsageError(f"--quick-gelu is for a weights file or folder; {model} is built with the activation "
                             "its pretrained tag was trained with")
    return {"model": model, "quick_gelu": quick_gelu, "model_config": kwargs.pop("model_config"),
            "preprocess": kwargs.pop("preprocess")}


def pop_dataset(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the :func:`dataset_options` from a command's kwargs: the ProbeConfig fields of the dataset."""
    return {k: kwargs.pop(k) for k in ("dataset", "split", "hf_config", "image_root")}


def pop_compute(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the cache and device options from a command's kwargs (not --offline: :func:`pop_offline`)."""
    return {k: kwargs.pop(k) for k in ("cache_dir", "device", "precision", "batch_size", "num_workers")}


def pop_probe_config(kwargs: dict[str, Any]):
    """Remove the probe options from a command's kwargs and build the ProbeConfig."""
    from clipprobe.pipeline.probe import ProbeConfig

    offline = pop_offline(kwargs)
    embeddings, embeddings_key = kwargs.pop("embeddings", None), kwargs.pop("embeddings_key", None)
    if embeddings_key is not None and embeddings is None:
        from clipprobe.errors import UsageError

        raise UsageError(MSG_KEY_WITHOUT_EMBEDDINGS.format(key=embeddings_key))
    return ProbeConfig(**pop_model(kwargs), **pop_dataset(kwargs), **pop_compute(kwargs), offline=offline,
                       index=kwargs.pop("index_kind"), embeddings=embeddings, embeddings_key=embeddings_key)


# One meaning per spelling, in every command: --permutations is the number of permutation draws of a test's
# null distribution, --bootstrap the number of bootstrap resamples behind its intervals. A command that runs
# several tests (sweep) names each count after its test (--report-permutations, --eat-permutations, ...).
PERMUTATIONS_HELP = "Permutation draws of the null distribution of {test}{more}."
BOOTSTRAP_HELP = "Bootstrap resamples of {unit} behind the intervals of {what}{more}."
BOOTSTRAP_OTHER_HELP = "Bootstrap resamples of {unit} behind {behind}{more}."
MSG_DEPRECATED = "{old} is deprecated: use {new} ({meaning})"
MSG_ALIAS_CONFLICT = "{old} is the old spelling of {new}; give only {new}"


def _count_callback(minimum: int) -> Callable:
    def callback(ctx: click.Context, param: click.Parameter, value):
        return None if value is None else check_count(param.opts[0], value, minimum)
    return callback


def permutations_option(default: int, *, test: str, more: str = "", name: str = "--permutations",
                        minimum: int = 1) -> Callable:
    """The count of permutation draws of ``test``'s null distribution (``name``: --permutations, or the test's
    own name where a command runs several); below ``minimum`` it is a usage error naming the option."""
    return click.option(name, type=int, default=default, show_default=True, callback=_count_callback(minimum),
                        help=PERMUTATIONS_HELP.format(test=test, more=more))


def bootstrap_option(default: int, *, unit: str, what: str = "", more: str = "", name: str = "--bootstrap",
                     minimum: int = 0, behind: str | None = None) -> Callable:
    """The count of bootstrap resamples behind the intervals of ``what`` (``name`` as for
    :func:`permutations_option`); ``behind`` replaces "the intervals of WHAT" where the resamples feed
    another statistic (a stability) and no interval."""
    text = (BOOTSTRAP_HELP.format(what=what, unit=unit, more=more) if behind is None
            else BOOTSTRAP_OTHER_HELP.format(behind=behind, unit=unit, more=more))
    return click.option(name, type=int, default=default, show_default=True, callback=_count_callback(minimum),
                        help=text)


def deprecated_alias(old: str, dest: str, minimum: int = 0) -> Callable:
    """A hidden spelling of a count option kept for old command lines; :func:`resolve_alias` gives its value to
    the new option with a one-line warning."""
    return click.option(old, dest, type=int, default=None, hidden=True, callback=_count_callback(minimum))


def resolve_alias(ctx: click.Context, kwargs: dict[str, Any], *, old: str, dest: str, new: str, param: str,
                  meaning: str) -> None:
    """Where the hidden ``old`` spelling (kwarg ``dest``) was given, log that it is deprecated and use its value
    for ``new`` (kwarg ``param``); both given: a usage error."""
    value = kwargs.pop(dest)
    if value is None:
        return
    import logging

    from click.core import ParameterSource

    from clipprobe.errors import UsageError

    if ctx.get_parameter_source(param) is ParameterSource.COMMANDLINE:
        raise UsageError(MSG_ALIAS_CONFLICT.format(old=old, new=new))
    logging.getLogger("clipprobe.cli").warning(MSG_DEPRECATED.format(old=old, new=new, meaning=meaning))
    kwargs[param] = value


def figure_output_options(out_help: str) -> Callable:
    """--out (a folder, required), --format (repeatable; default every format of clipprobe.figstyle) and --style,
    of the commands that draw figures from finished folders (kwargs out, formats, style_name)."""
    from pathlib import Path

    from clipprobe.figstyle import DEFAULT_STYLE, FIGURE_FORMATS, FIGURE_STYLES

    style_help = ("Figure style: " + "; ".join(f"{name}: {s.description}" for name, s in FIGURE_STYLES.items())
                  + ".")

    def decorator(func: Callable) -> Callable:
        return _apply(func, [
            click.option("--out", "out", type=click.Path(path_type=Path), required=True, help=out_help),
            click.option("--format", "formats", type=click.Choice(list(FIGURE_FORMATS)), multiple=True,
                         help="Figure formats (repeatable; default: png at 300 dpi, pdf and svg)."),
            click.option("--style", "style_name", type=click.Choice(list(FIGURE_STYLES)), default=DEFAULT_STYLE,
                         show_default=True, help=style_help),
        ])
    return decorator


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
