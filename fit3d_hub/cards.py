"""Model cards: ``model_cards/`` template + per-backbone metadata -> a hub README.md.

The paper's figures are labelled as the paper's; figures measured by ``eval/`` come from a
results JSON and are labelled as measured here.
"""

from __future__ import annotations

import html
import json
from dataclasses import fields, replace
from importlib import resources
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from fit3d_hub.methods import get_method
from fit3d_hub.registry import get_spec, is_registered
from fit3d_hub.results import Result
from fit3d_hub.schema import MODES, RepoConfig

CARD_PACKAGE = "fit3d_hub.model_cards"
TASK_TYPES = {"semantic-segmentation": "image-segmentation", "depth-estimation": "depth-estimation",
              "correspondence": "keypoint-matching"}
METRIC_TYPES = {"mIoU": "mean_iou", "mAcc": "mean_accuracy", "aAcc": "accuracy", "RMSE": "rmse",
                "AbsRel": "abs_rel", "delta1": "delta1", "delta2": "delta2", "delta3": "delta3",
                "APE": "ape", "PCDP@0.05": "pcdp", "PCDP@0.1": "pcdp", "PCDP@0.2": "pcdp"}
PAPER_SOURCE = "FiT3D paper (Yue et al., ECCV 2024)"
MEASURED_SOURCE = "measured with fit3d-hub"
PROJECT_URL = "https://pypi.org/project/fit3d-hub/"


def card_metadata() -> dict[str, Any]:
    """The shipped metadata of the authors' FiT3D releases (paper figures per backbone,
    training data); each method's text and paper are in :mod:`fit3d_hub.methods`."""
    text = resources.files(CARD_PACKAGE).joinpath("backbones.json").read_text(encoding="utf-8")
    return json.loads(text)


def template_text() -> str:
    return resources.files(CARD_PACKAGE).joinpath("template.md").read_text(encoding="utf-8")


def _eval_result(task: str, dataset: str, dataset_name: str, metric: str, value: float,
                 source: str, source_url: str | None, label: str) -> EvalResult:
    return EvalResult(
        task_type=TASK_TYPES.get(task, task), task_name=f"{task} (linear probe)"
        if task != "correspondence" else task,
        dataset_type=dataset, dataset_name=dataset_name,
        metric_type=METRIC_TYPES.get(metric, metric.lower()), metric_name=f"{metric} ({label})",
        metric_value=value, source_name=source, source_url=source_url,
    )


def _text(value: object) -> str:
    """A value from a file, safe in the card's Markdown: one line, no table-breaking ``|``,
    HTML escaped (a results file cannot put markup or script into the card)."""
    line = " ".join(str(value).split())
    return html.escape(line, quote=False).replace("|", "\\|").replace("`", "'")


def _safe_result(r: Result) -> Result:
    return replace(r, **{f.name: _text(getattr(r, f.name)) for f in fields(r)
                         if isinstance(getattr(r, f.name), str)})


def render_card(config: RepoConfig, *, results: list[Result] | None = None,
                repo_id: str | None = None, results_source: str | None = None) -> str:
    """The README.md of a FiT3D repo described by ``config``."""
    meta = card_metadata()
    fit3d = config.fit3d
    name = fit3d.name
    spec = get_spec(name) if name and is_registered(name) else None
    method = get_method(fit3d.method)
    paper = method.paper
    # The shipped paper figures are FiT3D's; they describe no other method's weights.
    paper_rows = (meta["backbones"].get(spec.base_name, {}).get("paper_results", [])
                  if spec and fit3d.method == "fit3d" else [])
    measured = [_safe_result(r) for r in results or []]
    base_model = fit3d.base_model or (spec.base_model if spec else None)
    base = fit3d.base
    display = spec.display_name if spec else _text(config.architecture)
    license_ = (spec.license if spec else None) or config.pretrained_cfg.get("license") or "other"
    model_name = _text(repo_id.split("/")[-1] if repo_id else (
        name or f"{fit3d.method}-{config.architecture}"))

    training = fit3d.training
    from_authors = training.get("release") == "authors"
    # the shipped training data and paper figures describe FiT3D's own releases
    fit3d_release = from_authors and fit3d.method == "fit3d"
    # The paper's figures describe the authors' weights: they enter the model-index only for
    # those; other weights show them in the text as the reference they are.
    evals = [_eval_result(r["task"], r["dataset"], r["dataset_name"], r["metric"], r["fit3d"],
                          PAPER_SOURCE, paper.url, "paper, concat")
             for r in (paper_rows if fit3d_release else [])]
    evals += [_eval_result(r.task, r.dataset, r.dataset_name, r.metric, r.value,
                           results_source or MEASURED_SOURCE, PROJECT_URL, f"measured, {r.variant}")
              for r in measured if r.variant in MODES]  # baselines are not the model's
    card_data = ModelCardData(
        library_name="fit3d-hub",
        pipeline_tag="image-feature-extraction",
        license=license_,
        base_model=f"timm/{base_model}" if base_model and method.branches == 2 else None,
        datasets=meta["datasets"] if fit3d_release else (training.get("datasets") or None),
        tags=["fit3d", "timm", "vision-transformer", "3d-aware", "feature-extraction"]
        + ([] if fit3d.method == "fit3d" else [fit3d.method]),
        model_name=model_name,
        eval_results=evals or None,
    )
    if method.branches == 1:
        base_line = "none: the encoder is trained from scratch"
    elif base:
        base_line = f"`{_text(base.repo_id)}` (`{_text(base.filename)}`)"
    else:
        base_line = "embedded in this repo (`base.safetensors`)"
    if fit3d_release:
        training_line = (f"{meta['training_data']}; weights from "
                         f"`{_text(training.get('source'))}`")
    elif from_authors:
        training_line = (f"the authors' release `{_text(training.get('source'))}` "
                         f"({method.title}, {paper.venue})")
    elif training:
        training_line = ", ".join(f"{_text(k)}: {_text(v)}" for k, v in sorted(training.items()))
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
        title=(f"FiT3D {display}" if fit3d.method == "fit3d"
               else f"{display}, {method.title}"),
        method_name=method.title,
        method_text=method.card_text,
        refined=fit3d.refine is not None,
        one_branch=method.branches == 1,
        display_name=display,
        load_id=_text(repo_id or name) if repo_id or name else "<repo id or directory>",
        architecture=_text(config.architecture),
        patch_size=fit3d.patch_size,
        embed_dim=fit3d.embed_dim,
        out_channels=2 * int(fit3d.embed_dim or 0),
        mean=tuple(fit3d.mean or ()),
        std=tuple(fit3d.std or ()),
        license=license_,
        base_line=base_line,
        training_line=training_line,
        paper=paper,
        paper_rows=paper_rows,
        from_authors=from_authors,
        measured_rows=measured,
        measured_source=_text(results_source) if results_source else results_source,
    )
    return str(card)
