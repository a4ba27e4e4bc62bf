"""What hostile inputs cost now: each is read in a fresh process and its wall time, peak
memory (RSS) and outcome (the one line, or success) are printed side by side with a benign
input of the same kind.

    python benchmarks/hostile.py

Every input is made here (a tiny repo, configs declaring huge models, a 9000x9000 PNG, a
deflate-bomb pickle); nothing is downloaded. Issue 24 lists what these inputs did before.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(code: str, env: dict | None = None) -> tuple[float, float, str]:
    """Run ``code`` in a fresh Python; (seconds, its peak RSS in MiB, last line of output)."""
    # the child's own high-water mark (VmHWM is per address space: exec resets it, where
    # getrusage's peak would include this parent's memory at fork time)
    code = ("import atexit\n"
            "atexit.register(lambda: print('VmHWM', [ln.split()[1] for ln in "
            "open('/proc/self/status') if ln.startswith('VmHWM')][0]))\n" + code)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
                                 **(env or {})})
    out, _ = proc.communicate()
    seconds = time.perf_counter() - start
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    peak = [int(ln.split()[1]) for ln in lines if ln.startswith("VmHWM")]
    lines = [ln for ln in lines if not ln.startswith("VmHWM")]
    return seconds, (peak[0] / 1024 if peak else float("nan")), (lines[-1] if lines else "")


def load(path: Path) -> str:
    return ("from fit3d_hub import load_fit3d, FiT3DError\n"
            f"try:\n    load_fit3d({str(path)!r}); print('loaded')\n"
            "except FiT3DError as e:\n    print(type(e).__name__ + ': ' + str(e))")


def main() -> None:
    from PIL import Image

    from fit3d_hub import FiT3D
    from fit3d_hub.tiny import demo_backbone

    tmp = Path(tempfile.mkdtemp(prefix="hostile-"))
    repo = tmp / "repo"
    FiT3D(demo_backbone(0).original, demo_backbone(1).original).save_pretrained(repo)
    cases: list[tuple[str, str, dict]] = [("benign tiny repo", load(repo), {})]
    for label, edit in [("model_args.embed_dim 16384", {"embed_dim": 16384, "num_heads": 16}),
                        ("model_args.embed_dim 1e9", {"embed_dim": 1e9}),
                        ("model_args.img_size 60000", {"img_size": 60000}),
                        ("model_args.depth 100000", {"depth": 100000})]:
        bad = tmp / label.split()[0].replace(".", "_") / label.split()[1]
        shutil.copytree(repo, bad)
        raw = json.loads((bad / "config.json").read_text())
        raw["model_args"].update(edit)
        (bad / "config.json").write_text(json.dumps(raw))
        cases.append((label, load(bad), {}))
    kernel = tmp / "kernel"
    shutil.copytree(repo, kernel)
    raw = json.loads((kernel / "config.json").read_text())
    raw["fit3d"].update(method="equivariance", refine={"kernel_size": 99999})
    (kernel / "config.json").write_text(json.dumps(raw))
    (kernel / "refine.safetensors").write_bytes((repo / "model.safetensors").read_bytes())
    cases.append(("fit3d.refine.kernel_size 99999", load(kernel), {}))

    # a deflate bomb: 1 GiB of zeros in a pickle archive of about 1 MB
    import torch

    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2**28)}, buffer)
    bomb = tmp / "bomb.pth"
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, \
            zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    del buffer
    read = ("from fit3d_hub.weights import read_state_dict\nfrom fit3d_hub import FiT3DError\n"
            f"try:\n    read_state_dict({str(bomb)!r}); print('read')\n"
            "except FiT3DError as e:\n    print(type(e).__name__ + ': ' + str(e))")
    cases.append((f"deflate-bomb .pth ({bomb.stat().st_size / 2**20:.1f} MiB file, 1 GiB "
                   "inside), budget 256MB", read, {"FIT3D_HUB_MAX_BYTES": "256MB"}))

    for side in (900, 9000):
        image = tmp / f"flat{side}.png"
        Image.new("RGB", (side, side), (90, 120, 150)).save(image)
        features = ("from fit3d_hub.cli import main\n"
                    f"main(['features', {str(image)!r}, '--model', {str(repo)!r}, "
                    f"'--output', {str(tmp / f'f{side}.png')!r}])")
        cases.append((f"fit3d-hub features on a {side}x{side} PNG "
                      f"({image.stat().st_size // 1024} KB)", features, {}))
    cases.append(("fit3d-hub features --size 448 on the 9000x9000 PNG",
                  "from fit3d_hub.cli import main\n"
                  f"main(['features', {str(tmp / 'flat9000.png')!r}, '--model', "
                  f"{str(repo)!r}, '--size', '448', '--output', {str(tmp / 'y.png')!r}])", {}))
    cases.append(("fit3d-hub features --size 20000", "from fit3d_hub.cli import main\n"
                  f"main(['features', {str(tmp / 'flat900.png')!r}, '--model', "
                  f"{str(repo)!r}, '--size', '20000', '--output', {str(tmp / 'x.png')!r}])",
                  {}))

    print(f"{'input':58} {'s':>6} {'peak MiB':>9}  outcome")
    for label, code, env in cases:
        seconds, rss, line = measure(code, env)
        print(f"{label:58} {seconds:6.1f} {rss:9.0f}  {line.replace(str(tmp), '<tmp>')[:160]}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
