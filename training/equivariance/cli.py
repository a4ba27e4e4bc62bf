"""``python -m training.equivariance``: the equivariance method from the command line (flags:
EquivarianceRun and EquivarianceConfig)."""

from __future__ import annotations

from fit3d_hub import commandline
from training.equivariance.config import EquivarianceConfig, EquivarianceRun
from training.equivariance.run import run_equivariance

PROG = "python -m training.equivariance"
DESCRIPTION = """Multiview-equivariance fine-tuning (You et al., ICLR 2025) of a backbone on posed
scenes with depth.

Run it with `accelerate launch -m training.equivariance ...` (or plain python -m). Every step
draws a scene and two of its training views at most 120 degrees apart, samples 3000 pixels
with depth in each, and trains LoRA (rank 4, q and v of the last 4 blocks) and a 3x3 refine
conv so that features of points closer than 5e-3 x the scene's extent in 3D match against
those farther than 0.1 x (smooth AP, temperature 0.01). OUTPUT is a fit3d-hub repo with the
LoRA merged into the ViT and the refine conv beside it (load_fit3d(OUTPUT), fit3d-hub push);
checkpoints go to OUTPUT/checkpoints."""


def main(argv: list[str] | None = None) -> int:
    run, config = commandline.command(PROG, DESCRIPTION, EquivarianceRun, EquivarianceConfig,
                                      argv=argv)
    return commandline.run(PROG, lambda: run_equivariance(
        run.scenes, run.backbone, run.output, config, mixed_precision=run.mixed_precision,
        resume=run.resume, overwrite=run.overwrite, cache_dir=run.cache_dir))
