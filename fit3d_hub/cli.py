"""``fit3d-hub``: a thin command line over the package's importable pieces."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fit3d_hub.errors import FiT3DError


def _hub_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--revision", help="branch, tag or commit of the weights' hub repo")
    parser.add_argument("--cache-dir", help="Hugging Face cache directory (default: the hub's)")


def _cmd_list(args: argparse.Namespace) -> int:
    from fit3d_hub.registry import REGISTRY, list_models

    rows = [("name", "base model (timm)", "patch", "width", "fine-tuned weights", "license")]
    for name in list_models(pretrained=args.pretrained):
        s = REGISTRY[name]
        weights = f"{s.finetuned_repo}:{s.finetuned_file}" if s.has_finetuned_weights else "-"
        rows.append((name, s.base_model, str(s.patch_size), str(s.embed_dim), weights, s.license))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from fit3d_hub.loading import resolve

    resolved = resolve(args.name, mode=args.mode, revision=args.revision,
                       cache_dir=args.cache_dir, local_files_only=False)
    for label, path in (("original", resolved.base_path), ("fine-tuned", resolved.finetuned_path)):
        if path is not None:
            print(f"{label}: {path}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from fit3d_hub.convert import convert_checkpoint, convert_equivariance_checkpoint

    if args.method == "equivariance":
        out = convert_equivariance_checkpoint(args.source, args.backbone, args.output,
                                              base=args.base, overwrite=args.overwrite,
                                              cache_dir=args.cache_dir)
    else:
        out = convert_checkpoint(args.source, args.backbone, args.output, base=args.base,
                                 overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from fit3d_hub.hub import push_directory
    from fit3d_hub.repo_format import validate_repo

    validate_repo(args.directory)
    url = push_directory(args.directory, args.repo_id, private=args.private or None,
                         revision=args.revision, commit_message=args.commit_message,
                         create_pr=args.create_pr)
    print(url)
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from fit3d_hub.atomic import write_text_atomic
    from fit3d_hub.cards import render_card
    from fit3d_hub.results import load_results
    from fit3d_hub.schema import CARD_NAME, CONFIG_NAME, read_config

    directory = Path(args.directory)
    config = read_config(directory / CONFIG_NAME)
    results = load_results(args.results) if args.results else None
    text = render_card(config, results=results, repo_id=args.repo_id,
                       results_source=args.results_source)
    path = write_text_atomic(directory / CARD_NAME, text)
    print(f"wrote {path}")
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image, UnidentifiedImageError

    from fit3d_hub.atomic import save_image_atomic
    from fit3d_hub.loading import load_fit3d
    from fit3d_hub.pca import pca_rgb, side_by_side
    from fit3d_hub.transforms import get_transform

    try:
        image = Image.open(args.image).convert("RGB")
    except FileNotFoundError:
        raise FiT3DError(f"{args.image}: no such image file") from None
    except (UnidentifiedImageError, OSError) as err:
        raise FiT3DError(f"{args.image}: not a readable image ({err})") from None
    model = load_fit3d(args.model, revision=args.revision, cache_dir=args.cache_dir,
                       device=args.device)
    transform = get_transform(model, size=args.size)
    x = transform(image)[None].to(args.device or "cpu")
    with torch.inference_mode():
        out = model.forward_features(x)
    shown = transform.output_size(image.height, image.width)
    panels = [
        ("input", transform.invert(x[0].cpu()).mul(255).round().byte().permute(1, 2, 0)
         .numpy()),
        ("original", pca_rgb(out.original[0].cpu())),
        ("fine-tuned (FiT3D)", pca_rgb(out.finetuned[0].cpu())),
    ]
    picture = side_by_side(panels, height=min(shown[0], args.height))
    output = save_image_atomic(args.output, picture)
    print(f"wrote {output} ({picture.width}x{picture.height}; token grid "
          f"{out.features.shape[-2]}x{out.features.shape[-1]})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fit3d_hub.checkout import source_root

    source_root()
    from training.demo import (
        DemoSettings,
        EquivarianceDemoSettings,
        run_demo,
        run_equivariance_demo,
    )

    try:
        if args.method == "equivariance":
            eq = EquivarianceDemoSettings(backbone=args.backbone, seed=args.seed)
            if args.quick:
                eq.steps = 100
            run_equivariance_demo(args.output, eq)
            return 0
        settings = DemoSettings(backbone=args.backbone, seed=args.seed)
        if args.quick:
            settings.lift_iterations, settings.epochs = 120, 6
        run_demo(args.output, settings)
    except RuntimeError as err:
        raise FiT3DError(str(err)) from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fit3d-hub",
        description="3D-aware vision backbones (FiT3D): list, fetch, convert, publish, inspect.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list the registry's backbones")
    p.add_argument("--pretrained", action="store_true",
                   help="only backbones with released fine-tuned weights")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("download", help="fetch a backbone's weights into the Hugging Face cache",
                       description="Fetch everything NAME needs (original and fine-tuned "
                       "weights) into the Hugging Face cache, for later offline use.")
    p.add_argument("name", help="registry name or hub repo id")
    p.add_argument("--mode", default="concat", choices=("concat", "finetuned", "original"),
                   help="fetch only what this mode needs (default: both backbones)")
    _hub_options(p)
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("convert", help="turn an authors' checkpoint into the repo format")
    p.add_argument("source", help="fine-tuned checkpoint (.pth read with weights_only=True, or "
                   ".safetensors; with --method equivariance a 3DCorrEnhance .ckpt)")
    p.add_argument("--method", default="fit3d", choices=("fit3d", "equivariance"),
                   help="whose release SOURCE is: FiT3D's state dict (default) or "
                   "3DCorrEnhance's LoRA + refine conv")
    p.add_argument("--cache-dir", help="Hugging Face cache for the original weights")
    p.add_argument("--backbone", required=True, help="registry name of its architecture")
    p.add_argument("--output", required=True, help="directory to write the repo into")
    p.add_argument("--base", help="original backbone checkpoint to embed (self-contained repo)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing repo in OUTPUT")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("push", help="upload a repo directory to the Hugging Face Hub")
    p.add_argument("directory")
    p.add_argument("repo_id", help="owner/name on the hub (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", help="branch to push to")
    p.add_argument("--commit-message")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead")
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("card", help="render a repo directory's model card (README.md)")
    p.add_argument("directory")
    p.add_argument("--results", help="results JSON from eval/ to add as measured figures")
    p.add_argument("--results-source", help="label for the measured figures (default: "
                   "'measured with fit3d-hub')")
    p.add_argument("--repo-id", help="hub repo id the card's usage snippet should name")
    p.set_defaults(func=_cmd_card)

    p = sub.add_parser("features", help="PCA picture of original vs fine-tuned features",
                       description="Run IMAGE through both backbones and write a PNG: the input, "
                       "then the PCA of the original and of the fine-tuned features.")
    p.add_argument("image")
    p.add_argument("--model", required=True, help="registry name, hub repo id or directory")
    p.add_argument("--output", required=True, help="PNG to write")
    p.add_argument("--size", type=int, help="scale the shorter side to SIZE first")
    p.add_argument("--height", type=int, default=384, help="height of each panel (default 384)")
    p.add_argument("--device", help="torch device (default: cpu)")
    _hub_options(p)
    p.set_defaults(func=_cmd_features)

    p = sub.add_parser("demo", help="the whole pipeline on a synthetic scene, offline, on CPU",
                       description="Generate synthetic scenes, lift a backbone's features into "
                       "3D Gaussians (Stage 1), fine-tune it on the renders (Stage 2), load the "
                       "result with load_fit3d, and report multi-view consistency before and "
                       "after on held-out views, with pictures. --method equivariance instead "
                       "fine-tunes LoRA and a refine conv on 3D correspondences (ICLR 2025) and "
                       "reports APE/PCDP on unseen scenes. Needs the source checkout.")
    p.add_argument("--method", default="fit3d", choices=("fit3d", "equivariance"),
                   help="which 3D-aware fine-tuning to run (default fit3d)")
    p.add_argument("--output", default="fit3d-demo", help="folder to write (default fit3d-demo)")
    p.add_argument("--backbone", help="registry name, hub repo id or directory (default: a "
                   "tiny random ViT built on the spot, so the demo runs offline)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="fewer iterations (a smoke test)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fit3d-hub`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FiT3DError, ValueError, OSError) as err:
        print(f"fit3d-hub {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fit3d-hub {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
