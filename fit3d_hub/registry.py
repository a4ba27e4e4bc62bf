"""The backbone registry: plain data, one entry per released 3D-aware backbone and per base to
train from.

Names follow timm's pretrained tags: ``<base>.<method>`` for a release (``dinov2_small.fit3d``,
``dinov2_base.equivariance``, ``dinov2_small.snd``), the bare ``<base>`` for a backbone that
can be trained but has no release (``dinov2_large``, ``dinov3_base``). FiT3D's releases keep
their bare names (``dinov2_small`` is ``dinov2_small.fit3d``) and the authors' hubconf names
(``dinov2_small_fine``). Adding a release is adding one :class:`BackboneSpec` to ``REGISTRY``
(and, for a new file layout, its reader in :mod:`fit3d_hub.releases`). Two other places name
the FiT3D releases for what they alone carry: ``hubconf.py`` (torch.hub entry points under the
authors' names) and ``model_cards/backbones.json`` (the paper's figures); tests check that
both agree with the registry.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from fit3d_hub.errors import UnknownModelError
from fit3d_hub.methods import DEFAULT_METHOD, get_method
from fit3d_hub.schema import BaseRef, Fit3DBlock, RefineSpec, RepoConfig

AUTHORS_REPO = "yuanwenyue/FiT3D"
"""FiT3D's released fine-tuned checkpoints (pickled timm state dicts)."""
EQUIVARIANCE_REPO = "qq456cvb/3DCorrEnhance"
"""The multiview-equivariance authors' releases (Lightning checkpoints: LoRA + refine conv)."""
SND_REPO = "david-shavin/SnD"
"""Splat-and-Distill's releases (DINOv2 state dicts)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

FORMATS = ("state_dict", "equivariance_ckpt", "dinov2_state_dict")
"""How a release's file is laid out: a timm state dict of the fine-tuned ViT (FiT3D's
``.pth``); the equivariance authors' Lightning checkpoint (LoRA A/B per q and v of the last 4
blocks, ``state_dict.refine_conv``; merged on first load and cached as a repo); a DINOv2
state dict in torch.hub's or timm's keys (Splat-and-Distill's ``.pth``)."""


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: a base backbone and, for a release, whose weights and where."""

    name: str
    base_model: str
    """timm model id with pretrained tag; its weights live in the hub repo ``timm/<base_model>``."""
    patch_size: int
    embed_dim: int
    license: str
    method: str | None = None
    """The method whose released weights this entry loads (``fit3d.method``); None for a
    base with no release (train one: ``pretrained=False`` for the fine-tuned branch)."""
    finetuned_repo: str | None = None
    finetuned_file: str | None = None
    """File in ``finetuned_repo``; None when no fine-tuned weights were released."""
    weights_format: str = "state_dict"
    """One of :data:`FORMATS`."""
    display_name: str = ""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    aliases: tuple[str, ...] = ()
    model_args: dict[str, Any] = field(default_factory=dict)
    """Extra timm constructor arguments (empty for the released backbones)."""
    depth: int = 12

    @property
    def architecture(self) -> str:
        """timm architecture name (the model id without its pretrained tag)."""
        return self.base_model.split(".", 1)[0]

    @property
    def base_repo(self) -> str:
        """Hub repo of the original (base) weights, as timm publishes them."""
        return f"timm/{self.base_model}"

    @property
    def base_name(self) -> str:
        """The registry name of the base (the name without its method tag)."""
        return self.name.split(".", 1)[0]

    @property
    def has_finetuned_weights(self) -> bool:
        return self.finetuned_repo is not None and self.finetuned_file is not None

    @property
    def source(self) -> str | None:
        """``repo:file`` of the released weights, if any."""
        return f"{self.finetuned_repo}:{self.finetuned_file}" if self.has_finetuned_weights \
            else None


@dataclass(frozen=True)
class _Base:
    base_model: str
    patch: int
    width: int
    depth: int
    license: str
    display: str


BASES: dict[str, _Base] = {
    "dinov2_small": _Base("vit_small_patch14_dinov2.lvd142m", 14, 384, 12, "apache-2.0",
                          "DINOv2 ViT-S/14"),
    "dinov2_base": _Base("vit_base_patch14_dinov2.lvd142m", 14, 768, 12, "apache-2.0",
                         "DINOv2 ViT-B/14"),
    "dinov2_large": _Base("vit_large_patch14_dinov2.lvd142m", 14, 1024, 24, "apache-2.0",
                          "DINOv2 ViT-L/14"),
    "dinov2_giant": _Base("vit_giant_patch14_dinov2.lvd142m", 14, 1536, 40, "apache-2.0",
                          "DINOv2 ViT-g/14"),
    "dinov2_reg_small": _Base("vit_small_patch14_reg4_dinov2.lvd142m", 14, 384, 12,
                              "apache-2.0", "DINOv2-reg ViT-S/14"),
    "dinov2_reg_base": _Base("vit_base_patch14_reg4_dinov2.lvd142m", 14, 768, 12, "apache-2.0",
                             "DINOv2-reg ViT-B/14"),
    "dinov2_reg_large": _Base("vit_large_patch14_reg4_dinov2.lvd142m", 14, 1024, 24,
                              "apache-2.0", "DINOv2-reg ViT-L/14"),
    "dinov2_reg_giant": _Base("vit_giant_patch14_reg4_dinov2.lvd142m", 14, 1536, 40,
                              "apache-2.0", "DINOv2-reg ViT-g/14"),
    "dinov3_small": _Base("vit_small_patch16_dinov3.lvd1689m", 16, 384, 12, "dinov3-license",
                          "DINOv3 ViT-S/16"),
    "dinov3_small_plus": _Base("vit_small_plus_patch16_dinov3.lvd1689m", 16, 384, 12,
                               "dinov3-license", "DINOv3 ViT-S+/16"),
    "dinov3_base": _Base("vit_base_patch16_dinov3.lvd1689m", 16, 768, 12, "dinov3-license",
                         "DINOv3 ViT-B/16"),
    "dinov3_large": _Base("vit_large_patch16_dinov3.lvd1689m", 16, 1024, 24, "dinov3-license",
                          "DINOv3 ViT-L/16"),
    "clip_base": _Base("vit_base_patch16_clip_384.laion2b_ft_in12k_in1k", 16, 768, 12,
                       "apache-2.0", "CLIP ViT-B/16"),
    "mae_base": _Base("vit_base_patch16_224.mae", 16, 768, 12, "cc-by-nc-4.0", "MAE ViT-B/16"),
    "deit3_base": _Base("deit3_base_patch16_224.fb_in1k", 16, 768, 12, "apache-2.0",
                        "DeiT-III ViT-B/16"),
}
"""Every base a method can train from (timm weights); the releases below name theirs."""


def _spec(base: str, method: str | None = None, tag: str | None = None, **extra: Any
          ) -> BackboneSpec:
    b = BASES[base]
    name = f"{base}.{tag or method}" if method else base
    return BackboneSpec(name=name, base_model=b.base_model, patch_size=b.patch,
                        embed_dim=b.width, license=b.license, method=method,
                        display_name=b.display, depth=b.depth, **extra)


def _fit3d(base: str) -> BackboneSpec:
    # Released later than the others: dinov2_base (hubconf ``dinov2_base_fine``; the paper
    # has no DINOv2-B figures).
    return _spec(base, "fit3d", finetuned_repo=AUTHORS_REPO,
                 finetuned_file=f"{base}_finetuned.pth", aliases=(base, f"{base}_fine"))


def _equivariance(base: str, file: str, **extra: Any) -> BackboneSpec:
    return _spec(base, "equivariance", finetuned_repo=EQUIVARIANCE_REPO, finetuned_file=file,
                 weights_format="equivariance_ckpt", **extra)


def _snd(base: str, tag: str, file: str) -> BackboneSpec:
    return _spec(base, "snd", tag, finetuned_repo=SND_REPO, finetuned_file=file,
                 weights_format="dinov2_state_dict")


FIT3D_RELEASES = ("dinov2_small", "dinov2_base", "dinov2_reg_small", "clip_base", "mae_base",
                  "deit3_base")

REGISTRY: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        *(_fit3d(base) for base in FIT3D_RELEASES),
        # the equivariance authors' files (their hubconf and the dict of checkpoints their
        # evaluation code reads); CLIP is normalised with CLIP's statistics in their code
        *(_equivariance(f"dinov2_{size}", f"dinov2_{size}.ckpt")
          for size in ("small", "base", "large", "giant")),
        *(_equivariance(f"dinov2_reg_{size}", f"dinov2_reg_{size}.ckpt")
          for size in ("small", "base", "large", "giant")),
        _equivariance("clip_base", "clip.ckpt", mean=CLIP_MEAN, std=CLIP_STD),
        _equivariance("mae_base", "mae.ckpt"),
        _equivariance("deit3_base", "deit.ckpt"),
        # Splat-and-Distill, with and without feature blending
        *(_snd(f"dinov2_{size}", "snd", f"dinov2_{size}_snd.pth") for size in ("small", "base")),
        *(_snd(f"dinov2_{size}", "snd_no_blending", f"dinov2_{size}_snd_no_blending.pth")
          for size in ("small", "base")),
        # bases without a release: train them with any method
        *(_spec(base) for base in BASES if base not in FIT3D_RELEASES),
    )
}


def registry_config(spec: BackboneSpec) -> RepoConfig:
    """The repo config a registry entry stands for (the tagged timm id carries pretrained_cfg)."""
    method = get_method(spec.method or DEFAULT_METHOD)
    block = Fit3DBlock(
        name=spec.name, base_model=spec.base_model, base=BaseRef(spec.base_repo),
        method=method.name, refine=RefineSpec() if "refine" in method.repo_extras else None,
        patch_size=spec.patch_size, embed_dim=spec.embed_dim, mean=spec.mean, std=spec.std,
        training=({"release": "authors", "source": spec.source}
                  if spec.has_finetuned_weights else {}),
    )
    return RepoConfig(spec.base_model, dict(spec.model_args), {}, block)


def _alias_table() -> dict[str, str]:
    return {alias: spec.name for spec in REGISTRY.values() for alias in spec.aliases}


def list_models(pretrained: bool = False, method: str | None = None) -> list[str]:
    """Registry names, sorted; ``pretrained=True`` keeps those with released weights,
    ``method`` those of one method (``"fit3d"``, ``"equivariance"``, ``"snd"``, ...)."""
    return sorted(n for n, s in REGISTRY.items()
                  if (not pretrained or s.has_finetuned_weights)
                  and (method is None or s.method == method))


def is_registered(name: str) -> bool:
    return name in REGISTRY or name in _alias_table()


def get_spec(name: str) -> BackboneSpec:
    """Look up a registry name or alias; an unknown name raises :class:`UnknownModelError`
    naming the closest registered names."""
    canonical = _alias_table().get(name, name)
    if canonical not in REGISTRY:
        close = difflib.get_close_matches(name, [*REGISTRY, *_alias_table()], n=4, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UnknownModelError(f"unknown backbone {name!r}: {hint}`fit3d-hub list` shows "
                                f"every name (or give a hub repo id / local directory)")
    return REGISTRY[canonical]


def releases_of(base: str) -> list[str]:
    """The released names built on ``base`` (for a message about a base without weights)."""
    return sorted(n for n, s in REGISTRY.items() if s.base_name == base and s.method)


def registry_table(names: list[str]) -> list[tuple[str, ...]]:
    """Rows of ``fit3d-hub list`` (a header first): name, method, base, released weights,
    licence, paper."""
    from fit3d_hub.methods import METHODS

    rows = [("name", "method", "base model (timm)", "released weights", "license", "paper")]
    for name in names:
        spec = REGISTRY[name]
        method = METHODS.get(spec.method) if spec.method else None
        rows.append((name, spec.method or "- (base: train it)", spec.base_model,
                     spec.source or "-", spec.license,
                     f"{method.title}, {method.paper.venue}" if method else "-"))
    return rows


def registry_markdown(names: list[str]) -> str:
    """The registry table in markdown (``fit3d-hub list --markdown``; the README's)."""
    rows = registry_table(names)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    for row in rows[1:]:
        cells = [f"`{row[0]}`", row[1], f"`{row[2]}`",
                 f"`{row[3]}`" if row[3] != "-" else "-", row[4], row[5]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
