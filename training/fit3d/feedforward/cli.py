"""``python -m training.fit3d.feedforward`` (train a lifter) and
``python -m training.fit3d.feedforward.lift`` (lift scenes with it): flags are the fields of
:mod:`training.fit3d.feedforward.config`."""

from __future__ import annotations

from fit3d_hub import commandline
from training.fit3d.feedforward.config import FeedForwardConfig, FeedForwardRun, LiftRun

TRAIN_PROG = "python -m training.fit3d.feedforward"
TRAIN_DESCRIPTION = """Train a feed-forward lifter across scenes (LSM's step; MVSplat's cost
volume for --depth predicted). Run it with `accelerate launch -m training.fit3d.feedforward`
(or plain python -m). Each step takes one scene's context views, predicts a Gaussian per cell
of each (depth along its ray, shape, opacity, colour, a feature), renders target views and
learns geometry from their RGB and features from the teacher's features at those views.
OUTPUT/lifter.safetensors is the lifter; checkpoints go to OUTPUT/checkpoints."""

LIFT_PROG = "python -m training.fit3d.feedforward.lift"
LIFT_DESCRIPTION = """Lift scenes with a trained feed-forward lifter, one forward pass each,
into Stage 1's lifted-file format (OUTPUT/<scene>/feature_gaussians.safetensors, recorded as
lifter 'feedforward'): Stage 2 (python -m training.fit3d.finetune) trains on them unchanged."""


def main(argv: list[str] | None = None) -> int:
    from training.fit3d.feedforward.run import run_training

    run, config = commandline.command(TRAIN_PROG, TRAIN_DESCRIPTION, FeedForwardRun,
                                      FeedForwardConfig, argv=argv)
    return commandline.run(TRAIN_PROG, lambda: run_training(run, config))


def lift_main(argv: list[str] | None = None) -> int:
    from training.fit3d.feedforward.run import lift_with_model

    run, = commandline.command(LIFT_PROG, LIFT_DESCRIPTION, LiftRun, argv=argv)
    return commandline.run(LIFT_PROG, lambda: 1 if lift_with_model(run)["failed"] else 0)
