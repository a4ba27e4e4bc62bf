"""Hostile and broken repos: budgets before allocation, one validator for load and push,
whole-repo saves, finite weights. Each case must end in one typed line naming the file."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import fit3d_hub.atomic as atomic
from fit3d_hub import FiT3D, load_fit3d
from fit3d_hub.budget import BudgetError, parse_bytes
from fit3d_hub.errors import CheckpointError, FiT3DError, RepoFormatError, UsageError
from fit3d_hub.repo_format import validate_repo

X = torch.randn(1, 3, 28, 28)


@pytest.fixture
def repo(tiny_pair, tmp_path):
    path = tmp_path / "repo"
    FiT3D(*tiny_pair).save_pretrained(path)
    return path


def _edit_config(path, edit):
    raw = json.loads((path / "config.json").read_text())
    edit(raw)
    (path / "config.json").write_text(json.dumps(raw))


def _no_model_built(monkeypatch):
    """Fail the test if a real (allocated) backbone is built."""
    import fit3d_hub.backbone as backbone

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the input was refused")

    monkeypatch.setattr(backbone, "create_vit", refuse)


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["model_args"].update(embed_dim=16384, num_heads=16), BudgetError),
    (lambda c: c["model_args"].update(depth=100000), RepoFormatError),
    (lambda c: c["model_args"].update(depth=200, embed_dim=4096, num_heads=16), BudgetError),
    (lambda c: c["model_args"].update(embed_dim=1e9), RepoFormatError),
    (lambda c: c["model_args"].update(img_size=60000), CheckpointError),  # header disagrees
    (lambda c: c["fit3d"].update(method="equivariance", refine={"kernel_size": 99999}),
     BudgetError),
    (lambda c: c["model_args"].update(norm_layer="no-such-norm"), RepoFormatError),
    (lambda c: c["model_args"].update(act_layer="no-such-act"), RepoFormatError),
    (lambda c: c["model_args"].update(patch_size=0), RepoFormatError),
    (lambda c: c["model_args"].update(mlp_ratio="4"), RepoFormatError),
    (lambda c: c["model_args"].update(num_heads=3), RepoFormatError),
    (lambda c: c.update(architecture="no_such_vit"), FiT3DError),
    (lambda c: c["fit3d"].update(std=[0, 1, 1]), RepoFormatError),
    (lambda c: c["pretrained_cfg"].update(mean=[float("nan"), 0, 0]), RepoFormatError),
    (lambda c: c["fit3d"].update(layer=7), RepoFormatError),
])
def test_hostile_config_is_refused_before_allocation(repo, monkeypatch, edit, expected):
    _edit_config(repo, edit)
    if json.loads((repo / "config.json").read_text())["fit3d"].get("refine"):
        save_file({"weight": torch.zeros(32, 32, 3, 3), "bias": torch.zeros(32)},
                  str(repo / "refine.safetensors"))
    _no_model_built(monkeypatch)
    with pytest.raises(expected) as err:
        load_fit3d(repo)
    line = str(err.value)
    assert "\n" not in line and str(repo) in line
    with pytest.raises(FiT3DError):
        validate_repo(repo)


def test_budget_is_one_documented_setting(repo, monkeypatch):
    monkeypatch.setenv("FIT3D_HUB_MAX_BYTES", "100KB")
    with pytest.raises(BudgetError, match="FIT3D_HUB_MAX_BYTES"):
        load_fit3d(repo)
    monkeypatch.setenv("FIT3D_HUB_MAX_BYTES", "1GiB")
    load_fit3d(repo)
    assert parse_bytes("16GiB") == 16 * 2**30 and parse_bytes("500MB") == 5 * 10**8
    for bad in ("lots", "-1", "0"):
        with pytest.raises(UsageError, match="FIT3D_HUB_MAX_BYTES"):
            parse_bytes(bad)


def test_deeply_nested_and_directory_configs_are_one_line(repo):
    (repo / "config.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(RepoFormatError, match="config.json"):
        load_fit3d(repo)
    (repo / "config.json").unlink()
    (repo / "config.json").mkdir()
    with pytest.raises(RepoFormatError, match="config.json"):
        load_fit3d(repo)


def _rewrite(path, change):
    state = load_file(str(path))
    change(state)
    save_file(state, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(extra=torch.zeros(2)), "unexpected keys: extra"),
    (lambda s: s.pop("cls_token"), "missing keys: cls_token"),
    (lambda s: s.update(cls_token=torch.zeros(1, 1, 64)), "cls_token (1, 1, 64) vs (1, 1, 32)"),
    (lambda s: s["norm.weight"].__setitem__(0, float("nan")), "'norm.weight' holds NaN"),
])
def test_one_validator_for_load_validate_and_push(repo, monkeypatch, change, message):
    _rewrite(repo / "model.safetensors", change)
    for call in (lambda: load_fit3d(repo), lambda: validate_repo(repo)):
        with pytest.raises(FiT3DError) as err:
            call()
        assert message in str(err.value) and "model.safetensors" in str(err.value)

    import huggingface_hub

    from fit3d_hub.hub import push_directory

    def no_network(*args, **kwargs):
        raise AssertionError("the upload started before the repo was validated")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_network)
    with pytest.raises(FiT3DError, match="model.safetensors"):
        push_directory(repo, "someone/broken")


def test_refine_file_declared_but_missing_is_refused(repo):
    _edit_config(repo, lambda c: c["fit3d"].update(method="equivariance",
                                                   refine={"kernel_size": 3}))
    for call in (lambda: load_fit3d(repo), lambda: validate_repo(repo)):
        with pytest.raises(RepoFormatError, match="refine.safetensors: missing"):
            call()


def test_nonfinite_weights_are_never_written_into_a_repo(tiny_pair, tiny_spec, tmp_path):
    from fit3d_hub.convert import convert_checkpoint

    bad = tiny_pair[1]
    with torch.no_grad():
        bad.blocks[0].attn.qkv.weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="blocks.0.attn.qkv.weight"):
        FiT3D(tiny_pair[0], bad).save_pretrained(tmp_path / "r")
    assert not (tmp_path / "r" / "config.json").exists()
    save_file(bad.state_dict(), str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="holds NaN or Inf"):
        convert_checkpoint(tmp_path / "bad.safetensors", "tiny_dinov2", tmp_path / "c")
    assert not (tmp_path / "c" / "config.json").exists()


def test_a_mix_of_two_saves_is_refused(tiny_pair, tmp_path):
    FiT3D(*tiny_pair).save_pretrained(tmp_path / "a")
    FiT3D(tiny_pair[1], tiny_pair[0]).save_pretrained(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(RepoFormatError, match="mixes two saves"):
        load_fit3d(tmp_path / "a")


class Killed(BaseException):
    """A kill at an injected point: no ``except`` of the code under test catches it."""


@pytest.mark.parametrize("kind", ["replace", "fsync", "unlink"])
def test_a_kill_at_every_write_and_rename_leaves_the_old_repo_or_the_new(tiny_pair, tmp_path,
                                                                         monkeypatch, kind):
    old_model, new_model = FiT3D(*tiny_pair), FiT3D(tiny_pair[1], tiny_pair[0])
    with torch.no_grad():
        old, new = old_model(X), new_model(X)
    point = 0
    while True:
        point += 1
        target = tmp_path / f"r{point}"
        old_model.save_pretrained(target)
        real = {"replace": os.replace, "fsync": os.fsync, "unlink": atomic.Path.unlink}[kind]
        calls = [0]

        def fault(*args, real=real, calls=calls, point=point, **kwargs):
            calls[0] += 1
            if calls[0] == point:
                raise Killed
            return real(*args, **kwargs)

        if kind == "unlink":
            monkeypatch.setattr(atomic.Path, "unlink", fault)
        else:
            monkeypatch.setattr(atomic.os, kind, fault)
        try:
            new_model.save_pretrained(target)
            finished = True
        except Killed:
            finished = False
        finally:
            monkeypatch.undo()
        with torch.no_grad():
            out = load_fit3d(target)(X)
        assert torch.equal(out, old) or torch.equal(out, new), f"mixed repo at {kind} {point}"
        if finished:
            assert torch.equal(out, new)
            break
        assert point < 50
    assert point > 3  # the save did go through several faultable steps


def test_card_text_from_files_is_escaped(repo):
    from fit3d_hub.cards import render_card
    from fit3d_hub.results import Result
    from fit3d_hub.schema import read_config

    evil = Result("segmentation", "ade20k",
                  "ADE\n| injected | row |\n<script>alert(1)</script>", "mIoU", 0.5)
    card = render_card(read_config(repo / "config.json"), results=[evil])
    assert "<script>" not in card and "&lt;script&gt;" in card
    assert "\n| injected" not in card and "\\| injected \\|" in card


@pytest.mark.parametrize("edit, expected, message", [
    (lambda shape: shape.update(width=10**6), BudgetError, "'shape' metadata"),
    (lambda shape: shape.update(width="32"), FiT3DError, "width='32'"),
    (lambda shape: shape.update(feature_dim=5), CheckpointError, "shapes do not match"),
])
def test_lifter_metadata_is_sized_before_allocation(tmp_path, monkeypatch, edit, expected,
                                                    message):
    from training.fit3d.feedforward import run as ff
    from training.fit3d.feedforward.model import FeedForwardLifter, LifterShape

    ff.save_lifter(tmp_path, FeedForwardLifter(LifterShape(teacher_dim=8, feature_dim=4,
                                                           width=4)), {})
    path = tmp_path / ff.LIFTER_FILE
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()[ff.META_KEY])
    edit(meta["shape"])
    save_file(load_file(str(path)), str(path), metadata={ff.META_KEY: json.dumps(meta)})

    real = ff.FeedForwardLifter

    def meta_only(*args, **kwargs):
        if torch.get_default_device().type != "meta":
            raise AssertionError("the lifter was built before its metadata was checked")
        return real(*args, **kwargs)

    if expected is not CheckpointError:
        monkeypatch.setattr(ff, "FeedForwardLifter", meta_only)
    with pytest.raises(expected, match=re.escape(message)):
        ff.load_lifter(tmp_path)


def test_cleanup_removes_only_this_projects_temporaries(tmp_path):
    mine = tmp_path / ".model.safetensors.fit3d-tmp-999999-abc"
    hidden_file, hidden_dir = tmp_path / ".notes.tmp-999999-x", tmp_path / ".cache.tmp-999999"
    for path in (mine, hidden_file):
        path.write_text("x")
    hidden_dir.mkdir()
    atomic.remove_stale_temporaries(tmp_path)
    assert not mine.exists() and hidden_file.exists() and hidden_dir.exists()


@pytest.mark.parametrize("filename", ["../../model.safetensors", "/etc/passwd", "a/../../b",
                                      "a//b", 7])
def test_a_path_traversing_base_filename_is_one_line(repo, filename):
    _edit_config(repo, lambda c: c["fit3d"].update(base={"repo_id": "timm/x",
                                                         "filename": filename}))
    with pytest.raises(RepoFormatError, match="'fit3d.base.filename' must be a file path"):
        load_fit3d(repo)
