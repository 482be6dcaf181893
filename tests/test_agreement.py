"""The six files agree (CONVENTIONS §3, §5): the same fixture data through every file's own loader gives
identical uint8 tensors, the toy sets are the same points, and the common flags mean the same thing in
every training script's parser."""
import importlib
from pathlib import Path

import pytest
import torch

from helpers import write_cifar_binary, write_image_folder, write_mnist_like

ROOT = Path(__file__).resolve().parents[1]
ALL = [s for s in ["gan", "wgan_gp", "cgan", "cyclegan", "ddpm", "fid"] if (ROOT / f"{s}.py").exists()]
TRAINING = [s for s in ALL if s != "fid"]


def parse(mod, argv):
    return mod.parse_options(argv)


def test_every_loader_gives_identical_tensors_and_every_toy_set_the_same_points(tmp_path):
    write_mnist_like(tmp_path / "mnist", n=12)
    write_mnist_like(tmp_path / "fashion-mnist", n=12, seed=3)
    write_cifar_binary(tmp_path / "cifar10" / "cifar-10-binary.tar.gz")
    write_image_folder(tmp_path / "pics")
    cases = [("mnist", 28), ("mnist", 32), ("fashion-mnist", 28), ("cifar10", 32), (str(tmp_path / "pics"), 48)]
    ref = [importlib.import_module("gan").load_data(d, tmp_path, size) for d, size in cases]
    for x, _, _ in ref:
        assert x.dtype == torch.uint8 and x.dim() == 4  # N x C x H x W, scaled to [-1, 1] per batch
    for name in ALL[1:]:
        mod = importlib.import_module(name)
        for (d, size), (x, y, names), (x_ref, y_ref, names_ref) in zip(cases, [mod.load_data(d, tmp_path, size)
                                                                             for d, size in cases], ref):
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref) and names == names_ref, (name, d, size)
        if hasattr(mod, "sample_toy"):
            for toy in ["8gaussians", "25gaussians", "swissroll"]:
                a = mod.sample_toy(toy, 100, torch.Generator().manual_seed(0))
                b = importlib.import_module("gan").sample_toy(toy, 100, torch.Generator().manual_seed(0))
                assert torch.equal(a, b), (name, toy)


COMMON = ["--data-dir", "somewhere", "--out", "elsewhere", "--steps", "7", "--batch-size", "3", "--lr", "0.01",
          "--seed", "5", "--device", "cpu", "--log-every", "2", "--sample-every", "4", "--num-samples", "9"]


@pytest.mark.parametrize("name", TRAINING)
def test_common_flags_mean_the_same_everywhere(name):
    mod = importlib.import_module(name)
    cfg = parse(mod, COMMON)
    assert (cfg.data_dir, cfg.out, cfg.steps, cfg.batch_size, cfg.lr, cfg.seed, cfg.device, cfg.log_every,
            cfg.sample_every, cfg.num_samples) == ("somewhere", "elsewhere", 7, 3, 0.01, 5, "cpu", 2, 4, 9)
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
