"""``python -m training.gmae``: GMAE (or pixel-MAE) pre-training from the command line (flags:
GmaeRun and GmaeConfig)."""

from __future__ import annotations

from fit3d_hub import commandline
from training.gmae.config import GmaeConfig, GmaeRun
from training.gmae.run import run_gmae

PROG = "python -m training.gmae"
DESCRIPTION = """Gaussian Masked Autoencoder pre-training (Rajasegaran et al., 2025).

Run it with `accelerate launch -m training.gmae ...` (or plain python -m). A ViT encoder sees
the 25% visible patches of each image; the decoder predicts k 3D Gaussians from k learned
queries, which are splatted with a fixed camera; the loss is the pixel error of the masked
patches. --decoder pixels trains MAE instead (the baseline). OUTPUT is a fit3d-hub repo: the
encoder as a timm ViT (model.safetensors, loadable by plain timm) and the decoder beside it
(load_fit3d(OUTPUT), fit3d-hub layers IMAGE --model OUTPUT); checkpoints go to
OUTPUT/checkpoints."""


def main(argv: list[str] | None = None) -> int:
    run, config = commandline.command(PROG, DESCRIPTION, GmaeRun, GmaeConfig, argv=argv)
    return commandline.run(PROG, lambda: run_gmae(run, config))
