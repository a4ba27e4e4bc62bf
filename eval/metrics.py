"""Evaluation metrics as pure functions: segmentation, depth, 3D correspondence."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

PCDP_THRESHOLDS = (0.05, 0.1, 0.2)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """(num_classes, num_classes) counts, rows = ground truth, columns = prediction.

    Pixels labelled ``ignore_index`` (or outside ``[0, num_classes)``) are not counted.
    """
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    index = target[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_metrics(confusion: torch.Tensor) -> dict[str, float]:
    """mIoU, mAcc and aAcc in percent (mmsegmentation's definitions).

    Classes absent from both ground truth and prediction (IoU 0/0) and classes absent from
    the ground truth (accuracy 0/0) are left out of the means, not counted as zero.
    """
    conf = confusion.double()
    tp = conf.diag()
    gt = conf.sum(1)
    union = gt + conf.sum(0) - tp
    iou = tp / union
    acc = tp / gt
    return {"mIoU": float(torch.nanmean(iou) * 100), "mAcc": float(torch.nanmean(acc) * 100),
            "aAcc": float(tp.sum() / gt.sum().clamp_min(1) * 100)}


def depth_metrics(pred: torch.Tensor, gt: torch.Tensor, min_depth: float, max_depth: float
                  ) -> dict[str, float]:
    """RMSE, AbsRel and delta1..3 over the pixels whose ground truth is in the depth range.

    One image (H, W) or a batch (N, H, W); a batch averages the per-image figures, as the
    DINOv2 depth protocol does.
    """
    return mean_rows(depth_metric_rows(pred, gt, min_depth, max_depth))


def mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    """Average per-image metric rows (rows from several processes can be pooled first)."""
    if not rows:
        raise ValueError("no pixel with ground-truth depth inside the evaluation range")
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def depth_metric_rows(pred: torch.Tensor, gt: torch.Tensor, min_depth: float,
                      max_depth: float, masks: torch.Tensor | None = None
                      ) -> list[dict[str, float]]:
    """Per-image depth metrics over pixels with ground truth inside (min, max) and, if
    given, inside ``masks`` (the eigen or Garg crop); images with no such pixel give no row."""
    if pred.dim() == 2:
        pred, gt = pred[None], gt[None]
        masks = masks[None] if masks is not None else None
    rows = []
    for i, (p, g) in enumerate(zip(pred.double(), gt.double(), strict=True)):
        valid = (g > min_depth) & (g < max_depth) & torch.isfinite(g)
        if masks is not None:
            valid &= masks[i].bool()
        if not valid.any():
            continue
        p, g = p[valid].clamp_min(1e-6), g[valid]
        ratio = torch.maximum(p / g, g / p)
        rows.append({"RMSE": float(((p - g) ** 2).mean().sqrt()),
                     "AbsRel": float(((p - g).abs() / g).mean()),
                     **{f"delta{k}": float((ratio < 1.25**k).double().mean() * 100)
                        for k in (1, 2, 3)}})
    return rows


def correspondence_metrics(pred_uv: np.ndarray, gt_uv: np.ndarray, short_side: float,
                           thresholds: Sequence[float] = PCDP_THRESHOLDS) -> dict[str, float]:
    """APE (mean pixel error / short image side, in %) and PCDP@t (% of points whose error is
    below t x short side)."""
    if len(gt_uv) == 0:
        raise ValueError("no correspondences to evaluate")
    err = np.linalg.norm(np.asarray(pred_uv, float) - np.asarray(gt_uv, float), axis=-1)
    rel = err / float(short_side)
    out = {"APE": float(rel.mean() * 100)}
    out.update({f"PCDP@{t:g}": float((rel < t).mean() * 100) for t in thresholds})
    return out


