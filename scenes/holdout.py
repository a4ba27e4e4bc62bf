"""The held-out view rule, shared by both training stages and the evaluation."""

from __future__ import annotations


def training_views(splits: list[str], holdout_every: int = 0,
                   hold_out_test: bool = False) -> list[int]:
    """Indices of the views a stage may train on, given each view's split.

    By default every view trains, ScanNet++'s ``test_frames`` included (the authors' Stage 1
    sees them); ``hold_out_test`` keeps test frames out, and ``holdout_every=k`` every k-th
    view. Should nothing remain, all views train.
    """
    keep = [i for i, split in enumerate(splits)
            if not (hold_out_test and split == "test")
            and not (holdout_every > 0 and i % holdout_every == 0)]
    return keep or list(range(len(splits)))


def without_test_frames(views: list[int], splits: list[str]) -> list[int]:
    """``views`` minus test frames: the authors' Stage 2 has camera records for ``frames``
    only."""
    return [v for v in views if splits[v] != "test"]
