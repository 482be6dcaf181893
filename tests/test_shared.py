"""The deliberate copies between the scripts (CONVENTIONS §2): shared scaffolding must stay identical,
so a fix in one file cannot silently miss another. gan.py is the reference copy."""
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ["toy_centres", "sample_toy", "UserError", "file_hash", "download", "find_or_download", "read_idx",
          "RestrictedUnpickler", "load_cifar10", "load_image_folder", "load_images", "mode_metrics", "image_grid",
          "to_uint8", "fmt_time", "write_atomic", "start_log", "append_log", "save_checkpoint", "load_checkpoint",
          "pick_device", "prepare_out", "value_function", "discriminator_loss", "generator_loss_minimax",
          "js_estimate", "train_discriminator", "js_exact_gaussians"]
SCRIPTS = [s for s in ["fid", "wgan_gp", "cgan", "cyclegan", "ddpm"] if (ROOT / f"{s}.py").exists()]


@pytest.mark.parametrize("script", SCRIPTS)
def test_shared_scaffolding_is_identical_to_gan_py(script):
    gan, other = importlib.import_module("gan"), importlib.import_module(script)
    shared = [n for n in SHARED if hasattr(other, n)]
    assert len(shared) >= 10, shared  # every script carries the data and file scaffolding
    for name in shared:
        assert inspect.getsource(getattr(other, name)) == inspect.getsource(getattr(gan, name)), f"{script}.{name}"
    assert other.DATASETS == gan.DATASETS and other.TOY_SETS == gan.TOY_SETS and other.IMAGE_SETS == gan.IMAGE_SETS
