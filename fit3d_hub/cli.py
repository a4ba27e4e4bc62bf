"""``fit3d-hub``: a thin command line over the package's importable pieces.

Each subcommand's flags are the fields of its dataclass below (:mod:`fit3d_hub.commandline`);
each refusal is one line, exit status 1 for bad data and 2 for bad usage.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fit3d_hub import commandline
from fit3d_hub.commandline import option
from fit3d_hub.errors import FiT3DError, UsageError
from fit3d_hub.methods import DEFAULT_METHOD, METHODS, get_method
from fit3d_hub.schema import MODES

PROG = "fit3d-hub"


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@dataclass
class ListArgs:
    """List the registry: every released 3D-aware backbone and every base to train from.
    The bare names of FiT3D's releases (dinov2_small, ...) and the authors' hubconf names
    (dinov2_small_fine, ...) are aliases of their .fit3d entries."""

    pretrained: bool = option(False, help="only names with released 3D-aware weights")
    method: str | None = option(None, choices=lambda: tuple(METHODS),
                                help="only this method's releases")
    markdown: bool = option(False, help="print a markdown table (the README's)")

    def __call__(self) -> int:
        from fit3d_hub.registry import list_models, registry_markdown, registry_table

        names = list_models(pretrained=self.pretrained, method=self.method)
        if self.markdown:
            print(registry_markdown(names))
        else:
            _table(registry_table(names))
        return 0


@dataclass
class MethodsArgs:
    """List the 3D-aware methods: how each trains, its demo, what its repos add."""

    def __call__(self) -> int:
        rows = [("method", "paper", "train (accelerate launch -m ...)", "repo adds", "about")]
        for spec in METHODS.values():
            rows.append((spec.name, spec.paper.venue, " then ".join(spec.train) or
                         "- (releases load; no training here yet)",
                         ", ".join(spec.repo_extras) or "-", spec.summary))
        _table(rows)
        return 0


@dataclass
class DownloadArgs:
    """Fetch everything NAME needs (original and fine-tuned weights) into the Hugging Face
    cache, for later offline use."""

    name: str = option(positional=True, help="registry name or hub repo id")
    mode: str | None = option(None, choices=MODES, help="fetch only what this mode needs "
                              "(none: the repo's own; concat for a pair: both backbones)")
    revision: str | None = option(None, help="branch, tag or commit of the weights' hub repo")
    cache_dir: str | None = option(None, help="Hugging Face cache directory (none: the hub's)")

    def __call__(self) -> int:
        from fit3d_hub.loading import resolve

        resolved = resolve(self.name, mode=self.mode, revision=self.revision,
                           cache_dir=self.cache_dir, local_files_only=False)
        for label, path in (("original", resolved.base_path),
                            ("fine-tuned", resolved.finetuned_path)):
            if path is not None:
                print(f"{label}: {path}")
        return 0


def _converters() -> tuple[str, ...]:
    return tuple(name for name, spec in METHODS.items() if spec.converter)


@dataclass
class ConvertArgs:
    """Turn an authors' released checkpoint into the repo format."""

    source: str = option(positional=True, help="fine-tuned checkpoint (.pth read with "
                         "weights_only=True, or .safetensors; with --method equivariance a "
                         "3DCorrEnhance .ckpt)")
    backbone: str = option(help="registry name of its architecture")
    output: str = option(help="directory to write the repo into")
    method: str = option(DEFAULT_METHOD, choices=_converters, help="whose release SOURCE is "
                         "(fit3d: FiT3D's state dict; equivariance: 3DCorrEnhance's LoRA + "
                         "refine conv)")
    base: str | None = option(None, help="original backbone checkpoint to embed "
                              "(self-contained repo)")
    overwrite: bool = option(False, help="replace an existing repo in OUTPUT")
    cache_dir: str | None = option(None, help="Hugging Face cache for the original weights")

    def __call__(self) -> int:
        convert = _load(get_method(self.method).converter)
        kwargs: dict[str, Any] = {"base": self.base, "overwrite": self.overwrite}
        if "cache_dir" in inspect.signature(convert).parameters:
            kwargs["cache_dir"] = self.cache_dir
        out = convert(self.source, self.backbone, self.output, **kwargs)
        print(f"wrote {out}")
        return 0


@dataclass
class PushArgs:
    """Upload a repo directory to the Hugging Face Hub (checked first)."""

    directory: str = option(positional=True, help="the repo directory")
    repo_id: str = option(positional=True, help="owner/name on the hub (created if missing)")
    private: bool = option(False, help="create the repo private")
    revision: str | None = option(None, help="branch to push to")
    commit_message: str | None = option(None, help="commit message")
    create_pr: bool = option(False, help="open a pull request instead")

    def __call__(self) -> int:
        from fit3d_hub.hub import push_directory
        from fit3d_hub.repo_format import validate_repo

        validate_repo(self.directory)
        url = push_directory(self.directory, self.repo_id, private=self.private or None,
                             revision=self.revision, commit_message=self.commit_message,
                             create_pr=self.create_pr)
        print(url)
        return 0


@dataclass
class CardArgs:
    """Render a repo directory's model card (README.md), or a registry name's (printed)."""

    directory: str = option(positional=True, help="the repo directory, or a registry name "
                            "(its card is printed; nothing is downloaded)")
    results: str | None = option(None, help="results JSON from eval/ to add as measured figures")
    results_source: str | None = option(None, help="label for the measured figures (none: "
                                        "'measured with fit3d-hub')")
    repo_id: str | None = option(None, help="hub repo id the card's usage snippet should name")

    def __call__(self) -> int:
        from fit3d_hub.atomic import write_text_atomic
        from fit3d_hub.cards import render_card
        from fit3d_hub.registry import get_spec, is_registered, registry_config
        from fit3d_hub.results import load_results
        from fit3d_hub.schema import CARD_NAME, CONFIG_NAME, read_config

        directory = Path(self.directory)
        named = not directory.is_dir() and is_registered(self.directory)
        config = registry_config(get_spec(self.directory)) if named else \
            read_config(directory / CONFIG_NAME)
        results = load_results(self.results) if self.results else None
        text = render_card(config, results=results, repo_id=self.repo_id,
                           results_source=self.results_source)
        if named:
            print(text)
            return 0
        path = write_text_atomic(directory / CARD_NAME, text)
        print(f"wrote {path}")
        return 0


MAX_FEATURE_SIZE = 4096
"""Largest shorter side ``fit3d-hub features --size`` scales to (a ViT's attention grows with
the square of the token count: 4096 px is 85k DINOv2 tokens)."""
MAX_FEATURE_TOKENS = 2**17
"""Most patch tokens ``fit3d-hub features`` runs a backbone on (an image used as is: a
9000x9000 PNG would be 413k tokens for a patch-14 ViT, hours of attention on a CPU)."""


@dataclass
class FeaturesArgs:
    """Run each IMAGE through the model and write one PNG: a row per image with the input and
    the PCA of the original and of the fine-tuned features. Each branch's PCA basis is shared
    across all the images, so equal colours mean equal features across views."""

    images: tuple[str, ...] = option(positional=True, help="one or more RGB image files")
    model: str = option(help="registry name, hub repo id or directory")
    output: str = option(help="PNG to write")
    size: int | None = option(None, help="scale the shorter side to SIZE first (none: as is)")
    height: int = option(384, help="height of each panel")
    device: str | None = option(None, help="torch device (none: cpu)")
    revision: str | None = option(None, help="branch, tag or commit of the weights' hub repo")
    cache_dir: str | None = option(None, help="Hugging Face cache directory (none: the hub's)")

    def __post_init__(self) -> None:
        if not self.images:
            raise UsageError("give at least one IMAGE")
        if self.size is not None and not 1 <= self.size <= MAX_FEATURE_SIZE:
            raise UsageError(f"--size must be between 1 and {MAX_FEATURE_SIZE}; got "
                             f"{self.size}")
        if self.height < 1:
            raise UsageError(f"--height must be at least 1; got {self.height}")

    def __call__(self) -> int:
        import torch

        from fit3d_hub.atomic import save_image_atomic
        from fit3d_hub.loading import load_fit3d
        from fit3d_hub.pca import pca_rgb_shared, side_by_side, stacked
        from fit3d_hub.transforms import get_transform

        images = [_read_image(path) for path in self.images]
        model = load_fit3d(self.model, revision=self.revision, cache_dir=self.cache_dir,
                           device=self.device)
        transform = get_transform(model, size=self.size)
        for i, (path, image) in enumerate(zip(self.images, images, strict=True)):
            h, w = transform.output_size(image.height, image.width)
            tokens = (h // model.patch_size) * (w // model.patch_size)
            if tokens > MAX_FEATURE_TOKENS:
                raise UsageError(f"{path}: {image.width}x{image.height} would be {tokens} "
                                 f"tokens, over {MAX_FEATURE_TOKENS}; pass --size (e.g. "
                                 "--size 448) to scale it down first")
            # shrink a large image in 8 bits first (box filter), not as a float tensor
            factor = min(image.width // w, image.height // h)
            if factor >= 2:
                images[i] = image.reduce(factor)
        inputs, outs = [], []
        for image in images:
            x = transform(image)[None].to(self.device or "cpu")
            with torch.inference_mode():
                outs.append(model.forward_features(x))
            inputs.append(transform.invert(x[0].cpu()).mul(255).round().byte()
                          .permute(1, 2, 0).numpy())
        method = METHODS.get(model.fit3d_block.method)
        branches = [("original", "original"),
                    (f"fine-tuned ({method.title if method else model.fit3d_block.method})",
                     "finetuned")]
        branches = [(t, b) for t, b in branches if getattr(outs[0], b) is not None]
        pictures = {b: pca_rgb_shared([getattr(o, b)[0].cpu() for o in outs])
                    for _, b in branches}
        height = min(min(im.shape[0] for im in inputs), self.height)
        rows = [side_by_side([("input", inputs[i])]
                             + [(t, pictures[b][i]) for t, b in branches], height=height)
                for i in range(len(images))]
        canvas = stacked(rows)
        output = save_image_atomic(self.output, canvas)
        grid = outs[0].features.shape[-2:]
        print(f"wrote {output} ({canvas.width}x{canvas.height}; {len(images)} image(s), one "
              f"PCA basis per branch; token grid {grid[0]}x{grid[1]})")
        return 0


@dataclass
class LayersArgs:
    """A GMAE model's zero-shot view of IMAGE (resized to its training size): the input, the
    depth-ordered layers (the image built up from the nearest Gaussians back), the rendered
    depth, the figure-ground mask and the depth edges, side by side in one PNG."""

    image: str = option(positional=True, help="an RGB image file")
    model: str = option(help="a GMAE repo (directory or hub repo id)")
    output: str = option(help="PNG to write")
    layers: int = option(4, help="depth-ordered layers to show")
    height: int = option(192, help="height of each panel")
    revision: str | None = option(None, help="branch, tag or commit of the model's hub repo")
    cache_dir: str | None = option(None, help="Hugging Face cache directory (none: the hub's)")

    def __call__(self) -> int:
        import numpy as np

        from fit3d_hub.atomic import save_image_atomic
        from fit3d_hub.explorer import layer_panels
        from fit3d_hub.loading import load_fit3d
        from fit3d_hub.pca import side_by_side

        if self.layers < 1:
            raise UsageError(f"--layers must be >= 1; got {self.layers}")
        image = _read_image(self.image)
        model = load_fit3d(self.model, revision=self.revision, cache_dir=self.cache_dir)
        spec = model.fit3d_block.gmae
        if spec is None or spec.decoder != "gaussians":
            raise UsageError(f"--model {self.model}: not a GMAE model with a Gaussian decoder")
        side = spec.image_size
        panels = [("input", np.asarray(image.resize((side, side))))]
        panels += layer_panels(model, image, self.layers)
        out = save_image_atomic(self.output, side_by_side(panels, self.height))
        print(f"wrote {out} ({len(panels)} panels, {spec.num_gaussians} Gaussians)")
        return 0


def _read_image(path: str):
    from fit3d_hub.images import read_image

    return read_image(path)


@dataclass
class DemoArgs:
    """Run a method end to end on synthetic scenes, offline, on CPU, and report what the 3D
    awareness buys. fit3d (default): lift a backbone's features into 3D Gaussians (Stage 1),
    fine-tune it on the renders (Stage 2), load the result with load_fit3d, and report
    multi-view consistency before and after on held-out views, with pictures. equivariance:
    fine-tune LoRA and a refine conv on 3D correspondences (ICLR 2025) and report APE/PCDP on
    unseen scenes. `fit3d-hub methods` lists every method. Needs the source checkout."""

    method: str = option(DEFAULT_METHOD,
                         choices=lambda: tuple(n for n, m in METHODS.items() if m.demo),
                         help="which 3D-aware method to run")
    output: str = option("fit3d-demo", help="folder to write")
    backbone: str | None = option(None, help="registry name, hub repo id or directory (none: a "
                                  "tiny random ViT built on the spot, so the demo runs offline)")
    seed: int = option(0, help="random seed")
    quick: bool = option(False, help="fewer iterations (a smoke test)")

    def __call__(self) -> int:
        from fit3d_hub.checkout import source_root

        source_root()
        demo = importlib.import_module(get_method(self.method).demo)
        settings = demo.Settings(backbone=self.backbone, seed=self.seed)
        if self.quick:
            settings = demo.quick(settings)
        demo.run(self.output, settings)
        return 0


@dataclass
class AppArgs:
    """Start the feature explorer, a local web page (Gradio; pip install "fit3d-hub[app]"):
    upload two views, compare each model's variants as PCA pictures in one shared basis, click
    a point to see its best match and similarity map in the other view, and a GMAE model's
    layers. Binds to 127.0.0.1 unless --host says otherwise; without --model it runs the
    demos' tiny random ViT, offline."""

    model: tuple[str, ...] = option((), help="registry names, hub repo ids or directories to "
                                    "compare (none: the tiny demo ViT)")
    host: str = option("127.0.0.1", help="address to bind (0.0.0.0 exposes the page to your "
                       "network)")
    port: int | None = option(None, help="port (none: Gradio's, 7860 or the next free one)")
    device: str = option("cpu", help="torch device")
    cache_dir: str | None = option(None, help="Hugging Face cache directory (none: the hub's)")

    def __call__(self) -> int:
        from fit3d_hub.app import launch

        launch(list(self.model), host=self.host, port=self.port, cache_dir=self.cache_dir,
               device=self.device)
        return 0


COMMANDS: dict[str, tuple[type, str]] = {
    "list": (ListArgs, "list the registry's backbones"),
    "methods": (MethodsArgs, "list the 3D-aware methods"),
    "download": (DownloadArgs, "fetch a backbone's weights into the Hugging Face cache"),
    "convert": (ConvertArgs, "turn an authors' checkpoint into the repo format"),
    "push": (PushArgs, "upload a repo directory to the Hugging Face Hub"),
    "card": (CardArgs, "render a repo directory's model card (README.md)"),
    "features": (FeaturesArgs, "PCA picture of original vs fine-tuned features"),
    "layers": (LayersArgs, "a GMAE model's depth layers, figure-ground and edges of an image"),
    "demo": (DemoArgs, "a method's whole pipeline on synthetic scenes, offline, on CPU"),
    "app": (AppArgs, "the feature explorer: a local web page comparing backbones"),
}


def _load(target: str) -> Callable[..., Any]:
    """``module:function`` -> the function."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def build_parser() -> commandline.OneLineParser:
    parser = commandline.new_parser(
        PROG, "3D-aware vision backbones: list, fetch, convert, publish, inspect, demo.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=commandline.OneLineParser)
    for name, (cls, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=inspect.getdoc(cls),
                           formatter_class=parser.formatter_class)
        commandline.add_options(p, cls)
        p.set_defaults(_command=cls, _parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fit3d-hub`` console script."""
    values = build_parser().parse_args(argv)
    try:
        command = commandline.build(values._command, values)
    except FiT3DError as err:
        values._parser.error(str(err))
    return commandline.run(f"{PROG} {values.command}", command)


if __name__ == "__main__":
    sys.exit(main())
