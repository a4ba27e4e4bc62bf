"""``python -m training.fit3d.lift``: Stage 1 from the command line (flags: LiftRun and
LiftConfig)."""

from __future__ import annotations

import json

from fit3d_hub import commandline
from training.fit3d.lift.config import LiftConfig, LiftRun
from training.fit3d.lift.run import lift_scenes

PROG = "python -m training.fit3d.lift"
DESCRIPTION = """Stage 1 of FiT3D: lift a backbone's 2D features into 3D feature Gaussians, one
scene at a time.

Run it with `accelerate launch -m training.fit3d.lift ...` (or plain python -m). Scenes are
sharded over the Accelerate processes; each finished scene is written atomically to
OUTPUT/<scene>/feature_gaussians.safetensors and skipped on the next run, so a killed run
resumes; a scene that fails is reported and the others go on."""


def main(argv: list[str] | None = None) -> int:
    run, config = commandline.command(PROG, DESCRIPTION, LiftRun, LiftConfig, argv=argv)

    def body() -> int:
        summary = lift_scenes(run.scenes, run.backbone, run.output, config.scheduled(),
                              backend=run.backend, cache_dir=run.cache_dir,
                              checkpoint_every=run.checkpoint_every)
        print(json.dumps(summary))
        return 1 if summary["failed"] else 0

    return commandline.run(PROG, body)
