"""GMAE as a library call: build the encoder and decoder, train on the images, write the repo
(:func:`run_gmae`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from fit3d_hub.backbone import create_vit
from fit3d_hub.gmae import build_decoder
from fit3d_hub.registry import IMAGENET_MEAN, IMAGENET_STD
from fit3d_hub.render.backends import resolve_backend
from fit3d_hub.schema import Fit3DBlock, GmaeSpec
from training.common.export import export_repo, owned_run, provenance, run_settings
from training.common.loop import CHECKPOINTS, progress_bar
from training.gmae.config import GmaeConfig, GmaeRun
from training.gmae.data import Augment, TrainingImages, hf_images, list_images
from training.gmae.model import GMAE, fix_position_embedding
from training.gmae.trainer import train

METHOD = "gmae"
COMMAND = "training.gmae"


def build_model(config: GmaeConfig, backend: str = "auto") -> GMAE:
    """The encoder (a timm ViT with MAE's fixed position code) and the decoder, seeded."""
    torch.manual_seed(config.seed)
    encoder = create_vit(config.architecture, config.model_args())
    fix_position_embedding(encoder)
    if config.image_size % int(encoder.patch_embed.patch_size[0]):
        raise ValueError(f"--image-size {config.image_size} is not a multiple of the patch "
                         f"size {encoder.patch_embed.patch_size[0]}")
    decoder = build_decoder(gmae_spec(config), encoder)
    return GMAE(encoder, decoder, mask_ratio=config.mask_ratio,
                scale_factor=config.scale_factor, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                backend=backend)


def gmae_spec(config: GmaeConfig) -> GmaeSpec:
    return GmaeSpec(decoder=config.decoder, num_gaussians=config.num_gaussians,
                    dim=config.decoder_dim, depth=config.decoder_depth,
                    heads=config.decoder_heads, scale_factor=config.scale_factor,
                    image_size=config.image_size, mask_ratio=config.mask_ratio)


def training_images(run: GmaeRun, config: GmaeConfig, patch: int) -> TrainingImages:
    source = hf_images(run.images, run.cache_dir) if run.images.startswith("hf:") \
        else list_images(run.images)
    augment = Augment(config.image_size, config.crop_scale, IMAGENET_MEAN, IMAGENET_STD)
    return TrainingImages(source, augment, seed=config.seed, min_side=patch,
                          max_pixels=run.max_pixels, skip_unreadable=run.skip_unreadable)


def run_gmae(run: GmaeRun, config: GmaeConfig, *, progress: bool = True,
             log: Callable[[str], None] = print) -> dict:
    """Train on ``run.images`` and write the repo ``run.output``; returns the summary."""
    return owned_run(
        run.output, lambda accelerator: _train(accelerator, run, config, progress, log),
        command=COMMAND, settings={"run": run_settings(run), "config": config.to_json()},
        resume=run.resume, overwrite=run.overwrite, log=log,
        mixed_precision=run.mixed_precision, gradient_accumulation_steps=config.grad_accum)


def _train(accelerator, run, config, progress: bool, log: Callable[[str], None]) -> dict:
    """The run's work, in the session that owns its output."""
    backend = resolve_backend(run.backend)
    model = build_model(config, backend)
    images = training_images(run, config, model.patch)
    output = Path(run.output)
    if accelerator.is_main_process:
        log(f"{len(images)} images, {config.decoder} decoder"
            f"{f' ({config.num_gaussians} Gaussians)' if config.decoder == 'gaussians' else ''}"
            f", {config.epochs} epochs")
    bar = progress_bar("gmae", None, progress and accelerator.is_local_main_process)

    def on_step(record: dict) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", epoch=record["epoch"],
                        img_s=f"{record['images_per_s']:.1f}", refresh=False)

    try:
        summary = train(accelerator, model, images, config, workers=run.workers,
                        checkpoint_dir=output / CHECKPOINTS, resume=run.resume,
                        settings={"images": str(run.images), "count": len(images),
                                  "mixed_precision": run.mixed_precision,
                                  "backend": backend},
                        on_step=on_step)
    finally:
        bar.close()
    if summary["skipped_images"] and accelerator.is_main_process:
        log(f"skipped {summary['skipped_images']} unreadable image reads")
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(model)
        encoder = trained.encoder
        block = Fit3DBlock(base_model=config.architecture, gmae=gmae_spec(config),
                           mean=IMAGENET_MEAN, std=IMAGENET_STD)
        training = provenance(COMMAND, method=METHOD, backbone=config.architecture,
                              scenes=[str(run.images)], views=len(images),
                              summary=summary, hyperparameters=config.to_json(),
                              mixed_precision=run.mixed_precision)
        export_repo(output, None, encoder, method=METHOD, training=training,
                    decoder=trained.decoder, block=block, log=log,
                    summary={**summary, "config": config.to_json()})
    return summary
