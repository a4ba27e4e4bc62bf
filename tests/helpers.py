"""Test helpers: tiny timm ViTs and a Hugging Face cache laid out as the hub client does."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from fit3d_hub.backbone import create_vit
from fit3d_hub.weights import save_state_dict

TINY_ARGS = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 28}
TINY_ARCH = "vit_small_patch14_dinov2.lvd142m"
TINY_REG_ARCH = "vit_small_patch14_reg4_dinov2.lvd142m"


def tiny_vit(seed: int, arch: str = TINY_ARCH, **overrides) -> torch.nn.Module:
    """A 2-block, 32-wide timm ViT with reproducible random weights."""
    torch.manual_seed(seed)
    vit = create_vit(arch, {**TINY_ARGS, **overrides})
    # timm zero-initialises some tensors (e.g. layer scale is 1e-5); randomise everything so
    # that two branches really differ and a mix-up would show.
    with torch.no_grad():
        for p in vit.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return vit.eval()


def put_in_cache(cache_dir: Path, repo_id: str, files: dict[str, bytes | Path],
                 revision: str = "main", commit: str | None = None) -> str:
    """Store ``files`` under ``repo_id`` at ``revision`` exactly as ``hf_hub_download`` does.

    Layout: ``models--org--name/{blobs/<sha256>, snapshots/<commit>/<file> -> blob,
    refs/<revision>}``. Returns the commit hash.
    """
    root = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    contents = {n: (d.read_bytes() if isinstance(d, Path) else d) for n, d in files.items()}
    if commit is None:
        digest = hashlib.sha1(repo_id.encode() + revision.encode())
        for name in sorted(contents):
            digest.update(name.encode() + contents[name])
        commit = digest.hexdigest()
    for name, data in contents.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if revision != commit:
        ref = root / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
    return commit


def safetensors_bytes(module: torch.nn.Module, tmp: Path, name: str) -> bytes:
    path = save_state_dict(module.state_dict(), tmp / name)
    return path.read_bytes()


def pth_bytes(module: torch.nn.Module, tmp: Path, name: str) -> bytes:
    path = tmp / name
    torch.save(module.state_dict(), path)
    return path.read_bytes()


def by_hand(original: torch.nn.Module, finetuned: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The concat features computed directly from the two timm models."""
    outs = []
    for vit in (original, finetuned):
        tokens = vit.forward_features(x)[:, vit.num_prefix_tokens:]
        b, _, c = tokens.shape
        h, w = x.shape[-2] // 14, x.shape[-1] // 14
        outs.append(tokens.reshape(b, h, w, c).permute(0, 3, 1, 2))
    return torch.cat(outs, dim=1)


def authors_equivariance_ckpt(path: Path, vit: torch.nn.Module, seed: int = 0,
                              blocks: int = 2) -> Path:
    """A file laid out as 3DCorrEnhance's on_save_checkpoint writes it, Lightning's own
    bookkeeping included (plain values, readable with weights_only=True)."""
    g = torch.Generator().manual_seed(seed)
    dim = vit.embed_dim
    ckpt = {"epoch": 99, "global_step": 10000, "pytorch-lightning_version": "2.2.5",
            "state_dict": {"refine_conv": {"weight": torch.randn(dim, dim, 3, 3, generator=g),
                                           "bias": torch.randn(dim, generator=g)}},
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 100}}}},
            "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_path": "",
                                                               "best_model_score": None}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-5,
                                                                 "betas": (0.9, 0.999)}]}],
            "lr_schedulers": []}
    for i in range(2 * blocks):  # blocks x (q, v)
        ckpt[f"w_a_{i:03d}"] = torch.nn.Parameter(torch.randn(4, dim, generator=g) * 0.1)
        ckpt[f"w_b_{i:03d}"] = torch.nn.Parameter(torch.randn(dim, 4, generator=g) * 0.1)
    torch.save(ckpt, path)
    return path


def equivariance_by_hand(vit: torch.nn.Module, source: Path, blocks: int = 2
                         ) -> torch.nn.Module:
    """What a 3DCorrEnhance release computes, built by hand: their adapters on the last
    ``blocks`` blocks (q then v), then their refine conv on the final patch tokens."""
    from fit3d_hub.lora import add_lora
    from fit3d_hub.refine import refine_conv
    from training.equivariance.network import EquivarianceNet

    raw = torch.load(source, weights_only=True)
    for k, adapter in enumerate(add_lora(vit, blocks=blocks)):
        with torch.no_grad():
            adapter.a_q.weight.copy_(raw[f"w_a_{2 * k:03d}"])
            adapter.b_q.weight.copy_(raw[f"w_b_{2 * k:03d}"])
            adapter.a_v.weight.copy_(raw[f"w_a_{2 * k + 1:03d}"])
            adapter.b_v.weight.copy_(raw[f"w_b_{2 * k + 1:03d}"])
    conv = refine_conv(int(vit.embed_dim))
    conv.load_state_dict(raw["state_dict"]["refine_conv"])
    return EquivarianceNet(vit, conv).eval()


def as_if_killed(output: Path) -> None:
    """Make a finished run's folder look like one killed before it wrote its output (its run
    record not yet marked finished), so that --resume continues from its checkpoints."""
    import json

    from fit3d_hub.runs import RECORD

    record = json.loads((Path(output) / RECORD).read_text())
    (Path(output) / RECORD).write_text(json.dumps({**record, "finished": False}))
