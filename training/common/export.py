"""The end of every backbone-training run: the trained ViT (and any module the method adds)
written as a repo in the project's format, with its provenance and a run summary."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from fit3d_hub import FiT3D
from fit3d_hub.atomic import write_text_atomic
from fit3d_hub.methods import get_method
from fit3d_hub.schema import Fit3DBlock

SUMMARY_NAME = "training_summary.json"


def provenance(command: str, *, method: str, backbone: str, scenes: list[str], views: int,
               summary: dict, hyperparameters: dict, mixed_precision: str) -> dict[str, Any]:
    """The ``fit3d.training`` block of the exported config.json: who trained the weights
    (``command``), on what, with which settings."""
    spec = get_method(method)
    record: dict[str, Any] = {"method": f"{spec.title} (fit3d-hub {command})"}
    if method != "fit3d":
        record["paper"] = f"{spec.paper.authors.split(',')[0].split()[-1]} et al., " \
                          f"{spec.paper.venue}"
    record.update(backbone=backbone, scenes=scenes, views=views, steps=summary["steps"],
                  hyperparameters=hyperparameters, mixed_precision=mixed_precision,
                  final_loss=summary["final_loss"])
    return record


def write_summary(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def export_repo(output: Path, teacher: FiT3D | None, finetuned: nn.Module, *, method: str,
                training: dict, summary: dict, refine: nn.Module | None = None,
                decoder: nn.Module | None = None, block: Fit3DBlock | None = None,
                log: Callable[[str], None] = print) -> FiT3D:
    """Write ``output`` as a repo: ``teacher``'s original branch beside ``finetuned`` (and
    ``refine``), or, without a teacher, ``finetuned`` alone with its ``decoder`` (a GMAE
    encoder; ``block`` describes it); ``fit3d.method``/``fit3d.training`` recorded, plus
    ``training_summary.json`` (``summary`` with the run's config). Call on the main process
    only."""
    extra = {"refine": refine.eval().float() if refine is not None else None,
             "decoder": decoder.eval().float() if decoder is not None else None}
    if teacher is None:
        model = FiT3D(None, finetuned.eval().float(), mode="finetuned", **extra)
        model.fit3d_block = replace(block, method=method, training=training)
    else:
        model = FiT3D(teacher.original, finetuned.eval().float(), **extra)
        model.fit3d_block = replace(teacher.fit3d_block, method=method, training=training)
    model.save_pretrained(output)
    write_summary(output / SUMMARY_NAME, summary)
    log(f"wrote {output} ({summary['steps']} steps, final loss "
        f"{summary['final_loss']:.4f}); load it with fit3d_hub.load_fit3d({str(output)!r})")
    return model


def owned_run(output: str | Path, work: Callable[[Any], dict], *, command: str,
              settings: dict, resume: bool, overwrite: bool,
              log: Callable[[str], None] = print, **session: Any) -> dict:
    """``work(accelerator)`` in an accelerator session (``session``: its arguments) that
    owns ``output`` (:func:`fit3d_hub.runs.claim_output`); ``--resume`` of a run that
    finished returns its summary without running anything."""
    from fit3d_hub.distributed import accelerator_session
    from fit3d_hub.runs import claim_output
    from training.common.loop import CHECKPOINTS

    with accelerator_session(**session) as accelerator, \
            claim_output(output, command=command, settings=settings, resume=resume,
                         checkpoints=Path(output) / CHECKPOINTS, overwrite=overwrite,
                         accelerator=accelerator) as claim:
        if claim.finished:
            return finished_summary(Path(output), claim, log)
        summary = work(accelerator)
        claim.finish()
        return summary


def finished_summary(output: Path, claim: Any, log: Callable[[str], None] = print) -> dict:
    """What ``--resume`` of a finished run returns (``claim``: its
    :class:`~fit3d_hub.runs.RunClaim`): its summary, with nothing changed."""
    if claim.main:
        log(f"{output}: this run finished ({claim.record.get('finished_at', 'earlier')}) "
            "with these settings; nothing to do")
    try:
        return json.loads((output / SUMMARY_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def run_settings(run: Any) -> dict:
    """A run's flags as its ownership record hashes them: how it runs (resuming, starting
    over, where the cache is) left out."""
    from dataclasses import asdict

    skip = {"resume", "overwrite", "cache_dir", "workers"}
    return {k: v for k, v in asdict(run).items() if k not in skip}
