"""The equivariance method as a library call: train LoRA and the refine conv on a backbone's
views of posed scenes with depth and write the repo (:func:`run_equivariance`)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch

from fit3d_hub import load_fit3d
from fit3d_hub.errors import UsageError
from fit3d_hub.loading import model_id
from fit3d_hub.lora import add_lora, merge_lora
from fit3d_hub.refine import refine_conv
from scenes.load import scene_paths
from training.common.export import export_repo, owned_run, provenance
from training.common.loop import CHECKPOINTS, progress_bar
from training.equivariance.config import EquivarianceConfig
from training.equivariance.network import EquivarianceNet
from training.equivariance.pairs import load_training_scene
from training.equivariance.trainer import train

METHOD = "equivariance"
COMMAND = "training.equivariance"


def check_backbone(vit: torch.nn.Module, name: str, config: EquivarianceConfig) -> None:
    """The method adapts a fused ``attn.qkv`` Linear in each of the last blocks."""
    blocks = getattr(vit, "blocks", None)
    if blocks is None or not all(isinstance(getattr(getattr(b, "attn", None), "qkv", None),
                                            torch.nn.Linear) for b in blocks):
        raise UsageError(f"--backbone {name}: the equivariance method puts LoRA on a fused "
                         "attn.qkv Linear in each block; this backbone has none")
    if not 1 <= config.lora_blocks <= len(blocks):
        raise UsageError(f"--lora-blocks {config.lora_blocks}: this backbone has "
                         f"{len(blocks)} blocks")


def run_equivariance(scenes: str | Path, backbone: str, output: str | Path,
                     config: EquivarianceConfig, *, mixed_precision: str = "no",
                     resume: bool = False, overwrite: bool = False,
                     cache_dir: str | None = None, progress: bool = True,
                     log: Callable[[str], None] = print) -> dict:
    """Fine-tune ``backbone`` on ``scenes`` and write the repo ``output``; returns the
    training summary. Raises :class:`~fit3d_hub.errors.FiT3DError` for bad input (before
    any work) and :class:`~fit3d_hub.errors.TrainingStopped` when training cannot go on.
    The run claims ``output`` (:func:`fit3d_hub.runs.claim_output`)."""
    settings = {"scenes": str(Path(scenes).resolve()), "backbone": model_id(backbone),
                "config": config.to_json(), "mixed_precision": mixed_precision}
    return owned_run(
        output, lambda accelerator: _run(
            accelerator, scenes, backbone, Path(output), config,
            mixed_precision=mixed_precision, resume=resume, cache_dir=cache_dir,
            progress=progress, log=log),
        command=COMMAND, settings=settings, resume=resume, overwrite=overwrite, log=log,
        mixed_precision=mixed_precision)


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
    names = [s.name for s in data]
    if accelerator.is_main_process:
        log(f"{len(data)} scene(s), {sum(len(s.frames) for s in data)} training views, "
            f"{sum(len(s.pairs) for s in data)} view pairs within {config.max_rotation:g} deg")
    bar = progress_bar("equivariance", config.steps, progress and accelerator.is_local_main_process)

    def on_step(record: dict) -> None:
        bar.n = record["step"]
        bar.set_postfix(loss=f"{record['loss']:.4f}", pairs_s=f"{record['pairs_per_s']:.2f}",
                        refresh=False)
        bar.update(0)

    try:
        summary = train(accelerator, net, data, config, mean=mean, std=std,
                        patch=teacher.patch_size, checkpoint_dir=output / CHECKPOINTS,
                        resume=resume, on_step=on_step,
                        settings={"backbone": model_id(backbone), "scenes": names,
                                  "mixed_precision": mixed_precision})
    finally:
        bar.close()
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(net)
        training = provenance(COMMAND, method=METHOD, backbone=backbone, scenes=names,
                              views=sum(len(s.frames) for s in data), summary=summary,
                              hyperparameters=config.to_json(),
                              mixed_precision=mixed_precision)
        export_repo(output, teacher, merge_lora(trained.vit), method=METHOD, training=training,
                    refine=trained.refine, log=log,
                    summary={**summary, "config": config.to_json(), "scenes": names})
    return summary
