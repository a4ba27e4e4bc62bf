"""The feature explorer's work, without any web framework: bounded image reading, one model
load per model, feature maps cached per image, PCA pictures in one basis per variant shared
across the shown images, click-to-match with a similarity heat map, GMAE layers.
:mod:`fit3d_hub.app` puts a Gradio page on top; tests drive this directly."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, UnidentifiedImageError

from fit3d_hub.errors import FiT3DError
from fit3d_hub.images import to_rgb8

TINY = "tiny-demo"
"""The model name that builds the demos' tiny random ViT on the spot (offline)."""
MAX_SIDE = 512
"""Longest side an upload is reduced to before anything looks at it."""
MAX_PIXELS = 150_000_000
"""Uploads declaring more pixels than this are refused from the header alone."""
FEATURE_CACHE = 64
"""Feature maps kept (per model and image)."""


class ExplorerInputError(FiT3DError, ValueError):
    """An upload that is not an image the explorer can read."""


def read_upload(path: str | Path, max_side: int = MAX_SIDE) -> Image.Image:
    """An uploaded file as an RGB image whose longest side is at most ``max_side``.

    The size comes from the header first; JPEGs are decoded at a reduced scale (``draft``),
    other formats reduced right after decoding, so a 20-megapixel upload never sits in
    memory at full size as floats. 16-bit images are scaled to 8 bits, not clipped.
    """
    name = Path(path).name
    try:
        image = Image.open(path)
    except Image.DecompressionBombError:  # Pillow's own limit, from the header too
        raise ExplorerInputError(f"{name}: over the {MAX_PIXELS:,}-pixel limit (refused "
                                 "from its header)") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ExplorerInputError(f"{name}: not an image this explorer can read "
                                 f"({type(err).__name__})") from None
    if image.width * image.height > MAX_PIXELS:
        raise ExplorerInputError(f"{name}: {image.width}x{image.height} pixels is over the "
                                 f"{MAX_PIXELS:,}-pixel limit (refused from its header)")
    try:
        image.draft("RGB", (max_side, max_side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
        image = to_rgb8(image)
        image.thumbnail((max_side, max_side), Image.BILINEAR, reducing_gap=2.0)
    except (OSError, ValueError, SyntaxError) as err:
        raise ExplorerInputError(f"{name}: a damaged or truncated image ({err})") from None
    return image


def image_key(image: Image.Image) -> str:
    return hashlib.sha1(image.tobytes() + repr(image.size).encode()).hexdigest()


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    seconds: float
    summary: str


class Explorer:
    """The models a page compares; loads each once (thread-safe) and caches feature maps."""

    def __init__(self, models: list[str], *, device: str = "cpu", cache_dir: str | None = None):
        self.names = list(dict.fromkeys(models)) or [TINY]
        self.device, self.cache_dir = device, cache_dir
        self._models: dict[str, LoadedModel] = {}
        self._features: OrderedDict[tuple[str, str], dict[str, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()
        self._load_locks = {name: threading.Lock() for name in self.names}

    def load(self, name: str) -> LoadedModel:
        """The model ``name`` (a registry name, hub repo, local repo or :data:`TINY`)."""
        if name not in self._load_locks:
            raise ExplorerInputError(f"{name}: not one of this page's models "
                                     f"({', '.join(self.names)})")
        with self._load_locks[name]:
            if name not in self._models:
                start = time.perf_counter()
                model = self._build(name)
                summary = (f"**{TINY}**: the demos' tiny random ViT (random weights; its two "
                           "branches are the same network), built offline"
                           if name == TINY else summarise(name, model))
                self._models[name] = LoadedModel(name, model, time.perf_counter() - start,
                                                 summary)
        return self._models[name]

    def _build(self, name: str) -> torch.nn.Module:
        if name == TINY:
            from fit3d_hub.model import FiT3D
            from fit3d_hub.tiny import demo_backbone

            tiny = demo_backbone(0)
            return FiT3D(tiny.original, tiny.finetuned, mode="concat").to(self.device).eval()
        from fit3d_hub.loading import load_fit3d

        return load_fit3d(name, device=self.device, cache_dir=self.cache_dir).eval()

    @staticmethod
    def variants(model: torch.nn.Module) -> list[str]:
        """What to show of a model: its two branches and their concatenation, or its one
        network."""
        if getattr(model, "original", None) is None:
            return ["finetuned"]
        return ["original", "finetuned", "concat"]

    def features(self, name: str, image: Image.Image) -> dict[str, torch.Tensor]:
        """Each variant's ``(C, h, w)`` map of ``image`` (cached per model and image)."""
        key = (name, image_key(image))
        with self._lock:
            if key in self._features:
                self._features.move_to_end(key)
                return self._features[key]
        loaded = self.load(name)
        from fit3d_hub.transforms import get_transform

        model = loaded.model
        x = get_transform(model)(image)[None].to(self.device)
        with torch.inference_mode():
            out = model.forward_features(x)
        maps = {}
        for variant in self.variants(model):
            if variant == "concat":
                maps[variant] = torch.cat([out.original[0], out.finetuned[0]]).cpu().float()
            else:
                maps[variant] = getattr(out, variant)[0].cpu().float()
        with self._lock:
            self._features[key] = maps
            while len(self._features) > FEATURE_CACHE:
                self._features.popitem(last=False)
        return maps

    def pca(self, name: str, images: list[Image.Image]) -> dict[str, list[np.ndarray]]:
        """Per variant, one PCA picture per image at image resolution, in one basis shared
        across ``images``."""
        from fit3d_hub.pca import pca_rgb_shared

        per_image = [self.features(name, im) for im in images]
        sizes = [(im.height, im.width) for im in images]
        return {v: pca_rgb_shared([f[v] for f in per_image], sizes)
                for v in per_image[0]}

    def match(self, name: str, image_a: Image.Image, image_b: Image.Image,
              xy: tuple[float, float]) -> dict[str, dict]:
        """Per variant, the pixel of ``image_b`` whose feature is nearest (cosine, on
        L2-normalised features upsampled to the image, as ``eval.correspondence`` matches) to
        the feature at ``xy`` of ``image_a``, and the similarity map over ``image_b``."""
        from fit3d_hub.sampling import sample_features

        fa, fb = self.features(name, image_a), self.features(name, image_b)
        out = {}
        for variant in fa:
            query = sample_features(fa[variant], np.array([xy], np.float64), *image_a.size)[0]
            dense = F.interpolate(fb[variant][None], size=(image_b.height, image_b.width),
                                  mode="bilinear", align_corners=False)[0]
            sim = torch.einsum("c,chw->hw", query, F.normalize(dense, dim=0))
            best = int(sim.argmax())
            out[variant] = {"xy": (best % image_b.width + 0.5, best // image_b.width + 0.5),
                            "similarity": sim.numpy(), "score": float(sim.max())}
        return out

    def layers(self, name: str, image: Image.Image, count: int = 4) -> np.ndarray | None:
        """A GMAE model's depth layers, depth, figure-ground and edges side by side (None for
        other models)."""
        model = self.load(name).model
        spec = getattr(getattr(model, "fit3d_block", None), "gmae", None)
        if spec is None or spec.decoder != "gaussians":
            return None
        from fit3d_hub.pca import side_by_side

        panels = layer_panels(model, image, count)
        return np.asarray(side_by_side(panels, 160))


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """A (1, 1|3, H, W) map in [0, 1] as (H, W, 3) uint8."""
    t = t[0].expand(3, -1, -1) if t.shape[1] == 1 else t[0]
    return (t.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def layer_panels(model, image, layers: int = 4) -> list[tuple[str, np.ndarray]]:
    """A GMAE model's zero-shot view of a PIL ``image`` at its training size, as titled
    (H, W, 3) uint8 panels: the nearest ``layers`` depth-ordered layers, the rendered depth
    (normalised), the figure-ground mask and the depth edges (``fit3d-hub layers`` and the
    explorer draw these)."""
    from fit3d_hub.gmae import depth_layers, depth_maps, image_gaussians
    from fit3d_hub.transforms import preprocess_images

    spec = model.fit3d_block.gmae
    side = spec.image_size
    rgb = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    mean, std = model.normalization
    x = preprocess_images(rgb, mean, std, model.patch_size, (side, side))
    with torch.no_grad():
        gaussians = image_gaussians(model, x)
        shown = depth_layers(gaussians, side, side, layers)
        maps = depth_maps(gaussians, side, side)
    depth = maps["depth"]
    depth = (depth - depth.min()) / (depth.max() - depth.min()).clamp_min(1e-6)
    return [*((f"nearest {j + 1}/{layers}", to_uint8(t)) for j, t in enumerate(shown)),
            ("depth", to_uint8(depth)), ("figure", to_uint8(maps["foreground"])),
            ("edges", to_uint8(maps["edges"]))]


def summarise(name: str, model: torch.nn.Module) -> str:
    """One line about a loaded model: its method (from the methods registry), base and width."""
    from fit3d_hub.methods import METHODS

    block = getattr(model, "fit3d_block", None)
    method = METHODS.get(getattr(block, "method", None) or "")
    title = method.title if method else "the demos' tiny random ViT"
    summary = f" ({method.summary})" if method else ""
    width = getattr(model, "embed_dim", "?")
    return f"**{name}**: {title}{summary}; patch {model.patch_size}, width {width}"


def heat_overlay(image: Image.Image, similarity: np.ndarray, xy: tuple[float, float]
                 ) -> np.ndarray:
    """``image`` tinted by ``similarity`` (red = most similar) with a marker at ``xy``."""
    sim = (similarity - similarity.min()) / max(float(np.ptp(similarity)), 1e-8)
    base = np.asarray(image, dtype=np.float32)
    heat = np.stack([sim, np.zeros_like(sim), 1 - sim], -1) * 255
    mixed = Image.fromarray((0.45 * base + 0.55 * heat).round().astype(np.uint8))
    return np.asarray(mark(mixed, xy))


def mark(image: Image.Image, xy: tuple[float, float], colour: str = "#00ff00") -> Image.Image:
    """A copy of ``image`` with a ring and cross at ``xy``."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    r = max(4, min(out.size) // 40)
    x, y = xy
    draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=2)
    draw.line((x - 2 * r, y, x + 2 * r, y), fill=colour, width=1)
    draw.line((x, y - 2 * r, x, y + 2 * r), fill=colour, width=1)
    return out


SYNTHETIC = "scenes.synthetic"
"""The source checkout's scene generator, named by dotted path (``scenes`` is not in the
wheel, and the package imports nothing of the checkout)."""


def synthetic_views(folder: str | Path, count: int = 3, size: int = 192) -> list[Path]:
    """Views of one synthetic scene, from the source checkout (or a Space of it); an empty
    list for a wheel install."""
    import importlib

    from fit3d_hub.checkout import source_root

    try:
        source_root()
    except FiT3DError:
        return []
    generate = importlib.import_module(SYNTHETIC).generate
    scene = generate(Path(folder), scenes=1, views=8, size=size, seed=0)[0]
    return sorted((scene / "images").iterdir())[:count]
