"""Dataset readers for the linear probes: each returns images with labels and/or depth.

``--data FORMAT:PATH`` with FORMAT one of ``ade20k``, ``voc``, ``nyu``, ``scannetpp``,
``kitti``, ``synthetic``. Layouts:

- ade20k: ``images/{training,validation}/*.jpg``, ``annotations/{training,validation}/*.png``
  (0 = other, ignored; classes shift down by one: 150 classes).
- voc: ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` (palette indices, 255 ignored),
  ``ImageSets/Segmentation/{train,val}.txt`` (21 classes).
- nyu: ``nyu_depth_v2_labeled.mat`` with ``splits.mat`` (trainNdxs/testNdxs, 1-based), or
  folders ``{train,test}/{image,label,depth}/<stem>.png`` (depth: 16-bit millimetres);
  labels 1..13 with 0 ignored (the authors' 13-class NYUv2; ``--num-classes`` for others:
  the .mat's raw labels need mapping first).
- scannetpp: the authors' processed evaluation data (``images/{training,validation}/*.JPG``
  with ``annotations/{training,validation}/<stem>.png``, and ``scannetpp_{train,val}.txt``
  lines ``<image> <depth png>``), or ``splits/{train,val}.txt`` of scene ids with
  ``<scene>/images/*``, ``<scene>/semantics/<stem>.png``, ``<scene>/depth/<stem>.png``. Labels
  1..100 with 0 ignored (mmseg's reduce_zero_label), depth in mm, range up to 20 m.
- kitti: ``eigen_train_files.txt`` / ``eigen_test_files.txt`` with lines
  ``<rgb path> <depth path> [focal]`` relative to PATH; sparse 16-bit depth PNG (/256 m).
- synthetic: scene folders from ``scenes.synthetic`` (labels and depth); every 4th
  view is validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fit3d_hub.errors import FiT3DError

IGNORE = 255


class DatasetError(FiT3DError, ValueError):
    """A missing or malformed dataset file; the message names it."""


@dataclass(frozen=True)
class Item:
    image: Path | int  # a file, or an index into an in-memory array (NYU .mat)
    label: Path | int | None = None
    depth: Path | int | None = None


DISPLAY_NAMES = {"ade20k": "ADE20K", "pascal_voc": "Pascal VOC 2012", "nyuv2": "NYUv2",
                 "scannetpp": "ScanNet++", "kitti": "KITTI", "synthetic": "synthetic scenes"}
"""Dataset ids as the model cards' paper figures name them, and their display names."""


@dataclass
class ProbeDataset:
    name: str
    """The dataset id (``DISPLAY_NAMES``), which results JSONs and model cards use."""
    train: list[Item]
    val: list[Item]
    num_classes: int = 0
    min_depth: float = 1e-3
    max_depth: float = 10.0
    depth_scale: float = 1000.0  # PNG units per metre
    label_offset: int = 0  # subtracted from stored labels (ADE20K: 1)
    ignore_zero: bool = False  # stored 0 means "ignore"
    arrays: dict | None = None  # NYU .mat: "images", "labels", "depths"

    @property
    def display_name(self) -> str:
        return DISPLAY_NAMES.get(self.name, self.name)

    def items_for(self, task: str) -> tuple[list[Item], list[Item]]:
        """(train, val) items that carry what ``task`` needs: labels (seg) or depth."""
        key = "label" if task == "seg" else "depth"
        if task == "seg" and self.num_classes < 2:
            raise DatasetError(f"{self.name}: no segmentation labels")
        train = [i for i in self.train if getattr(i, key) is not None]
        val = [i for i in self.val if getattr(i, key) is not None]
        if not train or not val:
            raise DatasetError(f"{self.name}: no {'labels' if task == 'seg' else 'depth maps'} "
                               f"({len(train)} training, {len(val)} validation images have them)")
        return train, val

    def load(self, item: Item) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(H, W, 3) uint8 image, (H, W) int64 labels (IGNORE = ignore), (H, W) depth in m."""
        if isinstance(item.image, int):
            a = self.arrays
            image = a["images"][item.image]
            label = a["labels"][item.image].astype(np.int64) if a.get("labels") is not None \
                else None
            depth = a["depths"][item.image].astype(np.float32)
        else:
            image = _image(item.image)
            label = _png(item.label).astype(np.int64) if item.label else None
            depth = _png(item.depth).astype(np.float32) / self.depth_scale if item.depth \
                else None
        if label is not None:
            zero = label == 0
            label = label - self.label_offset
            if self.ignore_zero:
                label[zero] = IGNORE
            label[(label < 0) | (label >= max(self.num_classes, 1))] = IGNORE
        for name, arr in (("label", label), ("depth", depth)):
            if arr is not None and arr.shape != image.shape[:2]:
                raise DatasetError(f"{item.label if name == 'label' else item.depth}: {name} is "
                                   f"{arr.shape[1]}x{arr.shape[0]}, image "
                                   f"{image.shape[1]}x{image.shape[0]}")
        return image, label, depth


def _image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file is missing") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"{path}: not a readable image ({err})") from None


def _png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file is missing") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"{path}: not a readable PNG ({err})") from None


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{path}: missing ({what})")
    return path


def _stems(listing: Path) -> list[str]:
    return [ln.strip() for ln in _need(listing, "split list").read_text().splitlines()
            if ln.strip()]


def _listed_pairs(listing: Path, expected: str) -> list[tuple[str, str]]:
    """(first, second) of each non-empty line of a split list; a short line is named."""
    pairs = []
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise DatasetError(f"{listing}:{n}: expected {expected}")
        pairs.append((parts[0], parts[1]))
    return pairs


def ade20k(root: Path) -> ProbeDataset:
    def split(name: str) -> list[Item]:
        images = sorted(_need(root / "images" / name, "ADE20K images").glob("*.jpg"))
        return [Item(p, root / "annotations" / name / f"{p.stem}.png") for p in images]

    return ProbeDataset("ade20k", split("training"), split("validation"), num_classes=150,
                        label_offset=1, ignore_zero=True)


def voc(root: Path) -> ProbeDataset:
    def split(name: str) -> list[Item]:
        return [Item(root / "JPEGImages" / f"{s}.jpg", root / "SegmentationClass" / f"{s}.png")
                for s in _stems(root / "ImageSets" / "Segmentation" / f"{name}.txt")]

    return ProbeDataset("pascal_voc", split("train"), split("val"), num_classes=21)


def nyu(root: Path, num_classes: int = 13) -> ProbeDataset:
    mat = root / "nyu_depth_v2_labeled.mat"
    if mat.exists():
        import h5py

        try:
            with h5py.File(mat, "r") as fh:
                # MATLAB v7.3 stores arrays transposed: (N, C, W, H) -> (N, H, W, C)
                arrays = {"images": np.transpose(fh["images"][()], (0, 3, 2, 1)),
                          "depths": np.transpose(fh["depths"][()], (0, 2, 1)),
                          "labels": np.transpose(fh["labels"][()], (0, 2, 1))}
            with h5py.File(_need(root / "splits.mat", "NYUv2 train/test split"), "r") as fh:
                train = [int(i) - 1 for i in np.ravel(fh["trainNdxs"][()])]
                test = [int(i) - 1 for i in np.ravel(fh["testNdxs"][()])]
        except (OSError, KeyError) as err:
            raise DatasetError(f"{mat}: not the labelled NYUv2 .mat (v7.3/HDF5) or its "
                               f"splits.mat ({err})") from None
        make = lambda ids: [Item(i, i, i) for i in ids]  # noqa: E731
        return ProbeDataset("nyuv2", make(train), make(test), num_classes=num_classes,
                            label_offset=1, ignore_zero=True, arrays=arrays)

    def split(name: str) -> list[Item]:
        images = sorted(_need(root / name / "image", "NYUv2 images").glob("*.png"))
        return [Item(p, root / name / "label" / p.name, root / name / "depth" / p.name)
                for p in images]

    return ProbeDataset("nyuv2", split("train"), split("test"), num_classes=num_classes,
                        label_offset=1, ignore_zero=True)


def scannetpp(root: Path, num_classes: int = 100) -> ProbeDataset:
    if (root / "images" / "training").is_dir():
        return _scannetpp_authors(root, num_classes)

    def split(name: str) -> list[Item]:
        items = []
        for scene in _stems(root / "splits" / f"{name}.txt"):
            folder = _need(root / scene / "images", f"images of scene {scene}")
            for p in sorted(folder.iterdir()):
                items.append(Item(p, root / scene / "semantics" / f"{p.stem}.png",
                                  root / scene / "depth" / f"{p.stem}.png"))
        return items

    return ProbeDataset("scannetpp", split("train"), split("val"), num_classes=num_classes,
                        max_depth=20.0, label_offset=1, ignore_zero=True)


def _scannetpp_authors(root: Path, num_classes: int) -> ProbeDataset:
    """The authors' processed ScanNet++ evaluation data (mmseg folders + depth lists)."""

    def split(folder: str, listing: str) -> list[Item]:
        depth_of = {}
        if (root / listing).is_file():
            for image, depth in _listed_pairs(root / listing, "'<image path> <depth path>'"):
                if depth != "None":
                    depth_of[(root / image.lstrip("/")).resolve()] = root / depth.lstrip("/")
        images = sorted(_need(root / "images" / folder, "ScanNet++ images").glob("*.JPG"))
        items = [Item(p, root / "annotations" / folder / f"{p.stem}.png",
                      depth_of.pop(p.resolve(), None)) for p in images]
        items += [Item(image, None, depth) for image, depth in sorted(depth_of.items())]
        return items

    return ProbeDataset("scannetpp", split("training", "scannetpp_train.txt"),
                        split("validation", "scannetpp_val.txt"), num_classes=num_classes,
                        max_depth=20.0, label_offset=1, ignore_zero=True)


def kitti(root: Path) -> ProbeDataset:
    def split(name: str) -> list[Item]:
        listing = _need(root / f"eigen_{name}_files.txt", "KITTI Eigen split")
        return [Item(root / rgb, None, root / depth) for rgb, depth in
                _listed_pairs(listing, "'<rgb path> <depth path> [focal]'")]

    return ProbeDataset("kitti", split("train"), split("test"), max_depth=80.0,
                        depth_scale=256.0)


def synthetic(root: Path) -> ProbeDataset:
    from scenes.load import load_scene, scene_paths
    from scenes.types import SceneError

    train, val = [], []
    try:
        for path in scene_paths(root):
            for i, f in enumerate(load_scene(path).frames):
                (val if i % 4 == 0 else train).append(Item(f.image_path, f.label_path,
                                                           f.depth_path))
    except SceneError as err:
        raise DatasetError(str(err)) from None
    return ProbeDataset("synthetic", train, val, num_classes=7, label_offset=1,
                        ignore_zero=True)


READERS = {"ade20k": ade20k, "voc": voc, "nyu": nyu, "scannetpp": scannetpp, "kitti": kitti,
           "synthetic": synthetic}


def open_dataset(spec: str) -> ProbeDataset:
    """``FORMAT:PATH`` -> a dataset; errors name what is missing."""
    fmt, sep, path = spec.partition(":")
    if not sep or fmt not in READERS:
        raise DatasetError(f"--data must be FORMAT:PATH with FORMAT one of "
                           f"{', '.join(READERS)}; got {spec!r}")
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"{root}: dataset folder does not exist")
    data = READERS[fmt](root)
    if not data.train or not data.val:
        raise DatasetError(f"{root}: the {fmt} layout yielded {len(data.train)} training and "
                           f"{len(data.val)} validation images")
    return data
