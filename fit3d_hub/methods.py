"""The methods registry: plain data, one entry per 3D-aware method.

Each entry says what the method is (its paper and the model card's paragraph), how it is
trained (the ``python -m`` modules of the source checkout and their config dataclasses), its
demo (``fit3d-hub demo --method NAME``) and what it adds to the repo format. The command
line, the model cards, the repo format's ``fit3d.method`` check and the docs read this
table; adding a method is one entry here plus the method's own folders (``training/NAME/``
and ``demo/NAME.py``). Code of the source checkout is named by dotted path, not imported:
the wheel ships ``fit3d_hub`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from fit3d_hub.errors import UnknownModelError


@dataclass(frozen=True)
class Paper:
    title: str
    venue: str
    authors: str
    url: str
    code: str
    bibtex: str


@dataclass(frozen=True)
class MethodSpec:
    """One 3D-aware method."""

    name: str
    """The ``fit3d.method`` value of its repos and the ``--method`` of the demo."""
    title: str
    """Short display name (cards, pictures, tables)."""
    summary: str
    """One line for ``fit3d-hub methods``."""
    card_text: str
    """The model card's "Method" paragraph."""
    paper: Paper
    train: tuple[str, ...] = ()
    """Modules run with ``accelerate launch -m`` (or ``python -m``), in order; empty for a
    method whose released weights load here but whose training is not built yet."""
    configs: tuple[str, ...] = ()
    """``module:Class`` of the config dataclass of each training module."""
    demo: str | None = None
    """Module of the demo: ``Settings`` (dataclass with ``backbone`` and ``seed``),
    ``quick(settings)`` and ``run(output, settings)``."""
    repo_extras: tuple[str, ...] = ()
    """What the method's repos hold beyond the repo format's ViT pair (``"refine"``: a
    conv applied to the fine-tuned branch, ``fit3d.refine`` in config.json)."""
    converter: str | None = None
    """``module:function`` of the package that turns the authors' released checkpoint into
    a repo (``fit3d-hub convert --method NAME``), if they released one."""
    branches: int = 2
    """2: an original ViT beside its 3D-aware twin (``mode`` picks); 1: one network (a GMAE
    encoder), no original to pair it with."""
    folder: str | None = None
    """The method folder under ``training/`` its code lives in, when it is a variant of
    another method that shares that folder's parts (feed-forward lifting replaces FiT3D's
    Stage 1 and writes its lifted files: ``"fit3d"``); None: its own, ``training/<name>``."""

    @property
    def training_folder(self) -> str:
        """``training.<folder>``: where the method's training modules live."""
        return f"training.{self.folder or self.name}"


FIT3D_PAPER = Paper(
    title="Improving 2D Feature Representations by 3D-Aware Fine-Tuning",
    venue="ECCV 2024",
    authors="Yuanwen Yue, Anurag Das, Francis Engelmann, Siyu Tang, Jan Eric Lenssen",
    url="https://arxiv.org/abs/2407.20229",
    code="https://github.com/ywyue/FiT3D",
    bibtex="@inproceedings{yue2024improving,\n"
           "  title     = {{Improving 2D Feature Representations by 3D-Aware Fine-Tuning}},\n"
           "  author    = {Yue, Yuanwen and Das, Anurag and Engelmann, Francis and Tang, Siyu "
           "and Lenssen, Jan Eric},\n"
           "  booktitle = {European Conference on Computer Vision (ECCV)},\n"
           "  year      = {2024}\n}",
)

EQUIVARIANCE_PAPER = Paper(
    title="Multiview Equivariance Improves 3D Correspondence Understanding with Minimal "
          "Feature Finetuning",
    venue="ICLR 2025",
    authors="Yang You, Yixin Li, Congyue Deng, Yue Wang, Leonidas Guibas",
    url="https://openreview.net/forum?id=CNO4rbSV6v",
    code="https://github.com/qq456cvb/3DCorrEnhance",
    bibtex="@inproceedings{you2025multiview,\n"
           "  title     = {Multiview Equivariance Improves 3D Correspondence Understanding "
           "with Minimal Feature Finetuning},\n"
           "  author    = {You, Yang and Li, Yixin and Deng, Congyue and Wang, Yue and "
           "Guibas, Leonidas},\n"
           "  booktitle = {International Conference on Learning Representations (ICLR)},\n"
           "  year      = {2025}\n}",
)

SND_PAPER = Paper(
    title="Splat and Distill: Augmenting Teachers with Feed-Forward 3D Reconstruction For "
          "3D-Aware Distillation",
    venue="ICLR 2026",
    authors="David Shavin, Sagie Benaim",
    url="https://arxiv.org/abs/2602.06032",
    code="https://github.com/davidshavin4/Splat-and-Distill",
    bibtex="@inproceedings{shavin2026splat,\n"
           "  title     = {Splat and Distill: Augmenting Teachers with Feed-Forward 3D "
           "Reconstruction For 3D-Aware Distillation},\n"
           "  author    = {Shavin, David and Benaim, Sagie},\n"
           "  booktitle = {International Conference on Learning Representations (ICLR)},\n"
           "  year      = {2026}\n}",
)

GMAE_PAPER = Paper(
    title="Gaussian Masked Autoencoders",
    venue="arXiv 2501.03229",
    authors="Jathushan Rajasegaran, Xinlei Chen, Rulilong Li, Christoph Feichtenhofer, "
            "Jitendra Malik, Shiry Ginosar",
    url="https://arxiv.org/abs/2501.03229",
    code="https://github.com/tekotan/video-gmae",
    bibtex="@article{rajasegaran2025gaussian,\n"
           "  title   = {Gaussian Masked Autoencoders},\n"
           "  author  = {Rajasegaran, Jathushan and Chen, Xinlei and Li, Rulilong and "
           "Feichtenhofer, Christoph and Malik, Jitendra and Ginosar, Shiry},\n"
           "  journal = {arXiv preprint arXiv:2501.03229},\n"
           "  year    = {2025}\n}",
)

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            name="fit3d",
            title="FiT3D",
            summary="per-scene 3D feature Gaussians (Stage 1), then the whole ViT fine-tuned "
                    "on their renders (Stage 2)",
            card_text="FiT3D lifts the backbone's 2D features into 3D feature Gaussians "
                      "fitted per scene (geometry\nfrom RGB only, features from the backbone), "
                      "renders multi-view-consistent features back, and\nfine-tunes the "
                      "backbone on those renders for one epoch. Concatenating original and "
                      "fine-tuned\nfeatures keeps the original's generality and adds the 3D "
                      "awareness.",
            paper=FIT3D_PAPER,
            train=("training.fit3d.lift", "training.fit3d.finetune"),
            configs=("training.fit3d.lift.config:LiftConfig",
                     "training.fit3d.finetune.config:FinetuneConfig"),
            demo="demo.fit3d",
            converter="fit3d_hub.convert:convert_checkpoint",
        ),
        MethodSpec(
            name="equivariance",
            title="multiview-equivariance fine-tuning",
            summary="q/v LoRA (merged) and a 3x3 refine conv trained on 3D correspondences",
            card_text="Multiview-equivariance fine-tuning trains rank-4 LoRA on the query and "
                      "value projections of\nthe last four blocks and a 3x3 refine convolution "
                      "on the final patch features, on pairs of\nviews with known 3D points: "
                      "features of the same 3D point must match (a smooth\naverage-precision "
                      "loss with positive and negative 3D distance thresholds). The LoRA is "
                      "merged\ninto `model.safetensors`; the refine convolution "
                      "(`refine.safetensors`, described in\n`config.json`'s `fit3d.refine`) is "
                      "applied to the fine-tuned branch by fit3d-hub.",
            paper=EQUIVARIANCE_PAPER,
            train=("training.equivariance",),
            configs=("training.equivariance.config:EquivarianceConfig",),
            demo="demo.equivariance",
            repo_extras=("refine",),
            converter="fit3d_hub.convert:convert_equivariance_checkpoint",
        ),
        MethodSpec(
            name="snd",
            title="Splat-and-Distill",
            summary="FiT3D with a feed-forward 3D reconstruction in place of per-scene "
                    "lifting; released weights load here, training is issue 22's",
            card_text="Splat-and-Distill replaces FiT3D's per-scene optimisation of feature "
                      "Gaussians with a\nfeed-forward 3D reconstruction whose Gaussians carry "
                      "the teacher's features, and distils the\nfine-tuned ViT from their "
                      "renders. The released weights are the whole fine-tuned DINOv2\n"
                      "(with or without the feature blending of the training renders).",
            paper=SND_PAPER,
        ),
        MethodSpec(
            name="feedforward",
            title="feed-forward lifting",
            summary="a lifter trained across scenes maps posed views to feature Gaussians in "
                    "one forward pass (LSM); Stage 2 fine-tunes on their renders (SnD)",
            card_text="The backbone was fine-tuned as in FiT3D's Stage 2, on features rendered "
                      "from feature Gaussians\nthat a feed-forward lifter predicted for each "
                      "scene in one forward pass (the Large Spatial\nModel's step, as "
                      "Splat-and-Distill uses it) instead of optimising them per scene. The\n"
                      "lifter learns geometry from RGB and features from the teacher's features "
                      "at target views.\nConcatenating original and fine-tuned features keeps "
                      "the original's generality.",
            paper=SND_PAPER,
            train=("training.fit3d.feedforward", "training.fit3d.finetune"),
            configs=("training.fit3d.feedforward.config:FeedForwardConfig",
                     "training.fit3d.finetune.config:FinetuneConfig"),
            demo="demo.feedforward",
            folder="fit3d",
        ),
        MethodSpec(
            name="gmae",
            title="Gaussian Masked Autoencoder",
            summary="an MAE whose decoder predicts k 3D Gaussians, splatted with a fixed "
                    "camera; zero-shot depth layers, figure-ground and edges",
            card_text="A Gaussian Masked Autoencoder pre-trains a ViT encoder by masked "
                      "autoencoding: a ViT decoder\nreads the visible patches' tokens and k "
                      "learnable queries and predicts one 3D Gaussian per query\n(centre, "
                      "scale, rotation, colour, opacity), which are splatted with a fixed "
                      "camera and trained\non the pixel error of the masked patches. The "
                      "encoder's features serve like MAE's; the Gaussians'\ndepth gives "
                      "layers, figure-ground masks and edges without further training. The "
                      "decoder\nships beside the encoder (`gmae_decoder.safetensors`).",
            paper=GMAE_PAPER,
            train=("training.gmae",),
            configs=("training.gmae.config:GmaeConfig",),
            demo="demo.gmae",
            repo_extras=("gmae_decoder",),
            branches=1,
        ),
    )
}
"""Every method this fit3d-hub knows, by ``fit3d.method`` name."""

DEFAULT_METHOD = "fit3d"


def method_names() -> tuple[str, ...]:
    """The registered method names, in registry order."""
    return tuple(METHODS)


def get_method(name: str) -> MethodSpec:
    """The entry of ``name``; an unknown name is one line listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownModelError(f"unknown method {name!r}: this fit3d-hub knows "
                                f"{', '.join(METHODS)}") from None
