"""Multiview-equivariance fine-tuning (You et al., ICLR 2025) of a backbone on posed scenes
with depth.

    accelerate launch -m training.equivariance --scenes PATH --backbone NAME_OR_DIR \
        --output DIR [--steps 10000] [--lr 1e-5] [--mixed-precision no|bf16|fp16] \
        [--save-every 1000] [--resume]

(plain ``python -m training.equivariance`` works too). Every step draws a scene and two of
its training views at most 120 degrees apart, samples 3000 pixels with depth in each, and
trains LoRA (rank 4, q and v of the last 4 blocks) and a 3x3 refine conv so that features of
points closer than 5e-3 x the scene's extent in 3D match against those farther than 0.1 x
(smooth AP, temperature 0.01). The output directory is a fit3d-hub repo with the LoRA merged
into the ViT and the refine conv beside it (``load_fit3d(DIR)``, ``fit3d-hub push``);
checkpoints go to ``DIR/checkpoints``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fit3d_hub import FiT3D, FiT3DError, load_fit3d
from fit3d_hub.distributed import accelerator_session
from fit3d_hub.errors import DATA_ERRORS, CheckpointError, OutputWriteError, exit_status
from fit3d_hub.lora import add_lora, merge_lora
from fit3d_hub.refine import refine_conv
from scenes.load import scene_paths
from scenes.types import SceneError
from training.checkpoints import TrainingStopped
from training.equivariance.network import EquivarianceNet
from training.equivariance.pairs import TrainingScene, load_training_scene
from training.equivariance.trainer import EquivarianceConfig, train
from training.finetune import backbone_id
from training.finetuning.trainer import write_summary

METHOD = "equivariance"
SETUP_ERRORS = (FiT3DError, SceneError, ValueError)
"""Bad input found before training starts (exit 2 from the CLI)."""


def build_parser() -> argparse.ArgumentParser:
    d = EquivarianceConfig()
    p = argparse.ArgumentParser(prog="python -m training.equivariance",
                                description=__doc__.split("\n")[0])
    p.add_argument("--scenes", required=True,
                   help="scene folder(s) with depth and poses, or a text file of paths")
    p.add_argument("--backbone", required=True, help="registry name, hub repo id or directory")
    p.add_argument("--output", required=True, help="repo directory to write")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--rank", type=int, default=d.rank, help="LoRA rank")
    p.add_argument("--lora-blocks", type=int, default=d.lora_blocks,
                   help="LoRA on the q and v of the last N blocks")
    p.add_argument("--target-size", type=int, default=d.target_size,
                   help="longer image side before the token grid is taken")
    p.add_argument("--feature-stride", type=int, default=d.feature_stride,
                   help="pixels of the target size per token")
    p.add_argument("--points", type=int, default=d.points, help="pixels sampled per view")
    p.add_argument("--max-rotation", type=float, default=d.max_rotation,
                   help="widest relative rotation of a training pair (degrees)")
    p.add_argument("--positive", type=float, default=d.positive,
                   help="3D distance below which two points match (x scene extent)")
    p.add_argument("--negative", type=float, default=d.negative,
                   help="3D distance above which two points are negatives (x scene extent)")
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--no-augment", action="store_true", help="no geometric/colour augmentation")
    p.add_argument("--holdout-every", type=int, default=0,
                   help="also keep every k-th view out of training (test frames always are)")
    p.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    p.add_argument("--save-every", type=int, default=d.save_every,
                   help="checkpoint every N steps (and at the end; 0: never)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--cache-dir", help="Hugging Face cache for the backbone's weights")
    return p


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace
                     ) -> EquivarianceConfig:
    """Checked settings; a bad value is one line naming the flag."""
    for name in ("steps", "rank", "lora_blocks", "target_size", "feature_stride", "points"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    for name in ("lr", "weight_decay", "grad_clip", "holdout_every", "save_every"):
        if not getattr(args, name) >= 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if not 0 < args.positive < args.negative:
        parser.error("expected 0 < --positive < --negative")
    if not args.temperature > 0:
        parser.error("--temperature must be > 0")
    if not 0 < args.max_rotation <= 180:
        parser.error("--max-rotation must be in (0, 180] degrees")
    return EquivarianceConfig(
        steps=args.steps, lr=args.lr, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        rank=args.rank, lora_blocks=args.lora_blocks, target_size=args.target_size,
        feature_stride=args.feature_stride, points=args.points, max_rotation=args.max_rotation,
        positive=args.positive, negative=args.negative, temperature=args.temperature,
        augment=not args.no_augment, holdout_every=args.holdout_every,
        save_every=args.save_every, seed=args.seed)


def check_backbone(vit: torch.nn.Module, name: str, config: EquivarianceConfig) -> None:
    """The method adapts a fused ``attn.qkv`` Linear in each of the last blocks."""
    blocks = getattr(vit, "blocks", None)
    if blocks is None or not all(isinstance(getattr(getattr(b, "attn", None), "qkv", None),
                                            torch.nn.Linear) for b in blocks):
        raise ValueError(f"--backbone {name}: the equivariance method puts LoRA on a fused "
                         "attn.qkv Linear in each block; this backbone has none")
    if not 1 <= config.lora_blocks <= len(blocks):
        raise ValueError(f"--lora-blocks {config.lora_blocks}: this backbone has "
                         f"{len(blocks)} blocks")


def provenance(config: EquivarianceConfig, scenes: list[TrainingScene], summary: dict,
               backbone: str, mixed_precision: str) -> dict:
    """The ``fit3d.training`` block of the exported config.json."""
    return {"method": "multiview equivariance (fit3d-hub training.equivariance)",
            "paper": "You et al., ICLR 2025", "backbone": backbone,
            "scenes": [s.name for s in scenes], "views": sum(len(s.frames) for s in scenes),
            "steps": summary["steps"], "hyperparameters": config.to_json(),
            "mixed_precision": mixed_precision, "final_loss": summary["final_loss"]}


def run_equivariance(scenes: str | Path, backbone: str, output: str | Path,
                     config: EquivarianceConfig, *, mixed_precision: str = "no",
                     resume: bool = False, cache_dir: str | None = None, progress: bool = True,
                     log: Callable[[str], None] = print) -> dict:
    """Fine-tune ``backbone`` on ``scenes`` and write the repo ``output``; returns the
    training summary. Raises one of ``SETUP_ERRORS`` for bad input (before any work) and
    :class:`TrainingStopped` when training cannot go on."""
    with accelerator_session(mixed_precision=mixed_precision) as accelerator:
        return _run(accelerator, scenes, backbone, Path(output), config,
                    mixed_precision=mixed_precision, resume=resume, cache_dir=cache_dir,
                    progress=progress, log=log)


def _run(accelerator, scenes, backbone: str, output: Path, config: EquivarianceConfig, *,
         mixed_precision: str, resume: bool, cache_dir: str | None, progress: bool,
         log: Callable[[str], None]) -> dict:
    data = [load_training_scene(p, holdout_every=config.holdout_every,
                                max_rotation=config.max_rotation) for p in scene_paths(scenes)]
    teacher = load_fit3d(backbone, mode="original", cache_dir=cache_dir)
    check_backbone(teacher.original, backbone, config)
    torch.manual_seed(config.seed)  # LoRA's A and the refine conv start the same everywhere
    vit = copy.deepcopy(teacher.original)
    add_lora(vit, config.rank, config.lora_blocks)
    net = EquivarianceNet(vit, refine_conv(teacher.embed_dim))
    mean, std = teacher.normalization
    if accelerator.is_main_process:
        log(f"{len(data)} scene(s), {sum(len(s.frames) for s in data)} training views, "
            f"{sum(len(s.pairs) for s in data)} view pairs within {config.max_rotation:g} deg")
    bar = tqdm(total=config.steps, disable=not (progress and accelerator.is_local_main_process),
               desc="equivariance", dynamic_ncols=True, mininterval=1.0)

    def on_step(record: dict) -> None:
        bar.n = record["step"]
        bar.set_postfix(loss=f"{record['loss']:.4f}", pairs_s=f"{record['pairs_per_s']:.2f}",
                        refresh=False)
        bar.update(0)

    try:
        summary = train(accelerator, net, data, config, mean=mean, std=std,
                        patch=teacher.patch_size, checkpoint_dir=output / "checkpoints",
                        resume=resume, on_step=on_step,
                        settings={"backbone": backbone_id(backbone),
                                  "scenes": [s.name for s in data],
                                  "mixed_precision": mixed_precision})
    finally:
        bar.close()
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(net)
        finetuned = merge_lora(trained.vit).eval().float()
        model = FiT3D(teacher.original, finetuned, refine=trained.refine.eval().float())
        model.fit3d_block = replace(teacher.fit3d_block, method=METHOD, training=provenance(
            config, data, summary, backbone, mixed_precision))
        model.save_pretrained(output)
        write_summary(output / "training_summary.json",
                      {**summary, "config": config.to_json(),
                       "scenes": [s.name for s in data]})
        log(f"wrote {output} ({summary['steps']} steps, final loss "
            f"{summary['final_loss']:.4f}); load it with fit3d_hub.load_fit3d({str(output)!r})")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(parser, args)
    try:
        run_equivariance(args.scenes, args.backbone, args.output, config,
                         mixed_precision=args.mixed_precision, resume=args.resume,
                         cache_dir=args.cache_dir)
    except (TrainingStopped, CheckpointError, OutputWriteError, *SETUP_ERRORS) as err:
        print(f"training.equivariance: error: {err}", file=sys.stderr)
        return exit_status(err, (TrainingStopped, *DATA_ERRORS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
