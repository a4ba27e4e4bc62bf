"""Linear probes (DINOv2 protocol) on original, fine-tuned and concatenated features.

    python -m eval.linear_probe --task seg|depth --data FORMAT:PATH --model NAME_OR_DIR \
        [--protocol quick|paper] [--iterations N] [--batch-size B] [--lr LR] [--size S] \
        [--no-cache] [--output results.json] [--save-every 500] [--resume]

Segmentation: BatchNorm + 1x1 conv on last-block, final-norm features, logits upsampled,
cross-entropy; mIoU, mAcc, aAcc. Depth: last-block features without the final norm, the
original CLS token concatenated to each patch feature, upsampled 4x, 256 uniform bins with
linear normalisation, SigLoss; RMSE, AbsRel, delta1..3 inside the dataset's depth range.

``--protocol paper`` is the authors' configuration (eval/protocols.py): augmented crops,
their schedules and iterations, sliding-window (segmentation) and flip-averaged whole-image
(depth) testing at full resolution; it runs the backbone every step, so it wants GPUs.
``--protocol quick`` (the default) resizes and centre-crops to ``--size`` squares, computes
the frozen features once and caches them (``--no-cache``: every step, with random flips).
Runs under ``accelerate launch`` too (data-parallel heads, sharded extraction).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eval.augment import (
    depth_pre_crop,
    depth_train_view,
    eval_mask,
    rescale_size,
    resize_image,
    seg_train_view,
)
from eval.datasets import IGNORE, Item, ProbeDataset, open_dataset
from eval.metrics import confusion_matrix, depth_metric_rows, mean_rows, segmentation_metrics
from eval.probe_checkpoint import ProbeCheckpoints
from eval.probe_heads import (
    DepthHead,
    SegmentationHead,
    cross_entropy,
    gradient_loss,
    grouped_sig_loss,
)
from eval.protocols import (
    PROTOCOLS,
    DepthProtocol,
    SegProtocol,
    beta1_at,
    lr_at,
    paper_protocol,
    quick_depth,
    quick_seg,
)
from fit3d_hub import FiT3D, commandline, load_fit3d
from fit3d_hub.atomic import write_text_atomic
from fit3d_hub.commandline import option
from fit3d_hub.distributed import accelerator_session
from fit3d_hub.errors import UsageError
from fit3d_hub.loading import model_id
from fit3d_hub.results import Result
from fit3d_hub.runs import claim_output
from fit3d_hub.schema import MODES
from fit3d_hub.transforms import normalize

Outputs = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""variant -> (feature map (B, C, h, w), CLS token (B, C)); concat carries the original's CLS."""


@dataclass
class Batch:
    outputs: Outputs
    label: torch.Tensor | None  # (B, H, W) int64
    depth: torch.Tensor | None  # (B, H, W) float

    def to(self, device: torch.device) -> Batch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch({v: (m.to(device), c.to(device)) for v, (m, c) in self.outputs.items()},
                     move(self.label), move(self.depth))


def backbone_outputs(model: FiT3D, images: torch.Tensor, norm: bool) -> Outputs:
    """Last-block maps and CLS tokens of both branches for normalised ``images``.

    ``norm``: the final norm (segmentation reads normed features, depth un-normed ones, as
    the authors' configs have it). Sides need not be patch multiples when the model pads.
    """
    (maps, prefix), = model.forward_intermediates(images, indices=1, norm=norm,
                                                  return_prefix_tokens=True,
                                                  intermediates_only=True)
    c = model.embed_dim
    orig = (maps[:, :c], prefix[:, 0, :c])
    return {"original": orig, "finetuned": (maps[:, c:], prefix[:, 0, c:]),
            "concat": (maps, orig[1])}


def normalised(model: FiT3D, images_255: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) 0..255 arrays -> the model's normalised (B, 3, H, W) input."""
    x = torch.as_tensor(np.ascontiguousarray(images_255), dtype=torch.float32)
    return normalize(x.permute(0, 3, 1, 2) / 255.0, *model.normalization)


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

    img = resize(image, "bilinear").permute(1, 2, 0)
    lab = resize(label, "nearest")[0].long() if label is not None else None
    dep = resize(depth, "nearest")[0] if depth is not None else None
    return img, lab, dep


def _half(outputs: Outputs) -> dict:
    return {"original": tuple(t[0].half().cpu() for t in outputs["original"]),
            "finetuned": tuple(t[0].half().cpu() for t in outputs["finetuned"])}


@torch.inference_mode()
def extract(model: FiT3D, data: ProbeDataset, items, size: int, norm: bool,
            flip: bool = False, desc: str | None = "features") -> list[dict]:
    """Quick protocol: run the frozen backbone once per item on its square crop; fp16 maps
    and CLS tokens of both branches, with the label or depth."""
    device = next(model.parameters()).device
    out = []
    for item in tqdm(items, desc=desc, leave=False, mininterval=1.0, disable=desc is None):
        image, label, depth = data.load(item)
        img, lab, dep = square(image, label, depth, size, model.patch_size)
        if flip:
            img = img.flip(1)
            lab = lab.flip(-1) if lab is not None else None
            dep = dep.flip(-1) if dep is not None else None
        outputs = backbone_outputs(model, normalised(model, img[None]).to(device), norm)
        out.append({**_half(outputs), "label": lab, "depth": dep})
    return out


def collate(records: list[dict]) -> Batch:
    branch = {b: (torch.stack([r[b][0].float() for r in records]),
                  torch.stack([r[b][1].float() for r in records]))
              for b in ("original", "finetuned")}
    concat = (torch.cat([branch["original"][0], branch["finetuned"][0]], dim=1),
              branch["original"][1])
    label = torch.stack([r["label"] for r in records]) if records[0]["label"] is not None \
        else None
    depth = torch.stack([r["depth"] for r in records]) if records[0]["depth"] is not None \
        else None
    return Batch({**branch, "concat": concat}, label, depth)


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

    def forward(self, outputs: Outputs, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        if self.task == "seg":
            return {v: self.heads[v](outputs[v][0], size) for v in MODES}
        return {v: self.heads[v](*outputs[v], size) for v in MODES}


def head_loss(task: str, preds: dict[str, torch.Tensor], batch: Batch,
              protocol: SegProtocol | DepthProtocol, step: int) -> torch.Tensor:
    """Sum over variants of cross-entropy (seg) or SigLoss (+ the gradient term) (depth)."""
    total = 0.0
    for v in MODES:
        if task == "seg":
            total = total + cross_entropy(preds[v], batch.label, IGNORE)
        else:
            total = total + grouped_sig_loss(preds[v], batch.depth, protocol.images_per_loss,
                                             warm_up=step < protocol.sigloss_warmup)
            if protocol.gradient_weight:
                total = total + protocol.gradient_weight * gradient_loss(preds[v], batch.depth)
    return total


def target_size(task: str, batch: Batch) -> tuple[int, int]:
    return tuple((batch.label if task == "seg" else batch.depth).shape[-2:])


class PaperBatches:
    """The paper protocol's training batches: a fresh augmented view per image, every step."""

    def __init__(self, model: FiT3D, data: ProbeDataset, items: list[Item], task: str,
                 protocol: SegProtocol | DepthProtocol, rng: np.random.Generator):
        self.model, self.data, self.items = model, data, items
        self.task, self.protocol, self.rng = task, protocol, rng

    @torch.no_grad()
    def __call__(self, picks: np.ndarray) -> Batch:
        images, targets = [], []
        fill = tuple(255.0 * m for m in self.model.normalization[0])  # 0 once normalised
        for i in picks:
            image, label, depth = self.data.load(self.items[i])
            if self.task == "seg":
                img, target = seg_train_view(image, label, self.protocol, self.rng, fill)
            else:
                img, target = depth_train_view(image, depth, self.protocol, self.rng, fill)
            images.append(img)
            targets.append(torch.from_numpy(np.ascontiguousarray(target)))
        device = next(self.model.parameters()).device
        x = normalised(self.model, np.stack(images)).to(device)
        outputs = backbone_outputs(self.model, x, norm=self.task == "seg")
        stacked = torch.stack(targets)
        if self.task == "seg":
            return Batch(outputs, stacked.long(), None)
        return Batch(outputs, None, stacked.float())


@torch.no_grad()
def evaluate_quick(task: str, heads, records: list[dict], data: ProbeDataset,
                   batch_size: int, accelerator=None) -> dict[str, dict[str, float]]:
    """Metrics per variant on cached square crops; with Accelerate each process scores its
    shard and the raw statistics (confusion matrices, per-image rows) are pooled."""
    heads.eval()
    conf = {v: torch.zeros(data.num_classes, data.num_classes, dtype=torch.long)
            for v in MODES}
    rows: dict[str, list] = {v: [] for v in MODES}
    device = next(heads.parameters()).device
    for i in range(0, len(records), batch_size):
        batch = collate(records[i:i + batch_size]).to(device)
        preds = heads(batch.outputs, target_size(task, batch))
        for v in MODES:
            if task == "seg":
                conf[v] += confusion_matrix(preds[v].argmax(1).cpu(), batch.label.cpu(),
                                            data.num_classes)
            else:
                rows[v] += depth_metric_rows(preds[v].cpu(), batch.depth.cpu(), data.min_depth,
                                             data.max_depth)
    heads.train()
    return pooled_metrics(task, conf, rows, accelerator)


def pooled_metrics(task: str, conf: dict, rows: dict, accelerator=None) -> dict:
    out = {}
    for v in MODES:
        c, r = conf[v], rows[v]
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            c = accelerator.reduce(c.to(accelerator.device), "sum").cpu()
            r = gather_object(r)
        out[v] = segmentation_metrics(c) if task == "seg" else mean_rows(r)
    return out


def slide_logits(model: FiT3D, heads, image: torch.Tensor, crop: tuple[int, int],
                 stride: tuple[int, int], num_classes: int) -> dict[str, torch.Tensor]:
    """mmseg's sliding-window inference: logits of overlapping crops, averaged per pixel."""
    _, _, h, w = image.shape
    rows = max(h - crop[0] + stride[0] - 1, 0) // stride[0] + 1
    cols = max(w - crop[1] + stride[1] - 1, 0) // stride[1] + 1
    sums = {v: image.new_zeros((1, num_classes, h, w)) for v in MODES}
    count = image.new_zeros((1, 1, h, w))
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride[0] + crop[0], h), min(c * stride[1] + crop[1], w)
            y1, x1 = max(y2 - crop[0], 0), max(x2 - crop[1], 0)
            part = image[:, :, y1:y2, x1:x2]
            preds = heads(backbone_outputs(model, part, norm=True), tuple(part.shape[-2:]))
            for v in MODES:
                sums[v][:, :, y1:y2, x1:x2] += preds[v]
            count[:, :, y1:y2, x1:x2] += 1
    return {v: sums[v] / count for v in MODES}


@torch.no_grad()
def evaluate_paper(task: str, model: FiT3D, heads, data: ProbeDataset, items: list[Item],
                   protocol: SegProtocol | DepthProtocol, accelerator=None, desc="val"
                   ) -> dict[str, dict[str, float]]:
    """Full-resolution testing as the authors' configs do it: segmentation resized into the
    (2048, 512) bound and slid over in 512 crops, logits back at the original size;
    depth on the whole image and its mirror, clamped, averaged, metrics inside the eval
    crop."""
    heads.eval()
    device = next(model.parameters()).device
    conf = {v: torch.zeros(data.num_classes, data.num_classes, dtype=torch.long)
            for v in MODES}
    rows: dict[str, list] = {v: [] for v in MODES}
    for item in tqdm(items, desc=desc, leave=False, mininterval=1.0):
        image, label, depth = data.load(item)
        if task == "seg":
            size = rescale_size(*image.shape[:2], protocol.scale)
            x = normalised(model, resize_image(image.astype(np.float32), size)[None]).to(device)
            logits = slide_logits(model, heads, x, protocol.crop, protocol.slide_stride,
                                  data.num_classes)
            for v in MODES:
                full = F.interpolate(logits[v], size=label.shape, mode="bilinear",
                                     align_corners=False)
                conf[v] += confusion_matrix(full.argmax(1)[0].cpu(), torch.from_numpy(label),
                                            data.num_classes)
            continue
        kind = protocol.pre_crop if protocol.pre_crop == "kitti" else None
        image, depth = depth_pre_crop(image, depth, kind)
        x = normalised(model, image.astype(np.float32)[None]).to(device)
        views = [x, x.flip(-1)] if protocol.flip_test else [x]
        total = None
        for k, view in enumerate(views):
            preds = heads(backbone_outputs(model, view, norm=False), depth.shape)
            preds = {v: (p.flip(-1) if k else p) for v, p in preds.items()}
            total = preds if total is None else {v: total[v] + preds[v] for v in MODES}
        gt = torch.from_numpy(depth)[None]
        mask = torch.from_numpy(eval_mask(depth, protocol.eval_crop))[None]
        for v in MODES:
            rows[v] += depth_metric_rows((total[v] / len(views)).cpu(), gt, data.min_depth,
                                         data.max_depth, masks=mask)
    heads.train()
    return pooled_metrics(task, conf, rows, accelerator)


def train_probe(model: FiT3D, data: ProbeDataset, task: str,
                protocol: SegProtocol | DepthProtocol, *, cache: bool = True, seed: int = 0,
                accelerator=None, checkpoints: ProbeCheckpoints | None = None
                ) -> tuple[dict, dict]:
    """Train the three heads under ``protocol``; returns (metrics per variant, timing).

    ``checkpoints`` saves the training state every so many steps and, when resuming,
    continues from the newest save.
    """
    pad = model.pad
    if protocol.square is None:
        model.pad = "center"  # the authors' CenterPadding pre-hook
    try:
        return _train_probe(model, data, task, protocol, cache, seed, accelerator, checkpoints)
    finally:
        model.pad = pad


def _train_probe(model: FiT3D, data: ProbeDataset, task: str,
                 protocol: SegProtocol | DepthProtocol, cache: bool, seed: int,
                 accelerator, checkpoints: ProbeCheckpoints | None) -> tuple[dict, dict]:
    train_items, val_items = data.items_for(task)
    torch.manual_seed(seed)
    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    train_items = train_items[rank::world]
    paper = protocol.square is None
    t0 = time.perf_counter()
    norm = task == "seg"
    records = extract(model, data, train_items, protocol.square, norm,
                      desc="train features") if cache and not paper else None
    t_extract = time.perf_counter() - t0
    heads = ProbeHeads(task, model.embed_dim, data)
    if accelerator is not None and accelerator.num_processes > 1 \
            and accelerator.device.type == "cuda":
        heads = torch.nn.SyncBatchNorm.convert_sync_batchnorm(heads)  # the configs' SyncBN
    optimizer = torch.optim.AdamW(heads.parameters(), lr=protocol.lr,
                                  weight_decay=protocol.weight_decay)
    if accelerator is not None:
        heads, optimizer = accelerator.prepare(heads, optimizer)
    rng = np.random.default_rng(seed + rank)
    device = next(heads.parameters()).device
    per_process = max(1, protocol.batch_size // world)
    augmented = PaperBatches(model, data, train_items, task, protocol, rng) if paper else None
    first = checkpoints.restore(accelerator, heads, optimizer, rng) if checkpoints else 0
    t1 = time.perf_counter()
    for step in tqdm(range(first, protocol.iterations), desc=f"{task} probe", leave=False,
                     mininterval=1.0, initial=first, total=protocol.iterations):
        pick = rng.choice(len(train_items), size=per_process,
                          replace=len(train_items) < per_process)
        if paper:
            batch = augmented(pick)
        elif cache:
            batch = collate([records[i] for i in pick])
        else:
            flips = rng.random(per_process) < 0.5
            batch = collate([extract(model, data, [train_items[i]], protocol.square, norm,
                                     flip=bool(f), desc=None)[0]
                             for i, f in zip(pick, flips, strict=True)])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(protocol, step)
            group["betas"] = (beta1_at(protocol, step), group["betas"][1])
        batch = batch.to(device)
        loss = head_loss(task, heads(batch.outputs, target_size(task, batch)), batch,
                         protocol, step)
        optimizer.zero_grad(set_to_none=True)
        (accelerator.backward(loss) if accelerator else loss.backward())
        if getattr(protocol, "grad_clip", None):
            # one clip per head: the authors train each variant's head in its own run
            for head in (accelerator.unwrap_model(heads) if accelerator else heads).heads.values():
                torch.nn.utils.clip_grad_norm_(head.parameters(), protocol.grad_clip)
        optimizer.step()
        if checkpoints is not None and checkpoints.due(step + 1, protocol.iterations):
            checkpoints.save(accelerator, step + 1, heads, optimizer, rng)
    t_train = time.perf_counter() - t1
    unwrapped = accelerator.unwrap_model(heads) if accelerator else heads
    mine = val_items[rank::world]
    if paper:
        metrics = evaluate_paper(task, model, unwrapped, data, mine, protocol, accelerator)
    else:
        val_records = extract(model, data, mine, protocol.square, norm, desc="val features")
        metrics = evaluate_quick(task, unwrapped, val_records, data, protocol.batch_size,
                                 accelerator)
    return metrics, {"extract_s": t_extract, "train_s": t_train}


TASK_NAMES = {"seg": "semantic-segmentation", "depth": "depth-estimation"}


def results_payload(args, data: ProbeDataset, protocol, metrics: dict, timing: dict) -> dict:
    task = TASK_NAMES[args.task]
    rows = [Result(task, data.name, data.display_name, m, round(v, 4), variant,
                   protocol.name).to_row()
            for variant, values in metrics.items() for m, v in values.items()]
    return {"model": args.model, "task": task, "dataset": data.name,
            "protocol": protocol.name, "protocol_settings": _plain(protocol),
            "settings": {k: v for k, v in asdict(args).items() if k != "output"},
            "timing": timing,
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
            "metrics": metrics, "results": rows}


def _plain(protocol) -> dict:
    from dataclasses import asdict

    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(protocol).items()}


def markdown(metrics: dict) -> str:
    names = list(next(iter(metrics.values())))
    lines = ["| features | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {v} | " + " | ".join(f"{vals[n]:.3f}" for n in names) + " |"
              for v, vals in metrics.items()]
    return "\n".join(lines)


def build_protocol(args, dataset: str) -> SegProtocol | DepthProtocol:
    """The protocol the command line asks for; explicit flags override its values."""
    if args.protocol == "paper":
        protocol = paper_protocol(args.task, dataset)
        overrides = {k: getattr(args, k) for k in ("iterations", "batch_size", "lr")
                     if getattr(args, k) is not None}
        return replace(protocol, **overrides)
    make = quick_seg if args.task == "seg" else quick_depth
    given = {k: getattr(args, k) for k in ("iterations", "batch_size", "lr", "size")
             if getattr(args, k) is not None}
    return make(**given)


@dataclass
class ProbeArgs:
    """The flags of ``python -m eval.linear_probe``."""

    task: str = option(choices=("seg", "depth"), help="segmentation or depth")
    data: str = option(help="FORMAT:PATH (see eval/datasets.py)")
    model: str = option(help="registry name, hub repo id or dir")
    protocol: str = option("quick", choices=PROTOCOLS, help="quick (square crops, cached "
                           "features, CPU-friendly) or paper (the authors' configs; GPUs)")
    iterations: int | None = option(None, help="training steps (none: the protocol's; quick "
                                    "2000)")
    batch_size: int | None = option(None, help="none: the protocol's (quick 8)")
    lr: float | None = option(None, help="none: the protocol's (quick 1e-3)")
    size: int | None = option(None, help="quick protocol: square input side (none: 448)")
    no_cache: bool = option(False, help="quick protocol: recompute features every step "
                            "(random flips)")
    num_classes: int | None = option(None, help="override the dataset's class count (NYUv2, "
                                     "ScanNet++ label sets)")
    seed: int = option(0, help="random seed")
    output: str | None = option(None, help="results JSON (and a .md table beside it)")
    save_every: int = option(500, help="save the heads' training state every N steps (0: "
                             "never) into --checkpoint-dir")
    checkpoint_dir: str | None = option(None, help="where to save (none: OUTPUT.checkpoints "
                                        "beside --output; removed once the results are "
                                        "written)")
    resume: bool = option(False, help="continue from the newest checkpoint (same settings "
                          "only)")
    overwrite: bool = option(False, help="start over where an earlier run left checkpoints "
                             "(they are deleted)")

    def __post_init__(self) -> None:
        if self.save_every < 0:
            raise UsageError("--save-every must be >= 0")
        if self.checkpoint_dir is None and self.output:
            self.checkpoint_dir = str(Path(self.output).with_suffix(".checkpoints"))
        if self.resume and self.checkpoint_dir is None:
            raise UsageError("--resume needs --output or --checkpoint-dir (where the "
                             "checkpoints are)")
        for name in ("iterations", "batch_size", "size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be positive")
        if self.protocol == "paper" and (self.size is not None or self.no_cache):
            raise UsageError("--size and --no-cache belong to the quick protocol")


PROG = "python -m eval.linear_probe"


def main(argv: list[str] | None = None) -> int:
    args, = commandline.command(PROG, __doc__, ProbeArgs, argv=argv)

    def body() -> int:
        with accelerator_session() as accelerator:
            if args.checkpoint_dir is None:
                return _run(args, accelerator)
            # the checkpoint folder is the run's: one run at a time, never two runs mixed
            settings = {k: v for k, v in asdict(args).items() if k not in ("resume",
                                                                             "overwrite")}
            with claim_output(args.checkpoint_dir, command=PROG, settings=settings,
                              resume=args.resume, overwrite=args.overwrite,
                              checkpoints=args.checkpoint_dir, accelerator=accelerator):
                return _run(args, accelerator)

    return commandline.run(PROG, body)


def _run(args: ProbeArgs, accelerator) -> int:
    data = open_dataset(args.data)
    if args.num_classes:
        data.num_classes = args.num_classes
    protocol = build_protocol(args, data.name)
    model = load_fit3d(args.model, device=accelerator.device)
    saves = None
    if args.checkpoint_dir is not None:
        saves = ProbeCheckpoints(Path(args.checkpoint_dir), args.save_every, args.resume,
                                 probe_settings(args, protocol, accelerator.num_processes))
    metrics, timing = train_probe(model, data, args.task, protocol,
                                  cache=not args.no_cache, seed=args.seed,
                                  accelerator=accelerator, checkpoints=saves)
    if accelerator.is_main_process:
        table = markdown(metrics)
        print(f"protocol: {protocol.name}\n{table}")
        if args.output:
            out = Path(args.output)
            payload = results_payload(args, data, protocol, metrics, timing)
            write_text_atomic(out, json.dumps(payload, indent=2) + "\n")
            write_text_atomic(out.with_suffix(".md"), table + "\n")
            print(f"wrote {out} and {out.with_suffix('.md')}")
        if saves is not None:
            saves.finish()
    return 0


def probe_settings(args: ProbeArgs, protocol, processes: int) -> dict:
    """What a probe checkpoint records: a resumed probe must match it all."""
    return {"task": args.task, "data": args.data, "model": model_id(args.model),
            "protocol": _plain(protocol), "cache": not args.no_cache, "seed": args.seed,
            "num_classes": args.num_classes, "processes": processes}


if __name__ == "__main__":
    sys.exit(main())
