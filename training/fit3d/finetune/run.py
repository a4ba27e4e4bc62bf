"""Stage 2 as a library call: fine-tune a backbone on the scenes Stage 1 lifted and write the
repo (:func:`run_finetune`)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from fit3d_hub import get_transform, load_fit3d
from fit3d_hub.loading import model_id
from fit3d_hub.render.backends import resolve_backend
from scenes.load import scene_paths
from training.common.export import export_repo, owned_run, provenance
from training.common.loop import CHECKPOINTS, progress_bar
from training.fit3d.finetune.config import FinetuneConfig
from training.fit3d.finetune.data import LiftedStore, check_memory, find_lifted
from training.fit3d.finetune.trainer import finetune

COMMAND = "training.fit3d.finetune"


def run_finetune(lifted: str | Path, backbone: str, output: str | Path,
                 config: FinetuneConfig, *, scenes: str | Path | None = None,
                 backend: str = "auto", lazy: bool = False, mixed_precision: str = "no",
                 resume: bool = False, overwrite: bool = False, cache_dir: str | None = None,
                 progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Fine-tune ``backbone`` on the scenes lifted into ``lifted`` and write the repo
    ``output``; returns the training summary. The run claims ``output``
    (:func:`fit3d_hub.runs.claim_output`): ``overwrite`` starts over where an earlier run
    left checkpoints.

    Raises :class:`~fit3d_hub.errors.FiT3DError` for bad input (before any work) and
    :class:`~fit3d_hub.errors.TrainingStopped` when training cannot go on.
    """
    settings = {"lifted": str(Path(lifted).resolve()), "backbone": model_id(backbone),
                "scenes": str(scenes), "config": config.to_json(),
                "mixed_precision": mixed_precision}
    return owned_run(
        output, lambda accelerator: _run(
            accelerator, lifted, backbone, Path(output), config, scenes=scenes,
            backend=backend, lazy=lazy, mixed_precision=mixed_precision, resume=resume,
            cache_dir=cache_dir, progress=progress, log=log),
        command=COMMAND, settings=settings, resume=resume, overwrite=overwrite, log=log,
        mixed_precision=mixed_precision, gradient_accumulation_steps=config.grad_accum)


def _run(accelerator, lifted: str | Path, backbone: str, output: Path, config: FinetuneConfig,
         *, scenes, backend: str, lazy: bool, mixed_precision: str, resume: bool,
         cache_dir: str | None, progress: bool, log: Callable[[str], None]) -> dict:
    backend = resolve_backend(backend)
    records = find_lifted(Path(lifted), scene_paths(scenes) if scenes else None)
    if not lazy:
        need = check_memory(records)
        if accelerator.is_main_process:
            log(f"preloading {len(records)} lifted scenes (~{need / 2**20:.0f} MiB)")
    teacher = load_fit3d(backbone, mode="original", cache_dir=cache_dir)
    store = LiftedStore(records, lazy=lazy)
    vit = copy.deepcopy(teacher.original).train()
    for p in vit.parameters():
        p.requires_grad_(True)
    bar = progress_bar("fine-tuning", None, progress and accelerator.is_local_main_process)

    def on_step(record: dict) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}",
                        samples_s=f"{record['samples_per_s']:.1f}", refresh=False)

    try:
        summary = finetune(accelerator, vit, store, config, transform=get_transform(teacher),
                           backend=backend, checkpoint_dir=output / CHECKPOINTS,
                           resume=resume, on_step=on_step,
                           settings={"backbone": model_id(backbone), "scenes": store.names,
                                     "mixed_precision": mixed_precision})
    finally:
        bar.close()
    lifters = {r.name: r.meta.lifter for r in records}
    # targets all from a feed-forward lifter: Splat-and-Distill's recipe, recorded as such
    method = "feedforward" if set(lifters.values()) == {"feedforward"} else "fit3d"
    if accelerator.is_main_process:
        training = provenance(COMMAND, method=method, backbone=backbone, scenes=store.names,
                              views=int(sum(store.views)), summary=summary,
                              hyperparameters=config.to_json(),
                              mixed_precision=mixed_precision)
        training["lifters"] = lifters
        export_repo(output, teacher, accelerator.unwrap_model(vit), method=method,
                    training=training, log=log,
                    summary={**summary, "config": config.to_json(), "scenes": store.names,
                             "lifters": lifters})
    return summary
