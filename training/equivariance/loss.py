"""The authors' smooth average-precision loss on 3D correspondences (pure functions).

For view-1 point i and view-2 point j with 3D distance below ``positive`` (a positive pair,
cosine similarity ``s_p``), the negatives are the view-2 points farther than ``negative``
from i. Two smoothed APs with one positive each are averaged:

    ap1 = (1 + S(s_p - 1)) / (1 + S(s_p - 1) + sum_k S(s_ik - 1))
    ap2 = (1 + S(1 - s_p)) / (1 + S(1 - s_p) + sum_k S(s_ik - s_p))

with ``S(x) = 1 / (1 + exp(clamp(-x / T, -50, 50)))`` and T = 0.01; the loss is the mean of
``1 - (ap1 + ap2) / 2`` over all positive pairs (3DCorrEnhance ``finetune.py``,
``utils/functions.py``). Points between the thresholds are neither positive nor negative.
"""

from __future__ import annotations

import torch

TEMPERATURE = 0.01
POSITIVE_DISTANCE = 5e-3
NEGATIVE_DISTANCE = 0.1


def clamped_sigmoid(x: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """The authors' sigmoid: the exponent clamped to [-50, 50] (its gradient is zero beyond)."""
    return 1.0 / (1.0 + torch.exp(torch.clamp(-x / temperature, -50.0, 50.0)))


def smooth_ap_loss(desc1: torch.Tensor, desc2: torch.Tensor, distances: torch.Tensor, *,
                   positive: float = POSITIVE_DISTANCE, negative: float = NEGATIVE_DISTANCE,
                   temperature: float = TEMPERATURE) -> torch.Tensor:
    """Mean ``1 - AP`` over the positive pairs.

    Args:
        desc1, desc2: ``(S, C)`` and ``(T, C)`` L2-normalised point features of two views.
        distances: ``(S, T)`` 3D distances between the points (in the scene's units).
    Raises:
        ValueError: no pair is closer than ``positive`` (the mean would be NaN).
    """
    if desc1.dim() != 2 or desc2.dim() != 2 or distances.shape != (len(desc1), len(desc2)):
        raise ValueError(f"expected desc1 (S, C), desc2 (T, C) and distances (S, T); got "
                         f"{tuple(desc1.shape)}, {tuple(desc2.shape)}, "
                         f"{tuple(distances.shape)}")
    rows, cols = torch.nonzero(distances < positive, as_tuple=True)
    if rows.numel() == 0:
        raise ValueError(f"no point pair closer than {positive} in 3D: the views share no "
                         "positive correspondence")
    sim = desc1 @ desc2.T
    s_p = sim[rows, cols]
    s_row = sim[rows]
    negatives = (distances[rows] > negative).to(sim.dtype)
    a1 = clamped_sigmoid(s_p - 1, temperature)
    ap1 = (1 + a1) / (1 + a1 + (clamped_sigmoid(s_row - 1, temperature) * negatives).sum(1))
    a2 = clamped_sigmoid(1 - s_p, temperature)
    ap2 = (1 + a2) / (1 + a2 + (clamped_sigmoid(s_row - s_p[:, None], temperature)
                                * negatives).sum(1))
    return (1 - (ap1 + ap2) / 2).mean()
