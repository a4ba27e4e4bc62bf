"""Seeded fuzzing of everything this project reads: config.json, safetensors headers,
training checkpoints, scene files and images are mutated at random (a fixed seed per case,
so a failure reproduces), and each read must, within seconds and a bounded amount of memory,
either succeed or stop with one typed line (a :class:`FiT3DError`). A crash, another
exception type, a traceback-length message, a hang or a memory blow-up fails the case.

The default run is short (``CASES`` per target, seconds in all); a long run for CI nights:
``pytest tests/test_fuzz.py --fuzz 2000``.
"""

from __future__ import annotations

import io
import json
import math
import resource
import shutil
import signal
import struct
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from fit3d_hub import FiT3D, load_fit3d
from fit3d_hub.checkpoint import Checkpointer, ModuleState, OptimizerState, TorchRNGState
from fit3d_hub.errors import FiT3DError
from fit3d_hub.repo_format import validate_repo

CASES = 25
SECONDS = 20
"""Most time one case may take (a real hang takes minutes; CI machines are slow)."""
MEMORY_GROWTH = 2 * 2**30
"""Most the process's peak memory may grow over all the cases of a target."""

HOSTILE = [-1, 0, 1, 3, 2**31, 2**62, -(2**40), 1e308, -1e308, math.nan, math.inf, 0.5, "",
           "x" * 64, "../../../etc/passwd", None, True, [], {}, [1] * 5, [[[[]]]],
           {"a": {"b": 1}}, "LayerNorm", "gelu", 1e-30]


@pytest.fixture
def cases(request) -> int:
    return request.config.getoption("--fuzz") or CASES


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


def run_cases(count: int, make: Callable[[np.random.Generator, int], Callable[[], object]]
              ) -> dict[str, int]:
    """Run ``count`` cases; each ``make(rng, i)`` prepares one and returns the read to try.
    Returns how many succeeded and how many were refused."""
    outcomes = {"ok": 0, "refused": 0}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(count):
            rng = np.random.default_rng(1000 + i)
            read = make(rng, i)
            signal.alarm(SECONDS)
            try:
                read()
                outcomes["ok"] += 1
            except FiT3DError as err:
                line = str(err)
                assert line and "\n" not in line and "Traceback" not in line, (i, line)
                outcomes["refused"] += 1
            except Hang:
                pytest.fail(f"case {i} took more than {SECONDS} s")
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak
    assert grown < MEMORY_GROWTH, f"peak memory grew by {grown / 2**30:.1f} GiB"
    return outcomes


def _leaves(value, path=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list) and value and not all(isinstance(v, (int, float)) for v in value):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    yield path


def mutate_json(raw: dict, rng: np.random.Generator, edits: int = 2) -> dict:
    """``raw`` with a few leaves (or containers) replaced by hostile values or removed."""
    raw = json.loads(json.dumps(raw))
    for _ in range(edits):
        paths = [p for p in _leaves(raw) if p]
        path = paths[rng.integers(len(paths))]
        parent = raw
        for key in path[:-1]:
            parent = parent[key]
        if rng.random() < 0.15 and isinstance(parent, dict):
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = HOSTILE[rng.integers(len(HOSTILE))]
    return raw


def mutate_bytes(data: bytes, rng: np.random.Generator, head: int | None = None) -> bytes:
    """Flip bytes (in the first ``head`` bytes, if given), or cut the data short."""
    out = bytearray(data)
    if rng.random() < 0.25:
        return bytes(out[:rng.integers(len(out))])
    span = head or len(out)
    for _ in range(int(rng.integers(1, 6))):
        out[rng.integers(span)] = int(rng.integers(256))
    return bytes(out)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from helpers import tiny_vit

    path = tmp_path_factory.mktemp("fuzz") / "repo"
    FiT3D(tiny_vit(0), tiny_vit(1)).save_pretrained(path)
    return path


def test_fuzzed_configs_load_or_refuse_in_one_line(repo, tmp_path, cases):
    raw = json.loads((repo / "config.json").read_text())

    def make(rng, i):
        target = tmp_path / f"c{i}"
        shutil.copytree(repo, target)
        (target / "config.json").write_text(json.dumps(mutate_json(raw, rng)))
        return lambda: (load_fit3d(target), validate_repo(target))

    outcomes = run_cases(cases, make)
    assert outcomes["refused"] > 0


def test_fuzzed_safetensors_headers_load_or_refuse_in_one_line(repo, tmp_path, cases):
    data = (repo / "model.safetensors").read_bytes()
    header = 8 + struct.unpack("<Q", data[:8])[0]

    def make(rng, i):
        target = tmp_path / f"s{i}"
        shutil.copytree(repo, target)
        broken = mutate_bytes(data, rng, head=header)
        if rng.random() < 0.2:  # a length field declaring an absurd header
            broken = struct.pack("<Q", int(rng.integers(2**40, 2**62))) + broken[8:]
        (target / "model.safetensors").write_bytes(broken)
        return lambda: load_fit3d(target)

    outcomes = run_cases(cases, make)
    assert outcomes["refused"] > 0


def test_fuzzed_checkpoints_restore_or_refuse_in_one_line(tmp_path, cases):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    saver = Checkpointer(tmp_path / "ck", {"lr": 1e-3})
    saver.save(1, {"model": ModuleState(model), "optimizer": OptimizerState(optimizer)},
               {"rng": TorchRNGState()})
    folder = saver.path(1)
    state = json.loads((folder / "state.json").read_text())
    tensors = (folder / "tensors.safetensors").read_bytes()

    def make(rng, i):
        target = tmp_path / f"k{i}"
        step = target / folder.name
        shutil.copytree(folder, step)
        if rng.random() < 0.5:
            (step / "state.json").write_text(json.dumps(mutate_json(state, rng)))
        else:
            (step / "tensors.safetensors").write_bytes(mutate_bytes(tensors, rng))
        fresh = torch.nn.Linear(4, 3)
        opt = torch.optim.AdamW(fresh.parameters())
        loader = Checkpointer(target, {"lr": 1e-3})
        return lambda: loader.restore({"model": ModuleState(fresh),
                                       "optimizer": OptimizerState(opt)},
                                      {"rng": TorchRNGState()})

    state_before = torch.get_rng_state()
    outcomes = run_cases(cases, make)
    torch.set_rng_state(state_before)
    assert outcomes["refused"] > 0


def test_fuzzed_scenes_load_or_refuse_in_one_line(tmp_path, cases):
    from scenes.load import load_scene
    from scenes.synthetic import generate

    source = generate(tmp_path / "syn", scenes=1, views=3, size=24, seed=2)[0]
    raw = json.loads((source / "transforms.json").read_text())

    def make(rng, i):
        target = tmp_path / f"scene{i}"
        shutil.copytree(source, target)
        (target / "transforms.json").write_text(json.dumps(mutate_json(raw, rng, edits=1)))
        return lambda: load_scene(target)

    outcomes = run_cases(cases, make)
    assert outcomes["refused"] > 0


@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
def test_fuzzed_images_read_or_refuse_in_one_line(tmp_path, cases, kind):
    from fit3d_hub.images import read_image

    rng0 = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng0.integers(0, 255, (40, 48, 3), np.uint8)).save(buffer, format=kind)
    data = buffer.getvalue()

    def make(rng, i):
        path = tmp_path / f"im{i}.{kind.lower()}"
        path.write_bytes(mutate_bytes(data, rng, head=min(len(data), 200)))
        return lambda: read_image(path)

    outcomes = run_cases(cases, make)
    assert outcomes["refused"] > 0
