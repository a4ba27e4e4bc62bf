"""Stage 1 settings: the authors' defaults, each a flag of ``python -m training.fit3d.lift``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fit3d_hub.commandline import option, options_of
from fit3d_hub.errors import UsageError
from fit3d_hub.render.backends import BACKENDS


@dataclass
class LearningRates:
    """The authors' learning rates: 3DGS's for the geometry and colour (means decay
    exponentially to ``means_final``, both x scene scale), and 3DGS's colour rate / 40 for
    the per-Gaussian features and the decoder; every Adam has eps 1e-15."""

    means: float = 1.6e-4
    means_final: float = 1.6e-6
    scales: float = 5e-3
    quats: float = 1e-3
    opacities: float = 5e-2
    sh0: float = 2.5e-3
    shN: float = 2.5e-3 / 20
    features: float = option(2.5e-3 / 40, flag="--feature-lr",
                             help="Adam lr of the per-Gaussian features (the authors')")
    decoder: float = option(2.5e-3 / 40, flag="--decoder-lr",
                            help="Adam lr of the scene decoder (the authors')")

    def __post_init__(self) -> None:
        for flag, value in (("--feature-lr", self.features), ("--decoder-lr", self.decoder)):
            if not value > 0:
                raise UsageError(f"{flag} must be a positive number; got {value}")


SHORT_RUN_RATES = LearningRates(features=2.5e-3, decoder=1e-3)
"""Feature and decoder rates for runs of a few hundred iterations (the demo, the tests): the
authors' rates are tuned for 30,000 and barely move the features in 300
(``benchmarks/lift_settings.py`` measures both at equal iterations)."""


@dataclass
class LiftConfig:
    """Stage 1 settings; defaults are 3DGS's and the paper's."""

    iterations: int = option(30_000, help="optimisation steps per scene")
    feature_dim: int = option(64, help="feature channels per Gaussian")
    sh_degree: int = option(3, help="spherical-harmonics degree of the colour (0..3)")
    sh_degree_interval: int = 1000
    ssim_weight: float = 0.2
    feature_weight: float = 1.0
    downscale: float = option(
        1.0, help="treat the images as downscaled by this factor (teacher, renders and Stage 2 "
        "alike): 1 for the authors' preprocessed ScanNet++ (already halved to 876x584), 2 for "
        "raw ScanNet++ DSLR images")
    max_points: int | None = option(
        None, help="at most this many initial Gaussians from the scene's points (none: all "
        "of them, as the authors)")
    """Initial Gaussians from at most this many scene points (None: all, as the authors)."""
    random_points: int = 20_000
    seed: int = option(0, help="random seed")
    lr: LearningRates = options_of(LearningRates)
    refine_start_iter: int = 500
    refine_stop_iter: int = 15_000
    refine_every: int = 100
    reset_every: int = 3000
    grow_grad2d: float = 0.0002
    holdout_every: int = option(0, help="hold out every k-th view from training (0: use all)")
    """Every k-th view is held out of training (0: train on all)."""
    hold_out_test_frames: bool = option(
        False, help="keep ScanNet++'s test_frames out of training (the authors train on them; "
        "Stage 2 follows what Stage 1 recorded)")
    """Keep ScanNet++'s test_frames out of training (the authors train on them)."""

    def __post_init__(self) -> None:
        for flag, value in (("--iterations", self.iterations),
                            ("--feature-dim", self.feature_dim),
                            ("--max-points", self.max_points)):
            if value is not None and value < 1:
                raise UsageError(f"{flag} must be a positive integer; got {value}")
        if not self.downscale >= 1.0:
            raise UsageError(f"--downscale must be >= 1; got {self.downscale}")
        if not 0 <= self.sh_degree <= 3:
            raise UsageError(f"--sh-degree must be 0..3; got {self.sh_degree}")
        if self.holdout_every < 0:
            raise UsageError(f"--holdout-every must be >= 0; got {self.holdout_every}")

    def to_json(self) -> dict:
        return asdict(self)

    def scheduled(self) -> LiftConfig:
        """These settings with 3DGS's densification schedule scaled to ``iterations``."""
        from dataclasses import replace

        return replace(self, **schedule_for(self.iterations))


def schedule_for(iterations: int) -> dict[str, int]:
    """3DGS's densification schedule, shrunk for runs shorter than its 30k steps.

    Refinement keeps at least 25 steps between rounds: it needs screen-space gradients
    averaged over many views, and refining after every step or two makes the Gaussian
    count explode.
    """
    frac = min(1.0, iterations / LiftConfig.iterations)
    every = max(25, round(100 * frac))
    start = max(every, round(500 * frac))
    return {"refine_every": every, "refine_start_iter": start,
            "refine_stop_iter": max(start + 1, round(15_000 * frac)),
            "reset_every": max(2 * every, round(3000 * frac)),
            "sh_degree_interval": max(1, round(1000 * frac))}


@dataclass
class LiftRun:
    """What ``python -m training.fit3d.lift`` runs on, beside the :class:`LiftConfig`."""

    scenes: str = option(help="a folder of scene folders, one scene folder, or a text file of "
                         "paths")
    backbone: str = option(help="registry name, hub repo id or directory (its original branch "
                           "is the teacher)")
    output: str = option(help="output folder (one subfolder per scene)")
    backend: str = option("auto", choices=BACKENDS, help="rasterizer")
    checkpoint_every: int = option(
        5000, help="save a scene's whole training state every N steps (0: never); a killed run "
        "continues each unfinished scene from its last one")
    cache_dir: str | None = option(None, help="Hugging Face cache for the backbone's weights")

    def __post_init__(self) -> None:
        if self.checkpoint_every < 0:
            raise UsageError(f"--checkpoint-every must be >= 0; got {self.checkpoint_every}")
