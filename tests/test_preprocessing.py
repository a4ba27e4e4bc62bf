"""One preprocessing path: the teacher, Stage 2 and users feed a backbone the same tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fit3d_hub import FiT3D, get_transform
from fit3d_hub.backbone import create_vit
from fit3d_hub.transforms import (
    denormalize,
    normalize,
    patch_floor,
    preprocess_images,
    resize_images,
)
from scenes.io import load_image
from scenes.load import load_scene
from scenes.synthetic import generate
from training.fit3d.finetune.data import LiftedRecord, load_lifted_scene
from training.fit3d.finetune.targets import make_sample
from training.fit3d.lift.gaussians import FeatureGaussians
from training.fit3d.lift.record import LiftedMeta, output_path, read_meta, save_lifted
from training.fit3d.lift.teacher import compute_teacher_features, teacher_inputs

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_preprocess_is_the_authors_rule_floor_bilinear_then_imagenet_normalisation():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (2, 3, 45, 100), dtype=np.uint8))
    out = preprocess_images(images, MEAN, STD, 14)
    assert out.shape == (2, 3, 42, 98) and patch_floor(45, 100, 14) == (42, 98)
    by_hand = F.interpolate(images.float() / 255, size=(42, 98), mode="bilinear",
                            align_corners=False)  # no antialiasing, as the authors resize
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(out, (by_hand - mean) / std)
    # uint8 and [0, 1] floats are the same input; denormalize inverts normalize
    torch.testing.assert_close(preprocess_images(images.float() / 255, MEAN, STD, 14), out)
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(denormalize(normalize(x, MEAN, STD), MEAN, STD), x)
    assert resize_images(x, (8, 8)) is x


@pytest.mark.parametrize("downscale", [1.0, 2.0])
def test_stage2_input_is_the_one_path_and_the_teachers_input(tmp_path, downscale):
    scene_dir = generate(tmp_path / "scenes", scenes=1, views=4, size=96, seed=0)[0]
    scene = load_scene(scene_dir)
    torch.manual_seed(0)
    vit = create_vit("vit_small_patch8_224", {"embed_dim": 16, "depth": 1, "num_heads": 2,
                                              "img_size": 48})
    teacher = FiT3D(vit, None, mode="original")
    seen = []
    forward = teacher.forward_features

    def recording(x):
        seen.append(x.clone())
        return forward(x)

    teacher.forward_features = recording
    cam = scene.frames[0].camera.scaled(downscale)
    size = (cam.width, cam.height)
    # what training.fit3d.lift feeds the teacher: the images at the downscaled size
    images = [load_image(f.image_path, size) for f in scene.frames]
    compute_teacher_features(teacher, torch.from_numpy(np.stack(images)))
    teacher_input = torch.cat(seen)

    gaussians = FeatureGaussians.initialise(scene, feature_dim=8, teacher_dim=16, sh_degree=0,
                                            max_points=300)
    save_lifted(output_path(tmp_path / "lifted", scene.name), gaussians,
                LiftedMeta(scene.name, len(scene.frames), (cam.width, cam.height),
                           downscale=downscale))
    lifted = load_lifted_scene(LiftedRecord(output_path(tmp_path / "lifted", scene.name),
                                            read_meta(output_path(tmp_path / "lifted",
                                                                  scene.name)), scene_dir))
    transform = get_transform(teacher)
    for view in range(len(scene.frames)):
        sample = make_sample(lifted, view, False, transform, "torch", torch.device("cpu"))
        one_path = preprocess_images(
            torch.from_numpy(images[view]).permute(2, 0, 1)[None], transform.mean,
            transform.std, 8)[0]
        assert torch.equal(sample.image, one_path)
        assert torch.equal(sample.image, teacher_input[view])
        assert torch.equal(sample.image,
                           teacher_inputs(teacher, torch.from_numpy(images[view])[None])[0])
        assert sample.image.shape[-1] == cam.width // 8 * 8
        # ImageNet-normalised, not [0, 1]
        assert sample.image.min() < -0.5
    flipped = make_sample(lifted, 1, True, transform, "torch", torch.device("cpu"))
    assert torch.equal(flipped.image, teacher_input[1].flip(-1))
