"""The methods registry is what the package reads: a method planted there shows up in the
CLI, the demo, the model card and load_fit3d; and every command follows one convention."""

from __future__ import annotations

import argparse
import sys
import textwrap
from dataclasses import replace

import pytest
from helpers import tiny_vit

import fit3d_hub.methods as methods
from fit3d_hub import FiT3D, commandline, load_fit3d
from fit3d_hub.cards import render_card
from fit3d_hub.cli import build_parser, main
from fit3d_hub.errors import RepoFormatError, UsageError
from fit3d_hub.repo_format import validate_repo
from fit3d_hub.schema import CONFIG_NAME, read_config

DUMMY = methods.MethodSpec(
    name="dummy", title="Dummy Lifting", summary="a method planted by a test",
    card_text="Dummy Lifting renders nothing and trains nothing.",
    paper=methods.Paper("A Dummy Paper", "NoConf 2099", "A. Author", "https://example.org/d",
                        "https://example.org/code", "@misc{dummy}"),
    train=("training.dummy",), configs=("training.dummy.config:DummyConfig",),
    demo="dummy_demo_module")


@pytest.fixture
def dummy(monkeypatch, tmp_path):
    """The dummy method in the registry, its demo module importable."""
    monkeypatch.setitem(methods.METHODS, DUMMY.name, DUMMY)
    (tmp_path / "dummy_demo_module.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass, replace
        from pathlib import Path

        @dataclass
        class Settings:
            backbone: str | None = None
            seed: int = 0
            steps: int = 10

        def quick(settings):
            return replace(settings, steps=1)

        def run(output, settings, log=print):
            Path(output).mkdir(parents=True, exist_ok=True)
            (Path(output) / "ran.txt").write_text(f"{settings.steps} {settings.seed}")
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield DUMMY
    sys.modules.pop("dummy_demo_module", None)


def test_a_planted_method_shows_up_in_the_cli(dummy, capsys, tmp_path):
    assert main(["methods"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert any(r.startswith("dummy ") and "training.dummy" in r and "NoConf 2099" in r
               for r in rows)
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "dummy" in capsys.readouterr().out
    assert main(["demo", "--method", "dummy", "--quick", "--seed", "3", "--output",
                 str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "ran.txt").read_text() == "1 3"


def test_a_planted_method_loads_and_gets_its_card(dummy, tmp_path):
    model = FiT3D(tiny_vit(0), tiny_vit(1))
    model.fit3d_block = replace(model.fit3d_block, method="dummy")
    model.save_pretrained(tmp_path / "repo")
    loaded = load_fit3d(tmp_path / "repo")
    assert loaded.fit3d_block.method == "dummy"
    card = render_card(read_config(tmp_path / "repo" / CONFIG_NAME))
    assert "Dummy Lifting renders nothing" in card and "A Dummy Paper" in card
    assert "@misc{dummy}" in card and "dummy" in card.split("---")[1]  # a tag in the metadata
    assert validate_repo(tmp_path / "repo").fit3d.method == "dummy"


def test_an_unknown_method_is_refused_and_the_registry_says_what_repos_add(tmp_path):
    model = FiT3D(tiny_vit(0), tiny_vit(1))
    model.fit3d_block = replace(model.fit3d_block, method="equivariance")
    model.save_pretrained(tmp_path / "repo")  # an equivariance repo without its refine conv
    with pytest.raises(RepoFormatError, match="needs 'fit3d.refine'"):
        validate_repo(tmp_path / "repo")
    raw = (tmp_path / "repo" / CONFIG_NAME).read_text()
    (tmp_path / "repo" / CONFIG_NAME).write_text(raw.replace('"equivariance"', '"nomethod"'))
    with pytest.raises(RepoFormatError, match="'fit3d.method' is 'nomethod'"):
        load_fit3d(tmp_path / "repo")


def _commands() -> list[tuple[str, argparse.ArgumentParser]]:
    """Every command's parser: fit3d-hub's subcommands and each python -m entry point."""
    from eval.correspondence import CorrespondenceArgs
    from eval.linear_probe import ProbeArgs
    from scenes.synthetic import SyntheticArgs
    from training.equivariance.config import EquivarianceConfig, EquivarianceRun
    from training.fit3d.finetune.config import FinetuneConfig, FinetuneRun
    from training.fit3d.lift.config import LiftConfig, LiftRun

    top = build_parser()
    subs = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    out = [(f"fit3d-hub {name}", p) for name, p in subs.choices.items()]
    for prog, classes in (("training.fit3d.lift", (LiftRun, LiftConfig)),
                          ("training.fit3d.finetune", (FinetuneRun, FinetuneConfig)),
                          ("training.equivariance", (EquivarianceRun, EquivarianceConfig)),
                          ("eval.linear_probe", (ProbeArgs,)),
                          ("eval.correspondence", (CorrespondenceArgs,)),
                          ("scenes.synthetic", (SyntheticArgs,))):
        out.append((prog, commandline.add_options(commandline.new_parser(prog), *classes)))
    return out


def test_every_flag_of_every_command_shows_its_default():
    missing = []
    for prog, parser in _commands():
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS \
                    or isinstance(action, argparse._HelpAction) or action.required:
                continue
            if "(default: " not in (action.help or ""):
                missing.append(f"{prog} {action.option_strings[0]}")
    assert not missing, missing


def test_usage_errors_are_one_line_exit_2(capsys):
    for argv, message in ((["demo", "--method", "nomethod"], "invalid choice: 'nomethod'"),
                          (["features", "x.png"], "the following arguments are required"),
                          (["list", "--pretrained", "extra"], "unrecognized arguments")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and err.count("\n") == 1, err


def test_checks_live_in_the_config_dataclasses():
    from training.equivariance.config import EquivarianceConfig
    from training.fit3d.finetune.config import FinetuneConfig
    from training.fit3d.lift.config import LearningRates, LiftConfig

    for make, message in ((lambda: LiftConfig(iterations=0), "--iterations must be a positive"),
                          (lambda: LearningRates(features=0.0), "--feature-lr must be a posit"),
                          (lambda: FinetuneConfig(lr_drop=(0,)), "--lr-drop epochs"),
                          (lambda: EquivarianceConfig(positive=0.5), "--positive < --negative")):
        with pytest.raises(UsageError, match=message):
            make()


def test_exit_status_follows_the_error_type():
    from fit3d_hub.errors import (
        CheckpointError,
        SettingsChangedError,
        TrainingStopped,
        UnknownModelError,
    )
    from scenes.types import SceneError

    assert commandline.exit_status(UsageError("x")) == 2
    assert commandline.exit_status(UnknownModelError("x")) == 2
    assert commandline.exit_status(SettingsChangedError("x")) == 2
    for err in (CheckpointError("x"), SceneError("x"), TrainingStopped("x"), OSError("x")):
        assert commandline.exit_status(err) == 1
