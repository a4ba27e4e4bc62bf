"""3D correspondence (multiview equivariance): APE and PCDP of nearest-neighbour matching.

    python -m eval.correspondence --model NAME_OR_DIR --scenes PATH [--pairs N] \
        [--max-rotation 120] [--size S] [--output results.json]
    python -m eval.correspondence --model NAME_OR_DIR --stereo DIR [--output results.json]

Ground truth comes from depth and poses (back-projection with an occlusion check against the
other view's depth) or, for rectified stereo, from a disparity map. Features are bilinearly
upsampled to the image, L2-normalised, and every query pixel of view A is matched to its
nearest neighbour (cosine) among all pixels of view B. Reported for the original, fine-tuned
and concatenated features, overall and binned by relative rotation, beside two baselines that
use no learned features: ``zero-motion`` (each pixel predicted to stay where it is, at the same
relative position in view B) and ``identity`` (the same nearest-neighbour matcher on the raw
RGB image, the identity feature map). On a small-baseline stereo pair zero motion beats a
random ViT, so a table without these rows would mislead.

Pairs come from a scene's ``test_frames`` when it has them (ScanNet++), else from all its
frames (``--views`` chooses).
"""

from __future__ import annotations

import itertools
import json
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eval.metrics import PCDP_THRESHOLDS, correspondence_metrics
from fit3d_hub import FiT3D, commandline, get_transform, load_fit3d
from fit3d_hub.atomic import write_text_atomic
from fit3d_hub.commandline import option
from fit3d_hub.distributed import accelerator_session
from fit3d_hub.errors import UsageError
from fit3d_hub.results import BASELINES, Result
from fit3d_hub.sampling import sample_features
from fit3d_hub.schema import MODES
from scenes.cameras import relative_rotation_degrees
from scenes.correspondence import correspondences
from scenes.io import load_depth, load_rgb
from scenes.load import load_scene, scene_paths
from scenes.types import SceneError

ROWS = MODES + BASELINES
VIEW_CHOICES = ("auto", "all", "test")
ROTATION_BINS = (0, 30, 60, 90, 120, 180)


@dataclass
class PairResult:
    rotation: float
    short_side: float
    gt_uv: np.ndarray
    pred_uv: dict[str, np.ndarray]


def nearest_neighbours(features_a: torch.Tensor, features_b: torch.Tensor, uv_a: np.ndarray,
                       size_a: tuple[int, int], size_b: tuple[int, int],
                       chunk: int = 512) -> np.ndarray:
    """For each query pixel of A, the pixel centre of B whose feature is most similar.

    ``size_*`` are (width, height) of the images; B's features are upsampled to its image.
    """
    wb, hb = size_b
    dense_b = F.interpolate(features_b[None].float(), size=(hb, wb), mode="bilinear",
                            align_corners=False)[0]
    dense_b = F.normalize(dense_b.reshape(dense_b.shape[0], -1), dim=0)  # (C, H*W)
    query = sample_features(features_a.float(), uv_a, *size_a)  # (N, C), normalised
    best = torch.cat([(query[i:i + chunk] @ dense_b).argmax(dim=1)
                      for i in range(0, len(query), chunk)])
    best = best.cpu().numpy()
    return np.stack([best % wb + 0.5, best // wb + 0.5], -1)


def variant_maps(out, variant: str) -> torch.Tensor:
    """The (C, h, w) map of a mode: ``concat`` is the model's own output."""
    return (out.features if variant == "concat" else getattr(out, variant))[0]


def evaluate_pair(model: FiT3D, transform, image_a: np.ndarray, image_b: np.ndarray,
                  uv_a: np.ndarray, uv_b: np.ndarray, rotation: float) -> PairResult:
    device = next(model.parameters()).device
    with torch.inference_mode():
        outs = [model.forward_features(transform(im).unsqueeze(0).to(device))
                for im in (image_a, image_b)]
    size_a = (image_a.shape[1], image_a.shape[0])
    size_b = (image_b.shape[1], image_b.shape[0])
    preds = {v: nearest_neighbours(variant_maps(outs[0], v), variant_maps(outs[1], v), uv_a,
                                   size_a, size_b) for v in MODES}
    preds["zero-motion"] = uv_a * (np.array(size_b, float) / np.array(size_a, float))
    preds["identity"] = nearest_neighbours(*(torch.from_numpy(im).permute(2, 0, 1)
                                             for im in (image_a, image_b)), uv_a, size_a, size_b)
    return PairResult(rotation, float(min(size_b)), uv_b, preds)


def select_pairs(w2cs: list[np.ndarray], count: int, max_rotation: float, seed: int
                 ) -> list[tuple[int, int, float]]:
    """Up to ``count`` view pairs (i < j) within ``max_rotation`` degrees, seeded."""
    pairs = [(i, j, relative_rotation_degrees(w2cs[i], w2cs[j]))
             for i in range(len(w2cs)) for j in range(i + 1, len(w2cs))]
    pairs = [p for p in pairs if p[2] <= max_rotation]
    rng = np.random.default_rng(seed)
    keep = rng.permutation(len(pairs))[:count]
    return [pairs[k] for k in sorted(keep)]


def evaluation_views(frames, views: str) -> list[int]:
    """Indices of the frames pairs are drawn from: ``test`` frames, ``all``, or ``auto`` (the
    test frames where a scene has them)."""
    tests = [i for i, f in enumerate(frames) if f.split == "test"]
    if views == "test" or (views == "auto" and len(tests) >= 2):
        return tests
    return list(range(len(frames)))


def scene_tasks(scene_dirs: list[Path], pairs: int, max_rotation: float, seed: int,
                views: str = "auto") -> list[tuple[Path, int, int, float]]:
    """(scene, view a, view b, rotation) for every pair to evaluate, in a fixed order."""
    tasks = []
    for scene_dir in scene_dirs:
        scene = load_scene(scene_dir)
        chosen = evaluation_views(scene.frames, views)
        if len(chosen) < 2:
            raise SceneError(f"{scene_dir}: needs at least two {views} frames to pair; has "
                             f"{len(chosen)}")
        missing = [scene.frames[i].name for i in chosen if scene.frames[i].depth_path is None]
        if missing:
            raise SceneError(f"{scene_dir}: correspondence needs a depth map for every frame "
                             f"it pairs; none for {', '.join(missing[:3])}")
        w2cs = [scene.frames[i].camera.w2c for i in chosen]
        tasks += [(scene_dir, chosen[i], chosen[j], rot)
                  for i, j, rot in select_pairs(w2cs, pairs, max_rotation, seed)]
    return tasks


def run_scene_task(model: FiT3D, task: tuple[Path, int, int, float], queries: int, seed: int,
                   size: int | None = None) -> PairResult | None:
    """One view pair; ``None`` when the views share fewer than 10 visible points."""
    scene_dir, i, j, rot = task
    scene = load_scene(scene_dir)
    fa, fb = scene.frames[i], scene.frames[j]
    matches = correspondences(fa.camera, load_depth(fa.depth_path, fa.depth_scale),
                              fb.camera, load_depth(fb.depth_path, fb.depth_scale))
    if len(matches.uv_a) < 10:
        return None
    pick = np.random.default_rng([seed, i, j]).permutation(len(matches.uv_a))[:queries]
    return evaluate_pair(model, get_transform(model, size), load_rgb(fa.image_path),
                         load_rgb(fb.image_path), matches.uv_a[pick], matches.uv_b[pick], rot)


def stereo_pair_results(model: FiT3D, folder: Path, queries: int, seed: int,
                        size: int | None = None) -> list[PairResult]:
    """Rectified pairs ``<name>_left.png``, ``<name>_right.png``, ``<name>_disp.npy``
    (left-image disparity in pixels; 0 or non-finite = unknown)."""
    lefts = sorted(folder.glob("*_left.png"))
    if not lefts:
        raise SceneError(f"{folder}: no '<name>_left.png' stereo images")
    transform = get_transform(model, size)
    rng = np.random.default_rng(seed)
    results = []
    for left in lefts:
        stem = left.name[: -len("_left.png")]
        right, disp_path = folder / f"{stem}_right.png", folder / f"{stem}_disp.npy"
        for needed in (right, disp_path):
            if not needed.is_file():
                raise SceneError(f"{needed}: missing (stereo pair {stem!r})")
        disp = np.load(disp_path, allow_pickle=False).astype(np.float64)
        image_l, image_r = load_rgb(left), load_rgb(right)
        if disp.shape != image_l.shape[:2]:
            raise SceneError(f"{disp_path}: disparity is {disp.shape[1]}x{disp.shape[0]} but "
                             f"{left.name} is {image_l.shape[1]}x{image_l.shape[0]}")
        ys, xs = np.nonzero(np.isfinite(disp) & (disp > 0))
        uv_l = np.stack([xs + 0.5, ys + 0.5], -1)
        uv_r = uv_l - np.stack([disp[ys, xs], np.zeros(len(xs))], -1)
        inside = uv_r[:, 0] > 0
        pick = rng.permutation(int(inside.sum()))[:queries]
        results.append(evaluate_pair(model, transform, image_l, image_r, uv_l[inside][pick],
                                     uv_r[inside][pick], 0.0))
    return results


CURVE_THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2)


def pooled(results: list[PairResult], thresholds=PCDP_THRESHOLDS) -> dict[str, dict]:
    """Metrics per variant over all query points of ``results`` (errors / short side)."""
    gt = np.concatenate([r.gt_uv / r.short_side for r in results])
    return {v: correspondence_metrics(np.concatenate([r.pred_uv[v] / r.short_side
                                                      for r in results]), gt, 1.0, thresholds)
            for v in ROWS}


def summarise(results: list[PairResult]) -> dict:
    """Pooled metrics per variant: overall, per rotation bin, and PCDP curves."""
    if not results:
        raise SceneError("no view pair with enough correspondences to evaluate")
    curves = pooled(results, CURVE_THRESHOLDS)
    return {
        "pairs": len(results),
        "overall": pooled(results),
        "by_rotation": {f"{lo}-{hi}": pooled(inside)
                        for lo, hi in itertools.pairwise(ROTATION_BINS)
                        if (inside := [r for r in results if lo <= r.rotation < hi])},
        "curves": {v: {k.split("@")[1]: val for k, val in m.items() if "@" in k}
                   for v, m in curves.items()},
    }


def results_rows(summary: dict, dataset: str) -> list[dict]:
    """The ``results`` list of a results JSON (what ``fit3d-hub card --results`` reads)."""
    return [Result("correspondence", dataset, dataset, metric, round(value, 3), variant).to_row()
            for variant, metrics in summary["overall"].items()
            for metric, value in metrics.items()]


def markdown_table(summary: dict) -> str:
    metrics = list(next(iter(summary["overall"].values())))
    lines = ["| features | " + " | ".join(metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for variant, values in summary["overall"].items():
        lines.append(f"| {variant} | " + " | ".join(f"{values[m]:.2f}" for m in metrics) + " |")
    return "\n".join(lines)


def pcdp_plot(summary: dict, path: Path) -> None:
    """PCDP vs. threshold, one line per variant."""
    from eval.plot import line_chart

    series = {v: [values[f"{t:g}"] for t in CURVE_THRESHOLDS]
              for v, values in summary["curves"].items()}
    line_chart(path, list(CURVE_THRESHOLDS), series, x_label="threshold (x short side)",
               y_label="PCDP %", title="3D correspondence")


@dataclass
class CorrespondenceArgs:
    """The flags of ``python -m eval.correspondence``."""

    model: str = option(help="registry name, hub repo id or dir")
    scenes: str | None = option(None, help="scene folder(s) with depth, or a text file of "
                                "paths (this or --stereo)")
    stereo: str | None = option(None, help="folder of rectified stereo pairs with disparity "
                                "(this or --scenes)")
    pairs: int = option(20, help="view pairs per scene")
    max_rotation: float = option(120.0, help="widest relative rotation of a pair (degrees)")
    views: str = option("auto", choices=VIEW_CHOICES, help="frames to pair: test_frames, all, "
                        "or auto (test frames where a scene has them)")
    queries: int = option(1000, help="query pixels per pair")
    size: int | None = option(None, help="shorter image side the model sees (none: the image's "
                              "own, floored to patch multiples); features are matched at image "
                              "resolution")
    seed: int = option(0, help="random seed")
    output: str | None = option(None, help="results JSON (a .md table and a .png plot beside)")

    def __post_init__(self) -> None:
        if (self.scenes is None) == (self.stereo is None):
            raise UsageError("give one of --scenes and --stereo")
        if self.pairs < 1 or self.queries < 1 or (self.size is not None and self.size < 1):
            raise UsageError("--pairs, --queries and --size must be positive")


PROG = "python -m eval.correspondence"


def main(argv: list[str] | None = None) -> int:
    args, = commandline.command(PROG, __doc__, CorrespondenceArgs, argv=argv)

    def body() -> int:
        with accelerator_session() as accelerator:
            return _run(args, accelerator)

    return commandline.run(PROG, body)


def _run(args: CorrespondenceArgs, accelerator) -> int:
    from accelerate.utils import gather_object

    rank, world = accelerator.process_index, accelerator.num_processes
    model = load_fit3d(args.model, device=accelerator.device)
    if args.stereo:
        results = stereo_pair_results(model, Path(args.stereo), args.queries, args.seed,
                                      args.size)
        dataset = Path(args.stereo).name
    else:
        tasks = scene_tasks(scene_paths(args.scenes), args.pairs, args.max_rotation,
                            args.seed, args.views)
        mine = [run_scene_task(model, t, args.queries, args.seed, args.size)
                for t in tqdm(tasks[rank::world], desc="pairs", mininterval=1.0,
                              disable=not accelerator.is_local_main_process)]
        results = [r for r in mine if r is not None]
        if world > 1:  # every process matched its share of the pairs
            results = gather_object(results)
        dataset = Path(args.scenes).name
    summary = summarise(results)
    if not accelerator.is_main_process:
        return 0
    table = markdown_table(summary)
    print(table)
    if args.output:
        out = Path(args.output)
        payload = {"model": args.model, "task": "correspondence", "dataset": dataset,
                   "settings": {k: v for k, v in asdict(args).items() if k != "output"},
                   "versions": {"torch": torch.__version__,
                                "python": platform.python_version()},
                   "summary": summary, "results": results_rows(summary, dataset)}
        write_text_atomic(out, json.dumps(payload, indent=2) + "\n")
        write_text_atomic(out.with_suffix(".md"), table + "\n")
        pcdp_plot(summary, out.with_suffix(".png"))
        print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
