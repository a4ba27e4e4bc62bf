"""Linear probes (DINOv2 protocol) on original, fine-tuned and concatenated features.

    python -m eval.linear_probe --task seg|depth --data FORMAT:PATH --model NAME_OR_DIR \
        [--iterations N] [--batch-size B] [--lr LR] [--size S] [--no-cache] [--output results.json]

Segmentation: BatchNorm + 1x1 conv, logits upsampled, cross-entropy; mIoU, mAcc, aAcc.
Depth: CLS token concatenated to each patch feature, 256 uniform bins with linear
normalisation, SigLoss + gradient loss; RMSE, AbsRel, delta1..3 inside the dataset's depth
range. The frozen backbone runs once per image and its features are cached (``--no-cache``
recomputes them every step with random flips, as the original protocol does). Images are
resized (shorter side ``--size``) and centre-cropped to a square of patch multiples.
Runs under ``accelerate launch`` too (data-parallel heads, sharded extraction).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eval.datasets import IGNORE, DatasetError, ProbeDataset, open_dataset
from eval.metrics import confusion_matrix, depth_metric_rows, mean_rows, segmentation_metrics
from eval.probe_heads import DepthHead, SegmentationHead, gradient_loss, sig_loss
from fit3d_hub import FiT3D, FiT3DError, get_transform, load_fit3d
from fit3d_hub.weights import write_text_atomic

VARIANTS = ("original", "finetuned", "concat")


@dataclass
class Batch:
    feats: dict[str, torch.Tensor]  # variant -> (B, C, h, w)
    cls: torch.Tensor  # (B, C) original CLS token
    label: torch.Tensor | None  # (B, S, S) int64
    depth: torch.Tensor | None  # (B, S, S) float

    def to(self, device: torch.device) -> Batch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch({k: v.to(device) for k, v in self.feats.items()}, self.cls.to(device),
                     move(self.label), move(self.depth))


def square(image: np.ndarray, label, depth, size: int, patch: int):
    """Resize (shorter side ``size``) and centre-crop all three to ``size`` x ``size``."""
    size = max(patch, round(size / patch) * patch)
    h, w = image.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2

    def resize(arr, mode):
        t = torch.from_numpy(np.array(arr, dtype=np.float32))
        t = t.permute(2, 0, 1)[None] if t.dim() == 3 else t[None, None]
        t = F.interpolate(t, size=(nh, nw), mode=mode,
                          **({"align_corners": False} if mode == "bilinear" else {}))
        return t[0, :, top:top + size, left:left + size]

    img = resize(image, "bilinear") / 255.0
    lab = resize(label, "nearest")[0].long() if label is not None else None
    dep = resize(depth, "nearest")[0] if depth is not None else None
    return img, lab, dep


@torch.inference_mode()
def extract(model: FiT3D, data: ProbeDataset, items, size: int, flip: bool = False,
            desc: str | None = "features") -> list[dict]:
    """Run the frozen backbone once per item: fp16 features of both branches + CLS."""
    transform = get_transform(model)
    device = next(model.parameters()).device
    out = []
    for item in tqdm(items, desc=desc, leave=False, mininterval=1.0, disable=desc is None):
        image, label, depth = data.load(item)
        img, lab, dep = square(image, label, depth, size, model.patch_size)
        if flip:
            img = img.flip(-1)
            lab = lab.flip(-1) if lab is not None else None
            dep = dep.flip(-1) if dep is not None else None
        f = model.forward_features(transform.batch(img[None]).to(device))
        out.append({"original": f.original[0].half().cpu(),
                    "finetuned": f.finetuned[0].half().cpu(),
                    "cls": f.cls_token[0].half().cpu(), "label": lab, "depth": dep})
    return out


def collate(records: list[dict]) -> Batch:
    feats = {v: torch.stack([r[v].float() for r in records]) for v in ("original", "finetuned")}
    feats["concat"] = torch.cat([feats["original"], feats["finetuned"]], dim=1)
    label = torch.stack([r["label"] for r in records]) if records[0]["label"] is not None \
        else None
    depth = torch.stack([r["depth"] for r in records]) if records[0]["depth"] is not None \
        else None
    return Batch(feats, torch.stack([r["cls"].float() for r in records]), label, depth)


class ProbeHeads(torch.nn.Module):
    """One linear head per feature variant, called together (one DDP forward per step)."""

    def __init__(self, task: str, channels: int, data: ProbeDataset):
        super().__init__()
        self.task = task
        dims = {"original": channels, "finetuned": channels, "concat": 2 * channels}
        self.heads = torch.nn.ModuleDict({
            v: SegmentationHead(d, data.num_classes) if task == "seg"
            else DepthHead(d, channels, data.min_depth, data.max_depth)
            for v, d in dims.items()})

    def forward(self, feats: dict[str, torch.Tensor], cls: torch.Tensor,
                size: tuple[int, int]) -> dict[str, torch.Tensor]:
        if self.task == "seg":
            return {v: self.heads[v](feats[v], size) for v in VARIANTS}
        return {v: self.heads[v](feats[v], cls, size) for v in VARIANTS}


def target_size(task: str, batch: Batch) -> tuple[int, int]:
    return tuple((batch.label if task == "seg" else batch.depth).shape[-2:])


def head_loss(task: str, outputs: dict[str, torch.Tensor], batch: Batch,
              data: ProbeDataset) -> torch.Tensor:
    """Sum over variants of cross-entropy (seg) or SigLoss + 0.5 gradient loss (depth)."""
    total = 0.0
    for v in VARIANTS:
        if task == "seg":
            total = total + F.cross_entropy(outputs[v], batch.label, ignore_index=IGNORE)
        else:
            valid = (batch.depth > data.min_depth) & (batch.depth < data.max_depth)
            total = total + sig_loss(outputs[v], batch.depth, valid) \
                + 0.5 * gradient_loss(outputs[v], batch.depth, valid)
    return total


@torch.no_grad()
def evaluate(task: str, heads, records: list[dict], data: ProbeDataset, batch_size: int,
             accelerator=None) -> dict[str, dict[str, float]]:
    """Metrics per variant; with Accelerate each process scores its shard and the raw
    statistics (confusion matrices, per-image depth rows) are pooled before averaging."""
    heads.eval()
    out = {}
    for v in VARIANTS:
        conf = torch.zeros(data.num_classes, data.num_classes, dtype=torch.long)
        rows: list[dict] = []
        device = next(heads.parameters()).device
        for i in range(0, len(records), batch_size):
            batch = collate(records[i:i + batch_size]).to(device)
            pred = heads(batch.feats, batch.cls, target_size(task, batch))[v]
            if task == "seg":
                conf += confusion_matrix(pred.argmax(1).cpu(), batch.label.cpu(),
                                         data.num_classes)
            else:
                rows += depth_metric_rows(pred.cpu(), batch.depth.cpu(), data.min_depth,
                                          data.max_depth)
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            conf = accelerator.reduce(conf.to(accelerator.device), "sum").cpu()
            rows = gather_object(rows)
        out[v] = segmentation_metrics(conf) if task == "seg" else mean_rows(rows)
    heads.train()
    return out


def train_probe(model: FiT3D, data: ProbeDataset, task: str, *, iterations: int,
                batch_size: int, lr: float, size: int, cache: bool, seed: int = 0,
                accelerator=None) -> tuple[dict, dict]:
    """Train the three heads; returns (metrics per variant, timing)."""
    if task == "seg" and data.num_classes < 2:
        raise DatasetError(f"{data.name}: no segmentation labels")
    if task == "depth" and data.load(data.train[0])[2] is None:
        raise DatasetError(f"{data.name}: no depth maps")
    torch.manual_seed(seed)
    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    train_items = data.train[rank::world]
    t0 = time.perf_counter()
    train_records = extract(model, data, train_items, size, desc="train features") if cache \
        else None
    t_extract = time.perf_counter() - t0
    heads = ProbeHeads(task, model.embed_dim, data)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=1e-4)
    if accelerator is not None:
        heads, optimizer = accelerator.prepare(heads, optimizer)
    rng = np.random.default_rng(seed + rank)
    device = next(heads.parameters()).device
    t1 = time.perf_counter()
    for step in tqdm(range(iterations), desc=f"{task} probe", leave=False, mininterval=1.0):
        pick = rng.choice(len(train_items), size=batch_size, replace=len(train_items) < batch_size)
        if cache:
            records = [train_records[i] for i in pick]
        else:
            flips = rng.random(batch_size) < 0.5
            records = [extract(model, data, [train_items[i]], size, flip=bool(f), desc=None)[0]
                       for i, f in zip(pick, flips, strict=True)]
        for group in optimizer.param_groups:
            group["lr"] = lr * (1 - step / iterations) ** 0.9  # poly schedule
        batch = collate(records).to(device)
        loss = head_loss(task, heads(batch.feats, batch.cls, target_size(task, batch)), batch,
                         data)
        optimizer.zero_grad(set_to_none=True)
        (accelerator.backward(loss) if accelerator else loss.backward())
        optimizer.step()
    t_train = time.perf_counter() - t1
    unwrapped = accelerator.unwrap_model(heads) if accelerator else heads
    val_records = extract(model, data, data.val[rank::world], size, desc="val features")
    metrics = evaluate(task, unwrapped, val_records, data, batch_size, accelerator)
    return metrics, {"extract_s": t_extract, "train_s": t_train}


TASK_NAMES = {"seg": "semantic-segmentation", "depth": "depth-estimation"}


def results_payload(args, data: ProbeDataset, metrics: dict, timing: dict) -> dict:
    task = TASK_NAMES[args.task]
    rows = [{"task": task, "dataset": data.name, "dataset_name": data.name, "metric": m,
             "value": round(v, 4), "variant": variant}
            for variant, values in metrics.items() for m, v in values.items()]
    return {"model": args.model, "task": task, "dataset": data.name,
            "settings": {k: v for k, v in vars(args).items() if k != "output"},
            "timing": timing,
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
            "metrics": metrics, "results": rows}


def markdown(metrics: dict) -> str:
    names = list(next(iter(metrics.values())))
    lines = ["| features | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {v} | " + " | ".join(f"{vals[n]:.3f}" for n in names) + " |"
              for v, vals in metrics.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.linear_probe",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True, choices=("seg", "depth"))
    parser.add_argument("--data", required=True, help="FORMAT:PATH (see eval/datasets.py)")
    parser.add_argument("--model", required=True, help="registry name, hub repo id or dir")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--size", type=int, default=448, help="square input side")
    parser.add_argument("--no-cache", action="store_true",
                        help="recompute features every step (with random flips)")
    parser.add_argument("--num-classes", type=int,
                        help="override the dataset's class count (NYUv2, ScanNet++ label sets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="results JSON (and a .md table beside it)")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.batch_size < 1 or args.size < 1:
        parser.error("--iterations, --batch-size and --size must be positive")
    from accelerate import Accelerator

    accelerator = Accelerator()
    try:
        data = open_dataset(args.data)
        if args.num_classes:
            data.num_classes = args.num_classes
        model = load_fit3d(args.model, device=accelerator.device)
        metrics, timing = train_probe(model, data, args.task, iterations=args.iterations,
                                      batch_size=args.batch_size, lr=args.lr, size=args.size,
                                      cache=not args.no_cache, seed=args.seed,
                                      accelerator=accelerator)
    except (DatasetError, FiT3DError) as err:
        print(f"eval.linear_probe: error: {err}", file=sys.stderr)
        return 2
    if accelerator.is_main_process:
        table = markdown(metrics)
        print(table)
        if args.output:
            out = Path(args.output)
            payload = results_payload(args, data, metrics, timing)
            write_text_atomic(out, json.dumps(payload, indent=2) + "\n")
            write_text_atomic(out.with_suffix(".md"), table + "\n")
            print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
