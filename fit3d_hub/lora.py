"""LoRA on the q and v slices of a timm ViT's fused ``attn.qkv``, as the authors place it.

3DCorrEnhance (``utils/model.py``, ``finetune.py``): rank 4, no scaling and no dropout,
adapters on the last 4 blocks only, A ``kaiming_uniform_(a=sqrt(5))`` and B zeros (so the
adapted model starts equal to the original), every backbone weight frozen. ``peft`` is not
used: its LoRA adapts a whole ``nn.Linear``, and on timm's fused qkv that would adapt k too.
"""

from __future__ import annotations

import math

import torch
from torch import nn

RANK = 4
BLOCKS = 4


class QVLoRA(nn.Module):
    """``qkv(x)`` plus ``B_q A_q x`` on the q slice and ``B_v A_v x`` on the v slice."""

    def __init__(self, qkv: nn.Linear, rank: int = RANK):
        super().__init__()
        if qkv.out_features % 3:
            raise ValueError(f"expected a fused qkv Linear (3 x dim outputs); got "
                             f"{qkv.out_features} outputs")
        self.qkv = qkv
        self.dim = qkv.in_features
        self.a_q = nn.Linear(self.dim, rank, bias=False)
        self.b_q = nn.Linear(rank, self.dim, bias=False)
        self.a_v = nn.Linear(self.dim, rank, bias=False)
        self.b_v = nn.Linear(rank, self.dim, bias=False)
        for a, b in ((self.a_q, self.b_q), (self.a_v, self.b_v)):
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.zeros_(b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.qkv(x)
        q = self.b_q(self.a_q(x))
        v = self.b_v(self.a_v(x))
        zeros = torch.zeros_like(q)
        return out + torch.cat([q, zeros, v], dim=-1)

    def merged_weight(self) -> torch.Tensor:
        """The plain qkv weight that computes the same function."""
        delta = torch.cat([self.b_q.weight @ self.a_q.weight,
                           torch.zeros_like(self.b_q.weight @ self.a_q.weight),
                           self.b_v.weight @ self.a_v.weight], dim=0)
        return self.qkv.weight + delta


def add_lora(vit: nn.Module, rank: int = RANK, blocks: int = BLOCKS) -> list[QVLoRA]:
    """Freeze ``vit`` and wrap the qkv of its last ``blocks`` blocks; returns the adapters
    (their A and B are the only trainable weights)."""
    if not 1 <= blocks <= len(vit.blocks):
        raise ValueError(f"blocks={blocks}: expected 1..{len(vit.blocks)} for this ViT")
    for p in vit.parameters():
        p.requires_grad_(False)
    adapters = []
    for block in vit.blocks[-blocks:]:
        adapter = QVLoRA(block.attn.qkv, rank)
        block.attn.qkv = adapter
        adapters.append(adapter)
    return adapters


def merge_authors_lora(vit: nn.Module, w_a: list[torch.Tensor], w_b: list[torch.Tensor],
                       source: str) -> nn.Module:
    """Fold the authors' released adapters into ``vit`` in place: ``w_a[2k]``/``w_b[2k]`` are
    q and ``w_a[2k+1]``/``w_b[2k+1]`` v of block ``-(n - k)`` of the last n = len/2 blocks
    (3DCorrEnhance ``finetune.py``: per block, q then v). Shapes are checked against ``vit``;
    a mismatch is one line naming ``source``."""
    if len(w_a) != len(w_b) or not w_a or len(w_a) % 2:
        raise ValueError(f"{source}: expected an even number of w_a_/w_b_ adapter pairs; got "
                         f"{len(w_a)} w_a and {len(w_b)} w_b")
    blocks = len(w_a) // 2
    if blocks > len(vit.blocks):
        raise ValueError(f"{source}: adapters for {blocks} blocks, the backbone has "
                         f"{len(vit.blocks)}")
    rank = int(w_a[0].shape[0])
    for i, (a, b) in enumerate(zip(w_a, w_b, strict=True)):
        if tuple(a.shape) != (rank, vit.embed_dim) or tuple(b.shape) != (vit.embed_dim, rank):
            raise ValueError(f"{source}: adapter {i:03d} has shapes w_a {tuple(a.shape)}, w_b "
                             f"{tuple(b.shape)}; expected ({rank}, {vit.embed_dim}) and "
                             f"({vit.embed_dim}, {rank}) for this backbone")
    adapters = add_lora(vit, rank, blocks)
    with torch.no_grad():
        for k, adapter in enumerate(adapters):
            adapter.a_q.weight.copy_(w_a[2 * k])
            adapter.b_q.weight.copy_(w_b[2 * k])
            adapter.a_v.weight.copy_(w_a[2 * k + 1])
            adapter.b_v.weight.copy_(w_b[2 * k + 1])
    return merge_lora(vit)


def merge_lora(vit: nn.Module) -> nn.Module:
    """Fold every adapter into its qkv weight, in place: a plain timm ViT again (what the
    repo format stores and plain timm loads)."""
    for block in vit.blocks:
        adapter = block.attn.qkv
        if isinstance(adapter, QVLoRA):
            with torch.no_grad():
                adapter.qkv.weight.copy_(adapter.merged_weight())
            block.attn.qkv = adapter.qkv
    return vit
