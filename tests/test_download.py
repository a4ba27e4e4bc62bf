"""`fit3d-hub download` against a loopback hub: the real hf_hub_download path fills the cache,
and the offline load afterwards reads exactly what was downloaded."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import by_hand, tiny_vit
from hub_server import FakeHub

from fit3d_hub import FiT3D, load_fit3d
from fit3d_hub.schema import BaseRef, Fit3DBlock
from fit3d_hub.weights import save_state_dict

X = torch.randn(1, 3, 28, 28)


def _cli(endpoint: str, cache, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.run([sys.executable, "-m", "fit3d_hub.cli", "download", *args,
                           "--cache-dir", str(cache)], env=env, capture_output=True, text=True,
                          check=False, timeout=120)


@pytest.fixture
def hub(tmp_path, tiny_pair):
    """A hub with a repo that points at a separately hosted base, at two revisions."""
    original, finetuned = tiny_pair
    hub = FakeHub()
    base = save_state_dict(original.state_dict(), tmp_path / "base.safetensors").read_bytes()
    hub.add("timm/tiny-base", {"model.safetensors": base})
    model = FiT3D(original, finetuned)
    model.fit3d_block = Fit3DBlock(base=BaseRef("timm/tiny-base"))
    model.save_pretrained(tmp_path / "v1")
    hub.add("someone/fit3d-tiny", {p.name: p.read_bytes() for p in (tmp_path / "v1").iterdir()})
    model.finetuned = tiny_vit(9)
    model.save_pretrained(tmp_path / "v2")
    hub.add("someone/fit3d-tiny",
            {p.name: p.read_bytes() for p in (tmp_path / "v2").iterdir()}, revision="v2")
    return hub


def test_download_then_offline_load(hub, tiny_pair, tmp_path):
    cache = tmp_path / "cache"
    with hub.serve() as endpoint:
        proc = _cli(endpoint, cache, "someone/fit3d-tiny")
        assert proc.returncode == 0, proc.stderr
        assert "fine-tuned:" in proc.stdout and "original:" in proc.stdout
        proc = _cli(endpoint, cache, "someone/fit3d-tiny", "--revision", "v2")
        assert proc.returncode == 0, proc.stderr
    fetched = {r.split()[1].split("/resolve/")[1] for r in hub.requests if r.startswith("GET")}
    # each save stamps its own id into config.json, so v2's config is fetched too
    assert fetched == {"main/config.json", "main/model.safetensors", "v2/config.json",
                       "v2/model.safetensors"}
    assert any("tiny-base/resolve/main/model.safetensors" in r for r in hub.requests)

    served = len(hub.requests)
    # The hub is gone now: loading must come from the cache alone.
    loaded = load_fit3d("someone/fit3d-tiny", cache_dir=cache)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), by_hand(*tiny_pair, X), rtol=0, atol=0)
        v2 = load_fit3d("someone/fit3d-tiny", cache_dir=cache, revision="v2")
        torch.testing.assert_close(v2(X), by_hand(tiny_pair[0], tiny_vit(9), X), rtol=0, atol=0)
    assert len(hub.requests) == served


@pytest.mark.parametrize("repo, args, message", [
    ("someone/nothing", (), "someone/nothing: no such hub repo"),
    ("someone/fit3d-tiny", ("--revision", "v9"), "no revision 'v9'"),
])
def test_download_errors_from_the_hub(hub, tmp_path, repo, args, message):
    with hub.serve() as endpoint:
        proc = _cli(endpoint, tmp_path / "cache", repo, *args)
    assert proc.returncode == 1
    assert message in proc.stderr and proc.stderr.count("\n") == 1
