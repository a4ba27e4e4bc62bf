"""``python -m training.fit3d.finetune``: Stage 2 from the command line (flags: FinetuneRun
and FinetuneConfig)."""

from __future__ import annotations

from fit3d_hub import commandline
from training.fit3d.finetune.config import FinetuneConfig, FinetuneRun
from training.fit3d.finetune.run import run_finetune

PROG = "python -m training.fit3d.finetune"
DESCRIPTION = """Stage 2 of FiT3D: fine-tune a backbone on the 3D-aware features rendered from
lifted scenes.

Run it with `accelerate launch -m training.fit3d.finetune ...` (or plain python -m). Stage 1's
output says everything else: each lifted file records its scene folder, --downscale, image
size and training views (--scenes points at moved scene folders, matched by name). All lifted
scenes are preloaded into CPU memory (--lazy: one at a time); each step renders a view's
features, decodes them with the scene's conv and resizes them to the token grid: the target of
a masked L1 on the fine-tuned backbone's last-block normed patch features. OUTPUT is a
fit3d-hub repo (load_fit3d(OUTPUT), fit3d-hub push OUTPUT REPO); checkpoints go to
OUTPUT/checkpoints."""


def main(argv: list[str] | None = None) -> int:
    run, config = commandline.command(PROG, DESCRIPTION, FinetuneRun, FinetuneConfig, argv=argv)
    return commandline.run(PROG, lambda: run_finetune(
        run.lifted, run.backbone, run.output, config, scenes=run.scenes, backend=run.backend,
        lazy=run.lazy, mixed_precision=run.mixed_precision, resume=run.resume,
        overwrite=run.overwrite, cache_dir=run.cache_dir))
