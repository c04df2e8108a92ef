"""The options shared through clipprobe/cli/_options.py: one meaning per spelling (--permutations: permutation
draws of a test's null; --bootstrap: bootstrap resamples behind intervals) in every command that has them, the
sweep's counts named after their probe with the old spellings kept (hidden, warned about), and the model,
dataset and device options of eat and sweep built from the same definitions as report's."""

from __future__ import annotations

import logging

import click
import pytest
from click.testing import CliRunner

from clipprobe.cli import _options as O
from clipprobe.cli import cli


def _params(*path: str) -> dict[str, click.Option]:
    command = cli
    for name in path:
        command = command.commands[name]
    return {opt: p for p in command.params if isinstance(p, click.Option) for opt in p.opts}


def _prefix(template: str) -> str:
    return template.split("{", 1)[0]


@pytest.mark.parametrize("command", [("eat",), ("report",), ("sweep",), ("subsets",), ("subsets", "compare"),
                                     ("demo",)])
def test_each_count_option_has_the_one_meaning_of_its_spelling(command):
    params = _params(*command)
    for name, p in params.items():
        if p.hidden:
            continue
        if name.endswith("-permutations") or name == "--permutations":
            assert p.help.startswith(_prefix(O.PERMUTATIONS_HELP)), (name, p.help)
        if name.endswith("-bootstrap") or name in ("--bootstrap", "--n-boot"):
            assert p.help.startswith(_prefix(O.BOOTSTRAP_HELP)), (name, p.help)


def test_subsets_count_options_keep_their_defaults_and_checks(tmp_path):
    """The shared definitions changed the wording of subsets' counts, not their defaults or their limits."""
    subsets, compare = _params("subsets"), _params("subsets", "compare")
    assert (subsets["--bootstrap"].default, subsets["--permutations"].default) == (0, 1000)
    assert (compare["--n-boot"].default, compare["--permutations"].default) == (2000, 9999)
    assert "stability" in subsets["--bootstrap"].help and "intervals of" not in subsets["--bootstrap"].help
    assert "exact" in compare["--permutations"].help
    for args, message in [
        (["subsets", "--out", str(tmp_path / "s"), "--permutations", "0"], "--permutations must be 1 or more, got 0"),
        (["subsets", "--out", str(tmp_path / "s"), "--bootstrap", "-1"], "--bootstrap must be 0 or more, got -1"),
        (["subsets", "compare", str(tmp_path), "--n-boot", "99"], "--n-boot must be 100 or more, got 99"),
        (["subsets", "compare", str(tmp_path), "--permutations", "0"], "--permutations must be 1 or more, got 0"),
    ]:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert not (tmp_path / "s").exists()


def test_the_sweep_names_each_count_after_its_probe():
    params = _params("sweep")
    visible = {n for n, p in params.items() if not p.hidden}
    assert {"--report-permutations", "--report-bootstrap", "--eat-permutations", "--eat-bootstrap",
            "--sc-permutations"} <= visible
    assert params["--permutations"].hidden and params["--bootstrap"].hidden
    assert params["--eat-permutations"].default == _params("eat")["--permutations"].default
    assert params["--eat-bootstrap"].default == _params("eat")["--bootstrap"].default
    assert params["--report-permutations"].default == _params("report")["--permutations"].default
    assert params["--report-bootstrap"].default == _params("report")["--bootstrap"].default
    help_text = CliRunner().invoke(cli, ["sweep", "--help"]).output
    listed = {line.split()[0] for line in help_text.splitlines() if line.strip().startswith("--")}
    assert "--report-permutations" in listed and not {"--permutations", "--bootstrap"} & listed


@pytest.mark.parametrize("command", [("eat",), ("sweep",)])
def test_eat_and_sweep_use_the_shared_model_dataset_and_device_options(command):
    params = _params(*command)
    report = _params("report")
    names = ["--device", "--precision", "--batch-size", "--workers", "--offline", "--cache-dir"]
    names += ["--model", "--model-config", "--quick-gelu", "--preprocess"] if command == ("eat",) else \
        ["--dataset", "--split", "--hf-config", "--image-root"]
    for name in names:
        mine, theirs = params[name], report[name]
        assert (mine.name, mine.default, type(mine.type), mine.is_flag) == \
            (theirs.name, theirs.default, type(theirs.type), theirs.is_flag), name
        if name not in ("--cache-dir", "--offline"):   # the commands say more about their cache and offline needs
            assert mine.help == theirs.help, name


@pytest.fixture()
def captured(monkeypatch):
    """The sweep's config, taken where the sweep would start (nothing runs)."""
    import clipprobe.pipeline.sweep as S

    seen = {}

    class Stop(Exception):
        pass

    def fake(config, **kwargs):
        seen["config"] = config
        raise Stop

    monkeypatch.setattr(S, "run_sweep", fake)

    def run(*extra):
        seen.clear()
        r = CliRunner().invoke(cli, ["sweep", "--models", "demo", "--out", "OUT", *extra])
        return r, seen.get("config")
    return run


def test_the_old_sweep_spellings_still_work_and_say_so(captured, caplog):
    with caplog.at_level(logging.WARNING, logger="clipprobe.cli"):
        _, config = captured("--permutations", "33", "--bootstrap", "44")
    assert config.report.permutations == 33 and config.report.bootstrap == 44
    assert config.eat.permutations == 1_000_000 and config.eat.bootstrap == 2000
    warnings = [r.getMessage() for r in caplog.records if r.name == "clipprobe.cli"]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)
    assert warnings[0].startswith("--permutations is deprecated: use --report-permutations")
    assert warnings[1].startswith("--bootstrap is deprecated: use --report-bootstrap")


def test_the_new_sweep_spellings_reach_their_probe(captured, caplog):
    with caplog.at_level(logging.WARNING, logger="clipprobe.cli"):
        _, config = captured("--report-permutations", "30", "--report-bootstrap", "0", "--eat-permutations", "500",
                             "--eat-bootstrap", "300", "--sc-permutations", "40", "--hf-config", "1.25")
    assert (config.report.permutations, config.report.bootstrap) == (30, 0)
    assert (config.eat.permutations, config.eat.bootstrap, config.eat.sc_permutations) == (500, 300, 40)
    assert config.report.probe.hf_config == "1.25"
    assert not [r for r in caplog.records if r.name == "clipprobe.cli"]


@pytest.mark.parametrize("args, message", [
    (["--permutations", "5", "--report-permutations", "6"],
     "--permutations is the old spelling of --report-permutations; give only --report-permutations"),
    (["--report-permutations", "0"], "--report-permutations must be 1 or more, got 0"),
    (["--permutations", "0"], "--permutations must be 1 or more, got 0"),
    (["--eat-permutations", "1"], "--eat-permutations must be 2 or more, got 1"),
    (["--report-bootstrap", "-1"], "--report-bootstrap must be 0 or more, got -1"),
])
def test_bad_sweep_counts_are_one_line_usage_errors(captured, args, message):
    r, config = captured(*args)
    assert r.exit_code == 2 and config is None, r.output
    assert r.output.strip() == f"Error: {message}"


@pytest.mark.parametrize("args, message", [
    (["--permutations", "1"], "--permutations must be 2 or more, got 1"),
    (["--sc-permutations", "0"], "--sc-permutations must be 2 or more, got 0"),
    (["--bootstrap", "-1"], "--bootstrap must be 0 or more, got -1"),
    (["--model", "ViT-B-32:openai", "--quick-gelu"], "--quick-gelu is for a weights file or folder"),
])
def test_bad_eat_options_are_one_line_usage_errors(tmp_path, args, message):
    r = CliRunner().invoke(cli, ["eat", "--suite", "weat", "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output and not (tmp_path / "o").exists()


def _every_command(command=None, path=()):
    command = command or cli
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _every_command(sub, (*path, name))


def test_every_visible_option_of_every_command_says_what_it_does():
    missing = [(" ".join(path), p.opts[0]) for path, command in _every_command() for p in command.params
               if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()
               and "--help" not in p.opts]
    assert missing == []


@pytest.mark.parametrize("option, text", [("--taxonomy", O.TAXONOMY_HELP), ("--model-config", O.MODEL_CONFIG_HELP),
                                          ("--stimuli-root", O.STIMULI_ROOT_HELP),
                                          ("--oasis-root", O.OASIS_ROOT_HELP), ("--batch-size", None)])
def test_an_option_shared_by_several_commands_reads_the_same_in_each(option, text):
    """One wording per option where the option means the same (a command may prefix its probe: sweep's
    'Report: ...'); --taxonomy of `retrieve` is only for a word's part of speech and says so."""
    helps = {" ".join(path): p.help for path, command in _every_command() for p in command.params
             if isinstance(p, click.Option) and option in p.opts and not p.help.startswith("Report: ")
             and path != ("retrieve",)}
    assert len(helps) >= 2 and len(set(helps.values())) == 1, helps
    assert text is None or set(helps.values()) == {text}
