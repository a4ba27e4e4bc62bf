"""Model cards: metadata, the paper's figures labelled as the paper's, measured results."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from fit3d_hub import FiT3D, RepoFormatError
from fit3d_hub.cards import card_metadata, render_card
from fit3d_hub.methods import METHODS
from fit3d_hub.registry import FIT3D_RELEASES, REGISTRY, get_spec, registry_config
from fit3d_hub.results import load_results
from fit3d_hub.schema import Fit3DBlock, RepoConfig, read_config


def test_released_backbone_card_carries_paper_figures_as_the_papers():
    card = ModelCard(render_card(registry_config(get_spec("dinov2_small")),
                                 repo_id="someone/fit3d-dinov2-small"))
    data = card.data
    assert data.library_name == "fit3d-hub"
    assert data.pipeline_tag == "image-feature-extraction"
    assert data.license == "apache-2.0"
    assert data.base_model == "timm/vit_small_patch14_dinov2.lvd142m"
    assert data.datasets == ["scannetpp"]
    results = {(r.dataset_name, r.metric_type): r for r in data.eval_results}
    nyu = results[("NYUv2", "mean_iou")]
    assert nyu.metric_value == 67.50 and nyu.source_name.startswith("FiT3D paper")
    assert "paper" in nyu.metric_name
    assert results[("KITTI", "rmse")].metric_value == 2.91
    assert "as reported by the paper" in card.text
    assert "| depth-estimation | ScanNet++ | RMSE | 0.374 | 0.336 | - |" in card.text
    assert 'load_fit3d("someone/fit3d-dinov2-small")' in card.text


def test_dinov2_base_card_is_the_authors_release_without_paper_figures():
    card = ModelCard(render_card(registry_config(get_spec("dinov2_base")),
                                 repo_id="someone/fit3d-dinov2-base"))
    assert card.data.license == "apache-2.0"
    assert card.data.base_model == "timm/vit_base_patch14_dinov2.lvd142m"
    assert card.data.datasets == ["scannetpp"]
    assert not card.data.eval_results  # the paper reports no DINOv2-B figures
    assert "yuanwenyue/FiT3D:dinov2_base_finetuned.pth" in card.text
    assert "Results reported in the paper" not in card.text


def test_mae_card_has_its_license():
    data = ModelCard(render_card(registry_config(get_spec("mae_base")))).data
    assert data.license == "cc-by-nc-4.0"


def test_every_released_backbone_has_card_metadata():
    meta = card_metadata()["backbones"]
    assert set(meta) == set(FIT3D_RELEASES)  # the paper's figures are FiT3D's releases'


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_name_renders_a_card_offline(name):
    """Each release's card names its method, paper and the authors' file; a base's card
    says it has none."""
    spec = REGISTRY[name]
    card = ModelCard(render_card(registry_config(spec)))
    if spec.method is None:
        assert "FiT3D" in card.text  # a base renders as the default method's template
        return
    method = METHODS[spec.method]
    assert method.paper.title in card.text and method.title in card.text
    assert spec.finetuned_file in card.text and spec.base_model in str(card.data.base_model)


def test_measured_results_are_added_and_labelled(tiny_pair, tmp_path):
    FiT3D(*tiny_pair).save_pretrained(tmp_path)
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"results": [
        {"task": "semantic-segmentation", "dataset": "synthetic", "dataset_name": "Synthetic",
         "metric": "mIoU", "value": 41.5, "variant": "concat"},
        {"task": "correspondence", "dataset": "synthetic", "metric": "APE", "value": 3.2,
         "variant": "finetuned"},
    ]}))
    card = ModelCard(render_card(read_config(tmp_path / "config.json"),
                                 results=load_results(results)))
    names = {r.metric_name: r for r in card.data.eval_results}
    assert names["mIoU (measured, concat)"].metric_value == 41.5
    assert names["APE (measured, finetuned)"].source_name == "measured with fit3d-hub"
    assert "Results measured with fit3d-hub" in card.text
    assert "| semantic-segmentation | Synthetic | mIoU | concat | unspecified | 41.5 |" \
        in card.text


def test_measured_figure_beside_the_papers_only_with_the_paper_protocol(tmp_path):
    config = registry_config(get_spec("dinov2_small"))
    rows = [{"task": "semantic-segmentation", "dataset": "nyuv2", "dataset_name": "NYUv2",
             "metric": "mIoU", "value": 67.1, "variant": "concat"},
            {"task": "depth-estimation", "dataset": "kitti", "dataset_name": "KITTI",
             "metric": "RMSE", "value": 2.95, "variant": "concat"}]
    quick, paper = tmp_path / "quick.json", tmp_path / "paper.json"
    quick.write_text(json.dumps({"protocol": "quick", "results": rows}))
    paper.write_text(json.dumps({"protocol": "paper", "results": rows[:1]}))
    text = render_card(config, results=load_results(quick))
    assert "| semantic-segmentation | NYUv2 | mIoU | 65.55 | 67.5 | - |" in text
    assert "| semantic-segmentation | NYUv2 | mIoU | concat | quick | 67.1 |" in text
    text = render_card(config, results=load_results(paper))
    assert "| semantic-segmentation | NYUv2 | mIoU | 65.55 | 67.5 | 67.1 |" in text
    assert "| depth-estimation | KITTI | RMSE | 3.03 | 2.91 | - |" in text


def test_other_weights_do_not_claim_the_papers_results():
    config = RepoConfig("vit_small_patch14_dinov2.lvd142m", {}, {},
                        Fit3DBlock(name="dinov2_small", training={"init": "random"},
                                   patch_size=14, embed_dim=384))
    card = render_card(config)
    assert not ModelCard(card).data.eval_results  # nothing claimed in the model-index
    assert "| semantic-segmentation | NYUv2 | mIoU | 65.55 | 67.5 | - |" in card
    assert "not with the weights in this repo" in card


@pytest.mark.parametrize("payload, message", [
    ("{", "malformed JSON"),
    ('{"rows": []}', "'results' list"),
    ('{"results": [{"task": "t", "dataset": "d", "metric": "m"}]}', "results[0]: field 'value'"),
    ('{"results": [{"task": "t", "dataset": "d", "metric": "m", "value": "NaN"}]}', "'value'"),
    ('{"results": [{"task": "t", "dataset": "", "metric": "m", "value": 1}]}', "'dataset'"),
    ('{"results": [{"task": "t", "dataset": "d", "metric": "m", "value": 1, "variant": "x"}]}',
     "'variant'"),
])
def test_bad_results_file_names_the_field(tmp_path, payload, message):
    path = tmp_path / "r.json"
    path.write_text(payload)
    with pytest.raises(RepoFormatError) as err:
        load_results(path)
    assert str(path) in str(err.value) and message in str(err.value)
