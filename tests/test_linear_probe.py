"""Linear probes: dataset layouts, a short probe beating chance, cache vs. no-cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from eval.datasets import IGNORE, DatasetError, open_dataset
from eval.linear_probe import main as probe_main
from eval.linear_probe import train_probe
from eval.metrics import confusion_matrix, depth_metrics, segmentation_metrics
from eval.protocols import quick_depth, quick_seg
from fit3d_hub import FiT3D, load_fit3d
from fit3d_hub.results import load_results


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _rgb(h=12, w=16):
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_ade20k_layout_shifts_labels_and_ignores_zero(tmp_path):
    for split in ("training", "validation"):
        _png(tmp_path / "images" / split / "a.jpg", _rgb())
        _png(tmp_path / "annotations" / split / "a.png", np.array([[0, 1, 150]] * 12, np.uint8)
             .repeat(6, axis=1)[:, :16])
    data = open_dataset(f"ade20k:{tmp_path}")
    _, label, depth = data.load(data.train[0])
    assert depth is None and data.num_classes == 150
    assert label[0, 0] == IGNORE and label[0, 6] == 0 and label[0, 12] == 149


def test_voc_layout(tmp_path):
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    for split, stem in (("train", "2007_000032"), ("val", "2007_000033")):
        (tmp_path / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(stem + "\n")
        _png(tmp_path / "JPEGImages" / f"{stem}.jpg", _rgb())
        _png(tmp_path / "SegmentationClass" / f"{stem}.png", np.full((12, 16), 255, np.uint8))
    data = open_dataset(f"voc:{tmp_path}")
    assert (data.load(data.val[0])[1] == IGNORE).all() and data.num_classes == 21


def test_nyu_folder_and_mat_layouts(tmp_path):
    for split in ("train", "test"):
        _png(tmp_path / "f" / split / "image" / "0001.png", _rgb())
        _png(tmp_path / "f" / split / "label" / "0001.png", np.full((12, 16), 3, np.uint8))
        _png(tmp_path / "f" / split / "depth" / "0001.png", np.full((12, 16), 2500, np.uint16))
    data = open_dataset(f"nyu:{tmp_path / 'f'}")
    _, label, depth = data.load(data.train[0])
    assert label[0, 0] == 2 and depth[0, 0] == pytest.approx(2.5)

    import h5py

    mat = tmp_path / "m"
    mat.mkdir()
    with h5py.File(mat / "nyu_depth_v2_labeled.mat", "w") as fh:
        fh["images"] = np.zeros((3, 3, 16, 12), np.uint8)  # (N, C, W, H) as MATLAB writes
        fh["depths"] = np.full((3, 16, 12), 1.5, np.float32)
        labels = np.zeros((3, 16, 12), np.uint16)
        labels[:, 2, 5] = 7
        fh["labels"] = labels
    with h5py.File(mat / "splits.mat", "w") as fh:
        fh["trainNdxs"] = np.array([[1, 2]])
        fh["testNdxs"] = np.array([[3]])
    data = open_dataset(f"nyu:{mat}")
    image, label, depth = data.load(data.val[0])
    assert image.shape == (12, 16, 3) and label[5, 2] == 6 and label[0, 0] == IGNORE
    assert depth.shape == (12, 16) and len(data.train) == 2


def test_scannetpp_and_kitti_layouts(tmp_path):
    sp = tmp_path / "spp"
    (sp / "splits").mkdir(parents=True)
    (sp / "splits" / "train.txt").write_text("s1\n")
    (sp / "splits" / "val.txt").write_text("s1\n")
    _png(sp / "s1" / "images" / "DSC01.png", _rgb())
    _png(sp / "s1" / "semantics" / "DSC01.png", np.full((12, 16), 4, np.uint8))
    _png(sp / "s1" / "depth" / "DSC01.png", np.full((12, 16), 1200, np.uint16))
    data = open_dataset(f"scannetpp:{sp}")
    assert data.load(data.val[0])[2][0, 0] == pytest.approx(1.2)

    kt = tmp_path / "kitti"
    _png(kt / "rgb" / "0.png", _rgb())
    _png(kt / "gt" / "0.png", np.full((12, 16), 256 * 20, np.uint16))
    for split in ("train", "test"):
        (kt / f"eigen_{split}_files.txt").write_text("rgb/0.png gt/0.png 721.5\n")
    data = open_dataset(f"kitti:{kt}")
    assert data.max_depth == 80.0 and data.load(data.train[0])[2][0, 0] == pytest.approx(20.0)
    (kt / "eigen_test_files.txt").write_text("rgb/0.png\n")
    with pytest.raises(DatasetError, match="eigen_test_files.txt:1: expected"):
        open_dataset(f"kitti:{kt}")


@pytest.mark.parametrize("spec, message", [
    ("nope:/x", "FORMAT:PATH"),
    ("voc:/does/not/exist", "dataset folder does not exist"),
])
def test_bad_specs(spec, message):
    with pytest.raises(DatasetError, match=message):
        open_dataset(spec)


def test_missing_files_are_named(tmp_path):
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    for split in ("train", "val"):
        (tmp_path / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("x\n")
    data = open_dataset(f"voc:{tmp_path}")
    with pytest.raises(DatasetError, match="x.jpg: image file is missing"):
        data.load(data.train[0])


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    from scenes.synthetic import generate

    root = tmp_path_factory.mktemp("probe")
    generate(root / "scenes", scenes=2, views=8, size=48, seed=4)
    return open_dataset(f"synthetic:{root / 'scenes'}")


@pytest.fixture(scope="module")
def probe_model():
    from helpers import tiny_vit

    torch.manual_seed(0)
    return FiT3D(tiny_vit(0), tiny_vit(1))


def test_segmentation_probe_beats_chance(synthetic_data, probe_model):
    metrics, _ = train_probe(probe_model, synthetic_data, "seg",
                             quick_seg(iterations=150, batch_size=4, lr=1e-2, size=56))
    # chance: uniformly random classes on the same validation labels
    gen = torch.Generator().manual_seed(0)
    conf = torch.zeros(7, 7, dtype=torch.long)
    for item in synthetic_data.val:
        _, label, _ = synthetic_data.load(item)
        label = torch.from_numpy(label)
        conf += confusion_matrix(torch.randint(0, 7, label.shape, generator=gen), label, 7)
    chance = segmentation_metrics(conf)
    for variant in ("original", "finetuned", "concat"):
        assert metrics[variant]["mIoU"] > chance["mIoU"] + 5, (variant, metrics, chance)
        assert metrics[variant]["aAcc"] > chance["aAcc"] + 20


def test_depth_probe_beats_the_mean_depth(synthetic_data, probe_model):
    # the authors' head (no BatchNorm, un-normed features, SigLoss after a 100-step scale
    # warm-up) needs a few hundred steps on these tiny random features
    metrics, _ = train_probe(probe_model, synthetic_data, "depth",
                             quick_depth(iterations=400, batch_size=4, lr=1e-2, size=56))
    train_depths = [synthetic_data.load(i)[2] for i in synthetic_data.train]
    mean = float(np.mean([d[d > 0].mean() for d in train_depths]))
    gts = torch.stack([torch.from_numpy(synthetic_data.load(i)[2]) for i in synthetic_data.val])
    constant = depth_metrics(torch.full_like(gts, mean), gts, 1e-3, 10.0)
    assert metrics["concat"]["RMSE"] < constant["RMSE"], (metrics, constant)
    assert metrics["concat"]["delta1"] > constant["delta1"]


def test_cli_writes_results_that_the_card_reads(synthetic_data, probe_model, tmp_path):
    probe_model.save_pretrained(tmp_path / "model")
    scenes = synthetic_data.train[0].image.parents[2]
    out = tmp_path / "seg.json"
    code = probe_main(["--task", "seg", "--data", f"synthetic:{scenes}", "--model",
                       str(tmp_path / "model"), "--iterations", "5", "--batch-size", "2",
                       "--size", "28", "--no-cache", "--output", str(out)])
    assert code == 0
    payload = json.loads(out.read_text())
    assert payload["settings"]["no_cache"] is True and payload["versions"]["torch"]
    rows = load_results(out)
    assert {(r.metric, r.variant) for r in rows} >= {("mIoU", "concat"), ("aAcc", "original")}
    assert load_fit3d(tmp_path / "model").out_channels == 64
