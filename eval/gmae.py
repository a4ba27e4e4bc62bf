"""What a GMAE (or pixel-MAE) encoder and decoder are measured by: reconstruction PSNR on
the masked patches, edge F-score (ODS) against true boundaries, and a linear probe on the
encoder's patch features."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fit3d_hub.gmae import (
    PixelDecoder,
    activate,
    encode_visible,
    patchify,
    random_masking,
    render,
)


@torch.no_grad()
def reconstruct(encoder, decoder, images: torch.Tensor, target: torch.Tensor, ratio: float,
                seed: int, scale_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, L, p*p*3)`` reconstructed patches in [0, 1] and the mask (1 = hidden): the
    Gaussian decoder's render, or the pixel decoder's prediction mapped back from each
    target patch's normalisation (as MAE shows its reconstructions)."""
    patch = int(encoder.patch_embed.patch_size[0])
    length = (images.shape[-2] // patch) * (images.shape[-1] // patch)
    ids_keep, mask, ids_restore = random_masking(len(images), length, ratio,
                                                 torch.Generator().manual_seed(seed),
                                                 images.device)
    tokens = encode_visible(encoder, images, ids_keep)
    truth = patchify(target, patch)
    if isinstance(decoder, PixelDecoder):
        pred = decoder(tokens, ids_restore)
        mean, var = truth.mean(-1, keepdim=True), truth.var(-1, keepdim=True)
        return (pred * (var + 1e-6) ** 0.5 + mean).clamp(0, 1), mask
    rendered, _ = render(activate(decoder(tokens, ids_keep), scale_factor), *images.shape[-2:],
                         "torch")
    return patchify(rendered.clamp(0, 1), patch), mask


def masked_psnr(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR (dB) over the pixels of the masked patches."""
    mse = ((pred - truth).square().mean(-1) * mask).sum() / mask.sum()
    return float(-10 * torch.log10(mse.clamp_min(1e-10)))


def label_boundaries(labels: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` integer labels -> boolean boundaries (a pixel whose right or lower
    neighbour has another label)."""
    edges = torch.zeros_like(labels, dtype=torch.bool)
    edges[:, :, :-1] |= labels[:, :, :-1] != labels[:, :, 1:]
    edges[:, :-1, :] |= labels[:, :-1, :] != labels[:, 1:, :]
    return edges


def sobel(images: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude ``(B, 1, H, W)`` of the channel mean, scaled to [0, 1] per image."""
    x = images.mean(1, keepdim=True)
    k = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    g = torch.sqrt(F.conv2d(padded, k.view(1, 1, 3, 3)) ** 2
                   + F.conv2d(padded, k.t().contiguous().view(1, 1, 3, 3)) ** 2)
    return g / g.flatten(1).amax(1).clamp_min(1e-8).view(-1, 1, 1, 1)


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(mask.float()[:, None], 2 * radius + 1, 1, radius)[:, 0] > 0


def edge_ods(edges: torch.Tensor, truth: torch.Tensor, thresholds: int = 25,
             tolerance: int = 1) -> float:
    """Optimal-dataset-scale F-score: edge maps ``(B, 1, H, W)`` in [0, 1] thresholded at one
    level for the whole set; a predicted edge pixel counts within ``tolerance`` pixels of a
    true one and vice versa (counts pooled over the set, the best level's F)."""
    truth = truth.bool()
    near_truth = _dilate(truth, tolerance)
    best = 0.0
    for t in np.linspace(0.02, 0.98, thresholds):
        pred = edges[:, 0] >= t
        if not pred.any():
            continue
        precision = float((pred & near_truth).sum()) / float(pred.sum())
        recall = float((truth & _dilate(pred, tolerance)).sum()) / max(float(truth.sum()), 1.0)
        if precision + recall > 0:
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


@torch.no_grad()
def patch_features(encoder, images: torch.Tensor) -> torch.Tensor:
    """``(B * L, C)`` final normed patch tokens of unmasked images."""
    patch = int(encoder.patch_embed.patch_size[0])
    length = (images.shape[-2] // patch) * (images.shape[-1] // patch)
    ids = torch.arange(length).expand(len(images), -1)
    return encode_visible(encoder, images, ids)[:, 1:].reshape(-1, encoder.embed_dim)


def patch_labels(labels: torch.Tensor, patch: int) -> torch.Tensor:
    """The majority label of each patch, ``(B * L,)``."""
    b, h, w = labels.shape
    grid = labels.reshape(b, h // patch, patch, w // patch, patch).permute(0, 1, 3, 2, 4)
    flat = grid.reshape(-1, patch * patch)
    return torch.mode(flat, dim=1).values


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                          test_y: torch.Tensor, ridge: float = 1e-2) -> float:
    """Accuracy of a ridge-regression one-vs-all linear classifier (closed form, features
    standardised on the training set): a probe with no training schedule to tune."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    a = torch.cat([(train_x - mean) / std, torch.ones(len(train_x), 1)], 1).double()
    classes = torch.unique(train_y)
    onehot = (train_y[:, None] == classes[None]).double()
    weights = torch.linalg.solve(a.T @ a + ridge * len(a) * torch.eye(a.shape[1],
                                                                        dtype=a.dtype),
                                 a.T @ onehot)
    b = torch.cat([(test_x - mean) / std, torch.ones(len(test_x), 1)], 1).double()
    pred = classes[(b @ weights).argmax(1)]
    return float((pred == test_y).float().mean())
