"""The feature explorer: shared-basis PCA (the same 3D point gets the same colour in two
views), bounded uploads, matching, the `features` command with several images, and the page
itself in a real headless Chromium (Debian's chromium + chromium-driver)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fit3d_hub.explorer import TINY, Explorer, ExplorerInputError, read_upload
from fit3d_hub.pca import pca_rgb, pca_rgb_shared
from scenes.correspondence import correspondences
from scenes.io import load_depth
from scenes.load import load_scene
from scenes.synthetic import generate

ARTEFACTS = Path(os.environ.get("FIT3D_TEST_ARTEFACTS", ""))


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("app") / "scenes", scenes=1, views=8, size=96,
                    seed=2)[0]


def test_shared_pca_gives_one_3d_point_one_colour_in_two_views(scene):
    """Features that are a function of the 3D point (one-hot object labels and a smooth code
    of the surface's height) look alike in both views under one shared basis; under a basis
    per image they do not, because each view shows the objects in other proportions."""
    loaded = load_scene(scene)
    a, b = loaded.frames[0], loaded.frames[3]
    maps, size = [], (a.camera.height, a.camera.width)
    for frame in (a, b):
        labels = np.asarray(Image.open(frame.label_path))
        onehot = torch.nn.functional.one_hot(torch.from_numpy(labels.astype(np.int64)), 32)
        maps.append(onehot.permute(2, 0, 1).float())
    matches = correspondences(a.camera, load_depth(a.depth_path, a.depth_scale), b.camera,
                              load_depth(b.depth_path, b.depth_scale))
    ua, ub = matches.uv_a.astype(int), matches.uv_b.astype(int)

    def colour_gap(pictures):
        pa, pb = (p.astype(np.float64) for p in pictures)
        return np.abs(pa[ua[:, 1], ua[:, 0]] - pb[ub[:, 1], ub[:, 0]]).mean()

    shared = colour_gap(pca_rgb_shared(maps, [size, size]))
    separate = colour_gap([pca_rgb(m) for m in maps])
    assert shared < 12, shared  # of 255: the same colour up to label edges
    assert separate > 2 * shared, (separate, shared)


def test_shared_pca_of_one_map_is_pca_rgb_and_sizes_upsample():
    torch.manual_seed(0)
    f = torch.randn(16, 6, 8)
    assert np.array_equal(pca_rgb_shared([f])[0], pca_rgb(f))
    big = pca_rgb_shared([f, f], [(24, 32), (6, 8)])
    assert big[0].shape == (24, 32, 3) and big[1].shape == (6, 8, 3)
    with pytest.raises(ValueError, match="different widths"):
        pca_rgb_shared([f, torch.randn(8, 6, 8)])


def test_uploads_are_reduced_and_bad_ones_are_one_line(tmp_path):
    big = tmp_path / "big.jpg"
    Image.new("RGB", (5472, 3648), (40, 90, 200)).save(big, quality=80)  # 20 megapixels
    image = read_upload(big)
    assert max(image.size) == 512 and image.mode == "RGB"
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 60), 40000, np.uint16)).save(deep)  # 16-bit grey
    grey = np.asarray(read_upload(deep))
    assert abs(int(grey[0, 0, 0]) - round(40000 / 65535 * 255)) <= 1  # scaled, not clipped
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ExplorerInputError, match="notes.png: not an image"):
        read_upload(text)
    header = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(header)  # 400 MP of zeros, a few KB
    with pytest.raises(ExplorerInputError, match="over the 150,000,000-pixel limit"):
        read_upload(header)


def test_explorer_caches_models_and_features_and_matches_itself(scene):
    explorer = Explorer([TINY])
    image = read_upload(scene / "images" / "frame_0000.png")
    first = explorer.features(TINY, image)
    assert explorer.features(TINY, image) is first  # cached per model and image
    assert set(first) == {"original", "finetuned", "concat"}
    matches = explorer.match(TINY, image, image, (30.5, 20.5))
    for m in matches.values():  # an image matched against itself finds the query's pixel
        assert m["score"] == pytest.approx(1.0, abs=1e-4)
        assert m["similarity"].shape == (image.height, image.width)
    with pytest.raises(ExplorerInputError, match="not one of this page's models"):
        explorer.load("someone/else")


def test_features_command_takes_several_images_in_one_basis(scene, tmp_path, capsys):
    from fit3d_hub.cli import main
    from fit3d_hub.tiny import demo_backbone

    demo_backbone(0).save_pretrained(tmp_path / "model", include_base=True)
    images = [str(scene / "images" / f"frame_000{i}.png") for i in (0, 3)]
    out = tmp_path / "pca.png"
    assert main(["features", *images, "--model", str(tmp_path / "model"), "--output",
                 str(out)]) == 0
    assert "2 image(s), one PCA basis per branch" in capsys.readouterr().out
    with Image.open(out) as picture:
        assert picture.height > 2 * 72  # one row per image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium():
    """A headless Debian Chromium under Selenium, or a skip naming what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    binary = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install "
                    "chromium chromium-driver; .ci/run installs them)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,2200", "--disable-gpu"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_the_page_in_a_real_browser(scene, tmp_path):
    pytest.importorskip("gradio", reason="the app extra is not installed")
    browser = _chromium()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from fit3d_hub.app import launch

    port = _free_port()
    page = launch([TINY], port=port, block=False)
    try:
        wait = WebDriverWait(browser, 60)
        browser.get(f"http://127.0.0.1:{port}/")
        wait.until(ec.presence_of_element_located((By.ID, "compare")))
        uploads = browser.find_elements(By.CSS_SELECTOR, "input[type=file]")
        assert len(uploads) >= 2
        uploads[0].send_keys(str(scene / "images" / "frame_0000.png"))
        uploads[1].send_keys(str(scene / "images" / "frame_0003.png"))
        time.sleep(1.0)  # the uploads finish before the click reads them
        wait.until(ec.element_to_be_clickable((By.ID, "compare"))).click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#pca img")) >= 6)
        target = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#view-a img")))
        ActionChains(browser).move_to_element_with_offset(target, 5, 5).click().perform()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#matches img")) >= 3)
        assert "query (" in browser.find_element(By.ID, "status").text
        shot = tmp_path / "app.png"
        browser.save_screenshot(str(shot))
        if str(ARTEFACTS):
            ARTEFACTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, ARTEFACTS / "app.png")
        with Image.open(shot) as img:
            assert img.width > 600
        # a non-image upload is one line in the page, not a stack trace
        bad = tmp_path / "notes.png"
        bad.write_text("not an image")
        browser.get(f"http://127.0.0.1:{port}/")  # a fresh page: empty upload fields
        wait.until(ec.presence_of_element_located((By.ID, "compare")))
        browser.find_elements(By.CSS_SELECTOR, "input[type=file]")[0].send_keys(str(bad))
        time.sleep(1.0)
        browser.find_element(By.ID, "compare").click()
        wait.until(lambda d: "not an image" in d.find_element(By.ID, "status").text)
        assert "Traceback" not in browser.page_source
    finally:
        browser.quit()
        page.close()


def test_a_gmae_model_shows_its_encoder_and_its_layers(scene, tmp_path):
    from training.gmae.cli import main as train_gmae

    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((scene / "images").iterdir())[:4]:
        shutil.copy(path, images / path.name)
    assert train_gmae(["--images", str(images), "--output", str(tmp_path / "gmae"),
                       "--epochs", "1", "--architecture", "vit_small_patch16_224",
                       "--embed-dim", "32", "--depth", "1", "--num-heads", "2",
                       "--patch-size", "8", "--image-size", "16", "--num-gaussians", "16",
                       "--decoder-dim", "16", "--decoder-depth", "1", "--decoder-heads", "2",
                       "--batch-size", "2", "--workers", "0", "--backend", "torch"]) == 0
    name = str(tmp_path / "gmae")
    explorer = Explorer([name, TINY])
    image = read_upload(scene / "images" / "frame_0000.png")
    assert set(explorer.features(name, image)) == {"finetuned"}  # one network, no original
    panel = explorer.layers(name, image, count=3)
    assert panel is not None and panel.ndim == 3 and panel.shape[1] > 6 * 100  # 6 panels
    assert explorer.layers(TINY, image) is None
    assert "Gaussian Masked Autoencoder" in explorer.load(name).summary


@pytest.mark.parametrize("size", ["0", "-5", "20000"])
def test_features_refuses_sizes_out_of_range_in_one_line(tmp_path, capsys, size):
    from fit3d_hub.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["features", "x.png", "--model", "m", "--output", str(tmp_path / "o.png"),
              "--size", size])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--size must be between 1 and 4096" in err
    assert err.count("\n") == 1


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    """A 16-bit grey PNG (depth-camera style): Pillow's convert("RGB") turns every value
    above 255 white; the scenes reader and the explorer scale it."""
    from scenes.io import load_image

    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as raw:
        clipped = np.asarray(raw.convert("RGB"))
    assert (clipped == 255).mean() > 0.9  # what the old reading did
    scaled = load_image(path)
    assert scaled.shape == (48, 64, 3) and (scaled == 255).mean() < 0.01
    assert abs(int(scaled[24, 32, 0]) - round(ramp[24, 32] / 65535 * 255)) <= 1
    assert np.array_equal(np.asarray(read_upload(path)), scaled)
