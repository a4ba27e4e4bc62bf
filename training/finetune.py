"""Stage 2: fine-tune a backbone on the 3D-aware features rendered from lifted scenes.

    accelerate launch -m training.finetune --lifted DIR --backbone NAME_OR_DIR --output DIR \
        [--scenes PATH] [--epochs 1] [--batch-size 2] [--lr 1e-5] [--weight-decay 1e-4] \
        [--grad-clip 0.1] [--mixed-precision no|bf16|fp16] [--save-every N] [--resume]

(plain ``python -m training.finetune`` works too). Stage 1's output says everything else:
each lifted file records its scene folder, ``--downscale``, image size and training views
(``--scenes`` points at moved scene folders, matched by name). All lifted scenes are
preloaded into CPU memory (``--lazy``: one at a time); each step renders a view's features,
decodes them with the scene's conv and resizes them to the token grid: the target of a
masked L1 on the fine-tuned backbone's last-block normed patch features. The output
directory is a fit3d-hub repo (``load_fit3d(DIR)``, ``fit3d-hub push DIR REPO``);
checkpoints go to ``DIR/checkpoints``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from fit3d_hub import FiT3D, FiT3DError, get_transform, load_fit3d
from fit3d_hub.distributed import accelerator_session
from fit3d_hub.errors import DATA_ERRORS, CheckpointError, OutputWriteError, exit_status
from scenes.load import scene_paths
from scenes.types import SceneError
from training.finetuning.data import LiftedDataError, LiftedStore, check_memory, find_lifted
from training.finetuning.trainer import (
    FinetuneConfig,
    FinetuneError,
    finetune,
    provenance,
    write_summary,
)
from training.lifting.io import LiftedSceneError
from training.lifting.rasterize import BACKENDS, resolve_backend

SETUP_ERRORS = (FiT3DError, SceneError, LiftedDataError, LiftedSceneError, ValueError)
"""Bad input found before training starts (exit 2 from the CLI)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.finetune",
                                description=__doc__.split("\n")[0])
    p.add_argument("--lifted", required=True, help="Stage 1 output folder")
    p.add_argument("--scenes", help="where the lifted scenes are now, if they moved since "
                   "Stage 1 (default: the folders Stage 1 recorded)")
    p.add_argument("--backbone", required=True, help="registry name, hub repo id or directory")
    p.add_argument("--output", required=True, help="repo directory to write")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--grad-clip", type=float, default=0.1)
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    p.add_argument("--save-every", type=int, default=1000,
                   help="checkpoint every N optimizer steps (and at the end; 0: never)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--lazy", action="store_true", help="load one lifted scene at a time")
    p.add_argument("--no-hflip", action="store_true", help="no horizontal flips")
    p.add_argument("--lr-drop", type=int, nargs="*", default=[1], metavar="EPOCH",
                   help="epochs after which the lr drops 10x (default 1, the authors'; the flag "
                   "with no epoch: never)")
    p.add_argument("--coverage-mask", action="store_true",
                   help="also leave out tokens the Gaussians do not cover (off: the authors "
                   "weight the loss by the scene mask only)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="Hugging Face cache for the backbone's weights")
    return p


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("epochs", "batch_size", "grad_accum"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if any(e < 1 for e in args.lr_drop):
        parser.error("--lr-drop epochs must be positive integers")
    for name in ("lr", "weight_decay", "grad_clip"):
        if not getattr(args, name) >= 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")


def run_finetune(lifted: str | Path, backbone: str, output: str | Path,
                 config: FinetuneConfig, *, scenes: str | Path | None = None,
                 backend: str = "auto", lazy: bool = False, mixed_precision: str = "no",
                 resume: bool = False, cache_dir: str | None = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """Fine-tune ``backbone`` on the scenes lifted into ``lifted`` and write the repo
    ``output``; returns the training summary.

    Raises one of ``SETUP_ERRORS`` for bad input (before any work) and
    :class:`FinetuneError` when training cannot go on.
    """
    with accelerator_session(mixed_precision=mixed_precision,
                             gradient_accumulation_steps=config.grad_accum) as accelerator:
        return _run(accelerator, lifted, backbone, Path(output), config, scenes=scenes,
                    backend=backend, lazy=lazy, mixed_precision=mixed_precision,
                    resume=resume, cache_dir=cache_dir, progress=progress, log=log)


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
    bar = tqdm(disable=not (progress and accelerator.is_local_main_process),
               desc="fine-tuning", dynamic_ncols=True, mininterval=1.0)

    def on_step(record: dict) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}",
                        samples_s=f"{record['samples_per_s']:.1f}", refresh=False)

    try:
        summary = finetune(accelerator, vit, store, config, transform=get_transform(teacher),
                           backend=backend, checkpoint_dir=output / "checkpoints",
                           resume=resume, on_step=on_step,
                           settings={"backbone": backbone_id(backbone), "scenes": store.names,
                                     "mixed_precision": mixed_precision})
    finally:
        bar.close()
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(vit).eval().float()
        model = FiT3D(teacher.original, trained)
        model.fit3d_block = replace(teacher.fit3d_block, training=provenance(
            config, store, summary, backbone, mixed_precision))
        model.save_pretrained(output)
        write_summary(output / "training_summary.json",
                      {**summary, "config": config.to_json(), "scenes": store.names})
        log(f"wrote {output} ({summary['steps']} steps, final loss "
            f"{summary['final_loss']:.4f}); load it with fit3d_hub.load_fit3d({str(output)!r})")
    return summary


def backbone_id(backbone: str) -> str:
    """The backbone as a resumed run must name it again: a local folder by its absolute
    path (so ``./model`` and ``/abs/model`` agree), anything else as given."""
    path = Path(backbone)
    return str(path.resolve()) if path.is_dir() else backbone


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    config = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            weight_decay=args.weight_decay, grad_clip=args.grad_clip,
                            grad_accum=args.grad_accum, hflip=not args.no_hflip,
                            lr_drop=tuple(args.lr_drop), coverage_mask=args.coverage_mask,
                            save_every=args.save_every, seed=args.seed)
    try:
        run_finetune(args.lifted, args.backbone, args.output, config, scenes=args.scenes,
                     backend=args.backend, lazy=args.lazy,
                     mixed_precision=args.mixed_precision, resume=args.resume,
                     cache_dir=args.cache_dir)
    except (FinetuneError, CheckpointError, OutputWriteError, *SETUP_ERRORS) as err:
        print(f"training.finetune: error: {err}", file=sys.stderr)
        return exit_status(err, (FinetuneError, *DATA_ERRORS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
