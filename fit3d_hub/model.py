"""The FiT3D module: an original ViT and its 3D-aware fine-tuned twin, features side by side."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fit3d_hub.errors import InputShapeError, RepoFormatError, UsageError
from fit3d_hub.hub import push_directory
from fit3d_hub.refine import spec_of
from fit3d_hub.repo_format import save_repo
from fit3d_hub.schema import MODES, Fit3DBlock

PAD_MODES = (None, "center")


class FiT3DFeatures(NamedTuple):
    """What :meth:`FiT3D.forward_features` returns.

    ``original`` / ``finetuned`` are ``None`` for a branch the mode does not run. ``cls_token``
    is the original model's CLS token, or the fine-tuned model's in ``"finetuned"`` mode.
    """

    features: torch.Tensor
    original: torch.Tensor | None
    finetuned: torch.Tensor | None
    cls_token: torch.Tensor


def patch_size_of(vit: nn.Module) -> int:
    """Square patch size of a timm ViT."""
    size = vit.patch_embed.patch_size
    size = size if isinstance(size, int) else tuple(size)
    if isinstance(size, tuple):
        if size[0] != size[1]:
            raise ValueError(f"non-square patches {size} are not supported")
        size = size[0]
    return int(size)


def block_features(vit: nn.Module, x: torch.Tensor, layer: int = -1, norm: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Block ``layer``'s patch tokens as NCHW (after the final norm if ``norm``) and its first
    prefix (CLS) token: timm's ``forward_intermediates``, register tokens dropped. FiT3D's
    features are the defaults (last block, normed); ``x`` must be a multiple of the patch
    size."""
    (fmap, prefix), = vit.forward_intermediates(x, indices=[layer], norm=norm,
                                                return_prefix_tokens=True,
                                                intermediates_only=True, output_fmt="NCHW")
    return fmap, prefix[:, 0]


def _branch_intermediates(vit: nn.Module, x: torch.Tensor, *, return_prefix_tokens: bool,
                          intermediates_only: bool, attn_mask: torch.Tensor | None,
                          is_causal: bool, **kwargs) -> dict[str, Any]:
    """One branch's ``forward_intermediates`` as timm's ``output_dict`` lays it out, for any
    timm ViT (``VisionTransformer``, and ``Eva`` (DINOv3), which has no ``output_dict``)."""
    extra = {k: v for k, v in (("attn_mask", attn_mask), ("is_causal", is_causal)) if v}
    out = vit.forward_intermediates(x, return_prefix_tokens=return_prefix_tokens,
                                    intermediates_only=intermediates_only, **kwargs, **extra)
    final, layers = (None, out) if intermediates_only else out
    result: dict[str, Any] = {}
    if return_prefix_tokens:
        result["image_intermediates"] = [spatial for spatial, _ in layers]
        result["image_intermediates_prefix"] = [prefix for _, prefix in layers]
    else:
        result["image_intermediates"] = list(layers)
    if final is not None:
        result["image_features"] = final
    return result


def _nearest_multiples(n: int, p: int) -> tuple[int, int]:
    low = (n // p) * p
    return (low if low > 0 else p), low + p


class FiT3D(nn.Module):
    """Original + 3D-aware fine-tuned ViT (FiT3D, ECCV 2024) as one feature extractor.

    ``forward(x)`` maps ``(B, 3, H, W)`` images (normalised as :func:`fit3d_hub.get_transform`
    does) to ``(B, out_channels, H/p, W/p)`` patch features from the last block after the
    final norm; in ``"concat"`` mode the channels are ``[original | finetuned]``.

    Args:
        original: the base timm ViT (may be ``None`` in ``"finetuned"`` mode).
        finetuned: the fine-tuned timm ViT of the same architecture (may be ``None`` in
            ``"original"`` mode).
        mode: ``"concat"`` (the paper's assembly), ``"finetuned"`` or ``"original"``; the
            last two run one backbone only.
        pad: ``None`` (sizes must be multiples of the patch size) or ``"center"`` (zero-pad
            each side evenly up to the next multiple, as the authors' evaluation does).
        layer, norm: the block whose tokens are the features (-1: the last) and whether the
            final norm applies (FiT3D's: -1 and True); config.json records both.
        refine: a module applied to the fine-tuned branch's feature map (the equivariance
            method's 3x3 refine conv; ``None`` for FiT3D). ``forward_intermediates`` returns
            the blocks' own tokens, without it.
        decoder: a module a one-branch repo ships beside its network (a GMAE encoder's
            Gaussian decoder, for :mod:`fit3d_hub.gmae`'s zero-shot outputs); not used by
            ``forward``.
    """

    def __init__(
        self,
        original: nn.Module | None,
        finetuned: nn.Module | None,
        mode: str = "concat",
        pad: str | None = None,
        layer: int = -1,
        norm: bool = True,
        refine: nn.Module | None = None,
        decoder: nn.Module | None = None,
    ):
        super().__init__()
        present = [m for m in (original, finetuned) if m is not None]
        if not present:
            raise ValueError("FiT3D needs at least one backbone (original or finetuned)")
        if original is not None and finetuned is not None:
            _check_twins(original, finetuned)
        self.original = original
        self.finetuned = finetuned
        ref = present[0]
        self.patch_size = patch_size_of(ref)
        self.embed_dim = int(ref.embed_dim)
        self.num_prefix_tokens = int(ref.num_prefix_tokens)
        self._mode = "concat"
        self.mode = mode
        self.pad = pad
        depth = len(ref.blocks)
        if not -depth <= layer < depth:
            raise UsageError(f"layer={layer}: expected a block index in {-depth}..{depth - 1}")
        self.layer, self.norm = int(layer), bool(norm)
        if refine is not None and finetuned is None:
            raise ValueError("a refine module applies to the fine-tuned branch, which this "
                             "model has not")
        self.refine = refine
        self.decoder = decoder
        # config.json's fit3d block (save_pretrained fills in the model's own fields): where
        # the original weights come from, registry name, statistics, training provenance.
        self.fit3d_block = Fit3DBlock()

    # -- configuration -------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {value!r}")
        needs = {"concat": ("original", "finetuned"), "finetuned": ("finetuned",),
                 "original": ("original",)}[value]
        absent = [n for n in needs if getattr(self, n) is None]
        if absent:
            raise ValueError(f"mode {value!r} needs the {' and '.join(absent)} backbone, "
                             "which this model was loaded without")
        self._mode = value

    @property
    def pad(self) -> str | None:
        return self._pad

    @pad.setter
    def pad(self, value: str | None) -> None:
        if value not in PAD_MODES:
            raise ValueError(f"pad must be None or 'center'; got {value!r}")
        self._pad = value

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) the backbones expect: the ``fit3d`` record's, else timm's config."""
        ref = self.finetuned if self.finetuned is not None else self.original
        mean = self.fit3d_block.mean or ref.pretrained_cfg.get("mean")
        std = self.fit3d_block.std or ref.pretrained_cfg.get("std")
        return tuple(mean), tuple(std)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's data config source (``timm.data.resolve_model_data_config(model)``): the
        backbone's own settings (input size, ...) with the statistics the weights were
        trained with and FiT3D's resizing (bilinear, no crop: :func:`get_transform`)."""
        ref = self.finetuned if self.finetuned is not None else self.original
        mean, std = self.normalization
        return {**ref.pretrained_cfg, "mean": mean, "std": std, "interpolation": "bilinear",
                "crop_pct": 1.0}

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name for :attr:`pretrained_cfg`."""
        return self.pretrained_cfg

    @property
    def out_channels(self) -> int:
        return self.embed_dim * (2 if self._mode == "concat" else 1)

    def extra_repr(self) -> str:
        return (f"mode={self._mode!r}, patch_size={self.patch_size}, embed_dim={self.embed_dim}, "
                f"out_channels={self.out_channels}, pad={self._pad!r}")

    # -- forward -------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputShapeError(f"expected images as a (B, 3, H, W) tensor; got {shape}")
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p == 0 and w % p == 0:
            return x
        if self._pad == "center":
            ph, pw = (-h) % p, (-w) % p
            return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        hs, ws = _nearest_multiples(h, p), _nearest_multiples(w, p)
        raise InputShapeError(
            f"input size {h}x{w} is not a multiple of the patch size {p}; nearest valid sizes: "
            f"{hs[0]}x{ws[0]} or {hs[1]}x{ws[1]} (or load with pad='center')"
        )

    def _branch_features(self, vit: nn.Module, x: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        return block_features(vit, x, self.layer, self.norm)

    def forward_features(self, x: torch.Tensor) -> FiT3DFeatures:
        """Features of both branches (as the mode runs them) plus the CLS token."""
        x = self._prepare(x)
        orig = fine = None
        if self._mode in ("concat", "original"):
            orig, cls = self._branch_features(self.original, x)
        if self._mode in ("concat", "finetuned"):
            fine, fine_cls = self._branch_features(self.finetuned, x)
            if self.refine is not None:
                fine = self.refine(fine)
            if orig is None:
                cls = fine_cls
        if self._mode == "concat":
            features = torch.cat([orig, fine], dim=1)
        else:
            features = orig if orig is not None else fine
        return FiT3DFeatures(features, orig, fine, cls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, out_channels, H/p, W/p)``."""
        return self.forward_features(x).features

    def _branches(self) -> list[nn.Module]:
        return [m for m, used in ((self.original, self._mode in ("concat", "original")),
                                  (self.finetuned, self._mode in ("concat", "finetuned"))) if used]

    @property
    def num_blocks(self) -> int:
        return len(self._branches()[0].blocks)

    def _check_indices(self, indices: int | list[int] | tuple[int, ...] | None) -> None:
        n = self.num_blocks
        if indices is None:
            return
        if isinstance(indices, int):
            if not 1 <= indices <= n:
                raise ValueError(f"indices={indices}: an int takes the last n blocks; expected "
                                 f"1..{n} for this {n}-block backbone")
            return
        bad = [i for i in indices if not -n <= int(i) < n]
        if bad or not len(indices):
            raise ValueError(f"indices={list(indices)}: expected block indices in "
                             f"{-n}..{n - 1} for this {n}-block backbone")

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ):
        """timm's ``VisionTransformer.forward_intermediates`` for the pair.

        Each intermediate is the branches' maps concatenated on the channel axis
        (``[original | finetuned]`` in ``"concat"`` mode, one branch in the others), as are
        the prefix tokens and the final (normed) tokens. ``indices``: the last n blocks for
        an int, those blocks for a list, all for ``None``. Returns what timm returns for the
        same arguments: ``(final, intermediates)``, the intermediates only, or a dict.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC'; got {output_fmt!r}")
        self._check_indices(indices)
        x = self._prepare(x)
        outs = [_branch_intermediates(
            vit, x, indices=indices, return_prefix_tokens=return_prefix_tokens, norm=norm,
            stop_early=stop_early, output_fmt=output_fmt, intermediates_only=intermediates_only,
            attn_mask=attn_mask, is_causal=is_causal)
            for vit in self._branches()]
        axis = 1 if output_fmt == "NCHW" else -1
        merged = {key: [torch.cat(per_layer, dim=-1 if key.endswith("prefix") else axis)
                        for per_layer in zip(*(o[key] for o in outs), strict=True)]
                  for key in ("image_intermediates", "image_intermediates_prefix")
                  if key in outs[0]}
        if not intermediates_only:
            merged["image_features"] = torch.cat([o["image_features"] for o in outs], dim=-1)
        if output_dict:
            return merged
        layers = merged["image_intermediates"]
        if "image_intermediates_prefix" in merged:
            layers = list(zip(layers, merged["image_intermediates_prefix"], strict=True))
        return layers if intermediates_only else (merged["image_features"], layers)

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """timm's per-block feature description (``features_only`` consumers such as
        ``timm.models.FeatureGetterNet`` read it): each block's map has ``out_channels``
        channels at ``1 / patch_size`` of the input."""
        return [{"module": f"blocks.{i}", "num_chs": self.out_channels,
                 "reduction": self.patch_size} for i in range(self.num_blocks)]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's activation checkpointing on both branches (large bases train in less
        memory; outputs and gradients are unchanged)."""
        for vit in (self.original, self.finetuned):
            if vit is not None:
                vit.set_grad_checkpointing(enable)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's pruning, applied to both branches (blocks after the last index dropped)."""
        self._check_indices(indices)
        kept = [vit.prune_intermediate_layers(indices, prune_norm=prune_norm,
                                              prune_head=prune_head)
                for vit in (self.original, self.finetuned) if vit is not None]
        return kept[0]

    # -- persistence ---------------------------------------------------------------------
    def block_to_save(self) -> Fit3DBlock:
        """The ``fit3d`` block config.json gets: the recorded one, with this model's shape,
        feature choice and statistics filled in."""
        mean, std = self.normalization
        refine = spec_of(self.refine) if self.refine is not None else None
        return replace(self.fit3d_block, patch_size=self.patch_size, embed_dim=self.embed_dim,
                       layer=self.layer, norm=self.norm, mean=tuple(mean), std=tuple(std),
                       refine=refine)

    def save_pretrained(self, directory: str | Path, *, include_base: bool | None = None,
                        card: str | None = None) -> Path:
        """Write the repo format (config.json, model.safetensors, [base.safetensors], README.md).

        ``include_base=None`` embeds the original weights only when they have no hub source.
        """
        if self.finetuned is None:
            raise RepoFormatError("nothing to save: this model was loaded without its "
                                  "fine-tuned backbone (mode='original')")
        return save_repo(directory, self.finetuned, self.original, self.block_to_save(),
                         include_base=include_base, card=card, refine=self.refine,
                         decoder=self.decoder)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Save to a temporary directory and upload it as a hub model repo; returns the commit URL.

        Keyword arguments are those of :func:`fit3d_hub.hub.push_directory` plus
        ``include_base``.
        """
        import tempfile

        include_base = kwargs.pop("include_base", None)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, include_base=include_base)
            return push_directory(tmp, repo_id, **kwargs)


def _check_twins(original: nn.Module, finetuned: nn.Module) -> None:
    """Both backbones must produce features on the same grid with the same width."""
    for attr in ("embed_dim", "num_prefix_tokens"):
        a, b = getattr(original, attr, None), getattr(finetuned, attr, None)
        if a != b:
            raise ValueError(f"original and finetuned backbones differ in {attr}: {a} vs {b}")
    if patch_size_of(original) != patch_size_of(finetuned):
        raise ValueError("original and finetuned backbones differ in patch size: "
                         f"{patch_size_of(original)} vs {patch_size_of(finetuned)}")
