"""``fit3d-hub app``: the feature explorer as a local web page (Gradio, the Hugging Face
Spaces convention; ``pip install "fit3d-hub[app]"``). ``app.py`` at the repo root runs the same
page as a Space. The work is :mod:`fit3d_hub.explorer`'s; this module only lays it out."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fit3d_hub.errors import FiT3DError
from fit3d_hub.explorer import (
    TINY,
    Explorer,
    heat_overlay,
    mark,
    read_upload,
    synthetic_views,
)

INTRO = """# fit3d-hub feature explorer
Upload two views of one scene (or load the synthetic ones). **Compare** draws each model's
features as PCA pictures, **one basis per variant shared across both images**, so equal
colours mean equal features across views: a 3D-aware backbone paints the same 3D point the
same colour from every view. Then **click a point in image A**: each variant's best match in
image B (nearest neighbour on L2-normalised features) and its similarity map appear below."""


def gradio():
    """The ``gradio`` module, or one line saying how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls out from the page
    try:
        import gradio as gr
    except ImportError:
        raise FiT3DError('the feature explorer needs Gradio: pip install "fit3d-hub[app]"') \
            from None
    return gr


def _open(path: str | None, label: str) -> Image.Image:
    if not path:
        raise FiT3DError(f"{label}: upload an image first")
    return read_upload(path)


def build_app(explorer: Explorer, examples: list[Path] | None = None):
    """The page (a ``gradio.Blocks``) over ``explorer``."""
    gr = gradio()
    examples = examples or []

    def compare(models: list[str], path_a: str | None, path_b: str | None):
        """PCA pictures of both images for every chosen model, shared basis per variant."""
        try:
            images = [_open(path_a, "image A")] + ([_open(path_b, "image B")] if path_b else [])
            if not models:
                raise FiT3DError("choose at least one model")
            gallery, lines, layers = [], [], None
            for name in models:
                start = time.perf_counter()
                pictures = explorer.pca(name, images)
                loaded = explorer.load(name)
                for variant, pics in pictures.items():
                    for which, pic in zip("AB", pics, strict=False):
                        gallery.append((pic, f"{name} · {variant} · image {which}"))
                if layers is None:
                    layers = explorer.layers(name, images[0])
                lines.append(f"{loaded.summary}. Loaded in {loaded.seconds:.2f} s; features "
                             f"and PCA in {time.perf_counter() - start:.2f} s.")
            shown = [np.asarray(im) for im in images] + [None] * (2 - len(images))
            return (shown[0], shown[1], gallery, "\n\n".join(lines),
                    gr.update(value=layers, visible=layers is not None))
        except FiT3DError as err:  # one line in the page, never a stack trace
            return None, None, [], f"**Error:** {err}", gr.update(visible=False)

    def on_click(models: list[str], path_a: str | None, path_b: str | None, evt):
        """Best match and similarity map in image B of the clicked pixel of image A."""
        try:
            image_a, image_b = _open(path_a, "image A"), _open(path_b, "image B")
            xy = (float(evt.index[0]) + 0.5, float(evt.index[1]) + 0.5)
            gallery = []
            for name in models:
                for variant, m in explorer.match(name, image_a, image_b, xy).items():
                    gallery.append((heat_overlay(image_b, m["similarity"], m["xy"]),
                                    f"{name} · {variant} · match ({m['xy'][0]:.0f}, "
                                    f"{m['xy'][1]:.0f}), cosine {m['score']:.3f}"))
            return np.asarray(mark(image_a, xy, "#ff00ff")), gallery, \
                f"query ({xy[0]:.0f}, {xy[1]:.0f}) in image A"
        except FiT3DError as err:
            return gr.update(), [], f"**Error:** {err}"

    # Gradio passes the click as the argument annotated SelectData (set here: gradio is
    # imported lazily, so a string annotation would not resolve)
    on_click.__annotations__["evt"] = gr.SelectData

    def load_examples():
        return (str(examples[0]), str(examples[1])) if len(examples) >= 2 else (None, None)

    with gr.Blocks(title="fit3d-hub feature explorer") as page:
        gr.Markdown(INTRO)
        models = gr.CheckboxGroup(explorer.names, value=explorer.names[:1], label="models",
                                  elem_id="models")
        with gr.Row():
            file_a = gr.File(label="image A", file_types=["image"], type="filepath",
                             elem_id="upload-a")
            file_b = gr.File(label="image B", file_types=["image"], type="filepath",
                             elem_id="upload-b")
        with gr.Row():
            run = gr.Button("Compare", variant="primary", elem_id="compare")
            if len(examples) >= 2:
                example = gr.Button("Load the synthetic views", elem_id="examples")
                example.click(load_examples, outputs=[file_a, file_b])
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            view_a = gr.Image(label="image A: click a point", interactive=False, height=320,
                              elem_id="view-a")
            view_b = gr.Image(label="image B", interactive=False, height=320,
                              elem_id="view-b")
        pca = gr.Gallery(label="PCA, one basis per variant shared across the images",
                         columns=6, elem_id="pca")
        matches = gr.Gallery(label="best match in image B and similarity (red: most similar)",
                             columns=3, elem_id="matches")
        layers = gr.Image(label="GMAE: depth-ordered layers, depth, figure-ground, edges",
                          visible=False, interactive=False, elem_id="layers")
        run.click(compare, inputs=[models, file_a, file_b],
                  outputs=[view_a, view_b, pca, status, layers])
        view_a.select(on_click, inputs=[models, file_a, file_b],
                      outputs=[view_a, matches, status])
    return page


def launch(models: list[str], *, host: str = "127.0.0.1", port: int | None = None,
           cache_dir: str | None = None, device: str = "cpu", block: bool = True):
    """Start the page; returns the Gradio ``Blocks`` (its ``local_url`` says where)."""
    gradio()
    explorer = Explorer(models or [TINY], device=device, cache_dir=cache_dir)
    examples = synthetic_views(tempfile.mkdtemp(prefix="fit3d-explorer-"))
    page = build_app(explorer, examples)
    page.queue(default_concurrency_limit=2)
    page.launch(server_name=host, server_port=port, prevent_thread_lock=not block,
                ssr_mode=False, quiet=not block, footer_links=["gradio"])
    return page
