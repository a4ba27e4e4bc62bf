"""Model cards: ``model_cards/`` template + per-backbone metadata -> a hub README.md.

The paper's figures are labelled as the paper's; figures measured by ``eval/`` come from a
results JSON and are labelled as measured here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from fit3d_hub.errors import RepoFormatError
from fit3d_hub.jsonio import read_json_object
from fit3d_hub.registry import REGISTRY
from fit3d_hub.repo_format import RepoConfig

CARD_PACKAGE = "fit3d_hub.model_cards"
TASK_TYPES = {"semantic-segmentation": "image-segmentation", "depth-estimation": "depth-estimation",
              "correspondence": "keypoint-matching"}
METRIC_TYPES = {"mIoU": "mean_iou", "mAcc": "mean_accuracy", "aAcc": "accuracy", "RMSE": "rmse",
                "AbsRel": "abs_rel", "delta1": "delta1", "delta2": "delta2", "delta3": "delta3",
                "APE": "ape", "PCDP@0.05": "pcdp", "PCDP@0.1": "pcdp", "PCDP@0.2": "pcdp"}
VARIANTS = ("concat", "finetuned", "original")
BASELINES = ("zero-motion", "identity")
"""Rows that use no learned features (eval.correspondence reports them beside the model's)."""
PAPER_SOURCE = "FiT3D paper (Yue et al., ECCV 2024)"
MEASURED_SOURCE = "measured with fit3d-hub"
PROJECT_URL = "https://pypi.org/project/fit3d-hub/"


@dataclass(frozen=True)
class Result:
    """One measured figure from a results JSON."""

    task: str
    dataset: str
    dataset_name: str
    metric: str
    value: float
    variant: str = "concat"
    protocol: str = "unspecified"
    """The probe protocol ("paper", "quick"); only "paper" figures compare with the paper's."""


def card_metadata() -> dict[str, Any]:
    """The shipped per-backbone metadata (paper figures, training data, citation)."""
    text = resources.files(CARD_PACKAGE).joinpath("backbones.json").read_text(encoding="utf-8")
    return json.loads(text)


def template_text() -> str:
    return resources.files(CARD_PACKAGE).joinpath("template.md").read_text(encoding="utf-8")


def load_results(path: str | Path) -> list[Result]:
    """Read measured results (``{"results": [{task, dataset, metric, value, variant}, ...]}``)."""
    path = Path(path)
    payload = read_json_object(path, missing="no such results file")
    rows = payload.get("results")
    if not isinstance(rows, list):
        raise RepoFormatError(f"{path}: expected an object with a 'results' list")
    out = []
    for i, row in enumerate(rows):
        where = f"{path}: results[{i}]"
        if not isinstance(row, dict):
            raise RepoFormatError(f"{where}: expected an object")
        for key in ("task", "dataset", "metric"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise RepoFormatError(f"{where}: field {key!r} must be a non-empty string")
        value = row.get("value")
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not numeric or not math.isfinite(value):
            raise RepoFormatError(f"{where}: field 'value' must be a finite number; got {value!r}")
        variant = row.get("variant", "concat")
        if variant not in VARIANTS + BASELINES:
            raise RepoFormatError(f"{where}: field 'variant' must be one of "
                                  f"{', '.join(VARIANTS + BASELINES)}")
        protocol = row.get("protocol") or payload.get("protocol") or "unspecified"
        if not isinstance(protocol, str):
            raise RepoFormatError(f"{where}: field 'protocol' must be a string")
        out.append(Result(row["task"], row["dataset"], row.get("dataset_name") or row["dataset"],
                          row["metric"], float(value), variant, protocol))
    return out


def _eval_result(task: str, dataset: str, dataset_name: str, metric: str, value: float,
                 source: str, source_url: str | None, label: str) -> EvalResult:
    return EvalResult(
        task_type=TASK_TYPES.get(task, task), task_name=f"{task} (linear probe)"
        if task != "correspondence" else task,
        dataset_type=dataset, dataset_name=dataset_name,
        metric_type=METRIC_TYPES.get(metric, metric.lower()), metric_name=f"{metric} ({label})",
        metric_value=value, source_name=source, source_url=source_url,
    )


def render_card(config: RepoConfig, *, results: list[Result] | None = None,
                repo_id: str | None = None, results_source: str | None = None) -> str:
    """The README.md of a FiT3D repo described by ``config``."""
    meta = card_metadata()
    fit3d = config.fit3d
    name = fit3d.get("name")
    spec = REGISTRY.get(name) if name else None
    paper = meta["paper"]
    paper_rows = meta["backbones"].get(name, {}).get("paper_results", []) if name else []
    measured = list(results or [])
    base_model = fit3d.get("base_model") or (spec.base_model if spec else None)
    base = fit3d.get("base")
    display = spec.display_name if spec else config.architecture
    license_ = (spec.license if spec else None) or config.pretrained_cfg.get("license") or "other"
    model_name = repo_id.split("/")[-1] if repo_id else f"fit3d-{name or config.architecture}"

    training = fit3d.get("training") or {}
    from_authors = training.get("release") == "authors"
    # The paper's figures describe the authors' weights: they enter the model-index only for
    # those; other weights show them in the text as the reference they are.
    evals = [_eval_result(r["task"], r["dataset"], r["dataset_name"], r["metric"], r["fit3d"],
                          PAPER_SOURCE, paper["url"], "paper, concat")
             for r in (paper_rows if from_authors else [])]
    evals += [_eval_result(r.task, r.dataset, r.dataset_name, r.metric, r.value,
                           results_source or MEASURED_SOURCE, PROJECT_URL, f"measured, {r.variant}")
              for r in measured if r.variant in VARIANTS]  # baselines are not the model's
    card_data = ModelCardData(
        library_name="fit3d-hub",
        pipeline_tag="image-feature-extraction",
        license=license_,
        base_model=f"timm/{base_model}" if base_model else None,
        datasets=meta["datasets"] if from_authors else (training.get("datasets") or None),
        tags=["fit3d", "timm", "vision-transformer", "3d-aware", "feature-extraction"],
        model_name=model_name,
        eval_results=evals or None,
    )
    if base:
        base_line = f"`{base['repo_id']}` (`{base.get('filename') or 'model.safetensors'}`)"
    else:
        base_line = "embedded in this repo (`base.safetensors`)"
    if from_authors:
        training_line = f"{meta['training_data']}; weights from `{training.get('source')}`"
    elif training:
        training_line = ", ".join(f"{k}: {v}" for k, v in sorted(training.items()))
    else:
        training_line = "not recorded"
    # A measured figure stands beside the paper's only when the paper's protocol produced it.
    comparable = {(r.task, r.dataset, r.metric): r.value for r in measured
                  if r.protocol == "paper" and r.variant == "concat"}
    paper_rows = [{**row, "measured": comparable.get((row["task"], row["dataset"],
                                                      row["metric"]))} for row in paper_rows]
    card = ModelCard.from_template(
        card_data,
        template_str=template_text(),
        title=f"FiT3D {display}",
        display_name=display,
        load_id=repo_id or name or "<repo id or directory>",
        architecture=config.architecture,
        patch_size=fit3d.get("patch_size"),
        embed_dim=fit3d.get("embed_dim"),
        out_channels=2 * int(fit3d.get("embed_dim") or 0),
        mean=tuple(fit3d.get("mean") or ()),
        std=tuple(fit3d.get("std") or ()),
        license=license_,
        base_line=base_line,
        training_line=training_line,
        paper=paper,
        paper_rows=paper_rows,
        from_authors=from_authors,
        measured_rows=measured,
        measured_source=results_source,
    )
    return str(card)
