"""The six files agree (CONVENTIONS §3, §5): the same fixture data through every file's own loader gives
identical tensors, and the common flags mean the same thing in every training script's parser."""
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import write_cifar_like, write_image_folder, write_mnist_like

ROOT = Path(__file__).resolve().parents[1]
MARKER = "# --- plumbing: the same in every script; skip on first read ---"
ALL = [s for s in ["gan", "wgan_gp", "cgan", "cyclegan", "ddpm", "fid"] if (ROOT / f"{s}.py").exists()]
TRAINING = [s for s in ALL if s != "fid"]
V2 = [s for s in ALL if MARKER in (ROOT / f"{s}.py").read_text()]
V1 = [s for s in ALL if s not in V2 and hasattr(importlib.import_module(s), "load_images")]  # not yet rewritten: the v1 loaders (python CIFAR tarball, float output)


def parse(mod, argv):
    """The options of a v2 script (parse_options) or a v1 one (build_parser + finish_config)."""
    if hasattr(mod, "parse_options"):
        return mod.parse_options(argv)
    return mod.finish_config(mod.build_parser().parse_args(argv))


def test_every_v1_loader_gives_identical_tensors(tmp_path, monkeypatch):
    write_mnist_like(tmp_path / "mnist", n=12)
    write_mnist_like(tmp_path / "fashion-mnist", n=12, seed=3)
    _, _, digest = write_cifar_like(tmp_path / "cifar10" / "cifar-10-python.tar.gz")
    write_image_folder(tmp_path / "pics")
    cases = [("mnist", 28), ("mnist", 32), ("fashion-mnist", 28), ("cifar10", 32), (str(tmp_path / "pics"), 48)]
    results = {}
    for name in V1:
        mod = importlib.import_module(name)
        monkeypatch.setitem(mod.DATASETS["cifar10"]["files"], "cifar-10-python.tar.gz", digest)
        results[name] = [mod.load_images(d, tmp_path, size) for d, size in cases]
    ref = results[V1[0]]
    for name in V1[1:]:
        for (d, size), (x, y), (x_ref, y_ref) in zip(cases, results[name], ref):
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref), (name, d, size)
    for x, _ in ref:
        assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1  # CONVENTIONS §5: [-1, 1], N x C x H x W
    for name in ALL:  # and the toy sets
        mod = importlib.import_module(name)
        if hasattr(mod, "sample_toy"):
            for toy in ["8gaussians", "25gaussians", "swissroll"]:
                a = mod.sample_toy(toy, 100, torch.Generator().manual_seed(0))
                b = importlib.import_module(V1[0] if name in V1 else "gan").sample_toy(toy, 100, torch.Generator().manual_seed(0))
                assert torch.equal(a, b), (name, toy)


COMMON = ["--data-dir", "somewhere", "--out", "elsewhere", "--steps", "7", "--batch-size", "3", "--lr", "0.01",
          "--seed", "5", "--device", "cpu", "--log-every", "2", "--sample-every", "4", "--num-samples", "9",
          "--resume"]


@pytest.mark.parametrize("name", TRAINING)
def test_common_flags_mean_the_same_everywhere(name):
    mod = importlib.import_module(name)
    cfg = parse(mod, COMMON)
    assert (cfg.data_dir, cfg.out, cfg.steps, cfg.batch_size, cfg.lr, cfg.seed, cfg.device, cfg.log_every,
            cfg.sample_every, cfg.num_samples, cfg.resume) == ("somewhere", "elsewhere", 7, 3, 0.01, 5, "cpu", 2, 4, 9, True)
    defaults = parse(mod, [])
    assert defaults.dataset in ("8gaussians", "25gaussians")  # every training script runs offline with no flags
    assert defaults.seed == 0 and defaults.device == "auto" and defaults.data_dir == "./data"
    assert defaults.out == f"runs/{name}-{defaults.dataset}"
    for d, size in [("mnist", 28), ("fashion-mnist", 28), ("cifar10", 32)]:
        if name == "cyclegan":
            d = f"{d}:colour" if d != "cifar10" else None
            if d is None:
                continue
        assert parse(mod, ["--dataset", d]).image_size == size, (name, d)


@pytest.mark.parametrize("name", [s for s in TRAINING if s not in V2])  # v2: test_plumbing.py
def test_help_reads_like_a_manual(name):
    r = subprocess.run([sys.executable, str(ROOT / f"{name}.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "Examples" in r.stdout and "(default" in r.stdout
    options = [line for line in r.stdout.splitlines() if line.strip().startswith("--")]
    assert len(options) >= 12

