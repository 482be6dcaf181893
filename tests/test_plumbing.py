"""The plumbing block (CONVENTIONS §3, §7), tested once for every script that carries it: the
loaders against the fixture files' known contents, downloads against a local HTTP server, the
checkpoint's refusals, and one clear sentence for every user mistake with nothing on disk lost."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import (closed_port_url, expect_user_error, http_server, md5, snapshot, write_cifar_binary,
                     write_idx, write_image_folder, write_mnist_like)

ROOT = Path(__file__).resolve().parents[1]
MARKER = "# --- plumbing: the same in every script; skip on first read ---"
V2 = [s for s in ["gan", "wgan_gp", "cgan", "cyclegan", "ddpm"]
      if (ROOT / f"{s}.py").exists() and MARKER in (ROOT / f"{s}.py").read_text()]
TINY = {"gan": ["--width", "8", "--batch-size", "8", "--z-dim", "4"],  # a tiny model per script
        "cgan": ["--width", "8", "--batch-size", "8", "--z-dim", "4"],
        "wgan_gp": ["--n-critic", "1", "--width", "8", "--batch-size", "8", "--z-dim", "4"],
        "cyclegan": ["--batch-size", "8", "--width", "4"],
        "ddpm": ["--width", "8", "--sample-steps", "5", "--num-samples", "10", "--batch-size", "8",
                 "--timesteps", "20"]}
MNIST_AS = {"cyclegan": "mnist:colour"}  # how each script names a data set built on the MNIST files


def block(script):
    text = (ROOT / f"{script}.py").read_text()
    return text[text.index(MARKER):text.index("\ndef main(")]


@pytest.fixture(params=V2)
def mod(request):
    return importlib.import_module(request.param)


def error_of(capsys, mod, argv):
    return expect_user_error(capsys, mod.main, mod.PROG, argv)


def tiny_run(mod, tmp_path, *args, name="run"):
    out = tmp_path / name
    mod.main(["--out", str(out), "--device", "cpu", *TINY[mod.__name__], *map(str, args)])
    return out


# ---------------------------------------------------------------- the block itself
@pytest.mark.parametrize("script", [s for s in V2 if s != "gan"])
def test_block_is_a_byte_for_byte_copy_of_gan_py(script):
    assert block(script) == block("gan")


# ---------------------------------------------------------------- loaders, against the fixtures
def test_idx_files_load_exactly_with_labels(mod, tmp_path):
    images, labels = write_mnist_like(tmp_path / "mnist", n=20, seed=5)
    write_mnist_like(tmp_path / "mnist", n=6, seed=6, split="test")
    x, y, names = mod.load_data("mnist", tmp_path, 28)
    assert x.dtype == torch.uint8 and x.shape == (20, 1, 28, 28) and names == [str(c) for c in range(10)]
    np.testing.assert_array_equal(x[:, 0].numpy(), images)
    np.testing.assert_array_equal(y.numpy(), labels)
    assert len(mod.load_data("mnist", tmp_path, 28, split="test")[0]) == 6


def test_batches_are_scaled_to_minus1_1(mod, tmp_path):
    write_mnist_like(tmp_path / "mnist", n=20)
    x, _, _ = mod.load_data("mnist", tmp_path, 28)
    b = mod.batch_of(x, 500)
    assert b.dtype == torch.float32 and b.min() == -1 and b.max() == 1  # 0 -> -1 and 255 -> 1
    assert torch.equal(((b + 1) * 127.5).round().byte().unique(), x.unique())


def test_data_dir_comes_before_debians_copy_of_fashion_mnist(mod, tmp_path):
    images, _ = write_mnist_like(tmp_path / "fashion-mnist", n=8, seed=3)
    np.testing.assert_array_equal(mod.load_data("fashion-mnist", tmp_path, 28)[0][:, 0].numpy(), images)


def test_idx_images_are_resized_once_to_the_image_size(mod, tmp_path):
    write_mnist_like(tmp_path / "mnist", n=4)
    assert mod.load_data("mnist", tmp_path, 32)[0].shape == (4, 1, 32, 32)


def test_cifar10_binary_tarball_is_read_in_place_without_pickle(mod, tmp_path, monkeypatch):
    tar = tmp_path / "cifar10" / "cifar-10-binary.tar.gz"
    x_train, y_train, x_test, y_test, digest = write_cifar_binary(tar)
    x, y, _ = mod.load_data("cifar10", tmp_path, 32)
    np.testing.assert_array_equal(x.numpy(), x_train)
    np.testing.assert_array_equal(y.numpy(), y_train)
    x, y, _ = mod.load_data("cifar10", tmp_path, 32, split="test")
    np.testing.assert_array_equal(x.numpy(), x_test)
    np.testing.assert_array_equal(y.numpy(), y_test)
    assert "pickle" not in (ROOT / f"{mod.__name__}.py").read_text()


def test_image_folder_subfolders_are_classes_and_crops_keep_the_centre(mod, tmp_path):
    from PIL import Image
    write_image_folder(tmp_path / "pics")
    x, y, names = mod.load_data(str(tmp_path / "pics"), None, 32)
    assert x.shape == (6, 3, 32, 32) and names == ["cats", "dogs"] and y.tolist() == [0, 0, 0, 1, 1, 1]
    img = np.zeros((20, 60, 3), np.uint8)
    img[:, 20:40] = 255  # a white centre square in a wide black picture
    (tmp_path / "wide").mkdir()
    Image.fromarray(img).save(tmp_path / "wide" / "a.png")
    x, _, _ = mod.load_data(str(tmp_path / "wide"), None, 28)
    assert x[..., 2:-2].min() > 230 and x.float().mean() > 200


# ---------------------------------------------------------------- downloads, from a local server
def serve_mnist(tmp_path, monkeypatch, mod, url_or_none=None, wrong_md5=False):
    served = tmp_path / "served"
    write_mnist_like(served, n=12)
    files = {f: "0" * 32 if wrong_md5 else md5(served / f) for f in mod.MNIST if (served / f).exists()}
    monkeypatch.setitem(mod.SOURCES, "mnist", (url_or_none, files))
    return served


def test_download_is_checked_and_renamed_into_place(mod, tmp_path, monkeypatch, capsys):
    served = serve_mnist(tmp_path, monkeypatch, mod)
    with http_server(served) as url:
        monkeypatch.setitem(mod.SOURCES, "mnist", (url, mod.SOURCES["mnist"][1]))
        x, _, _ = mod.load_data("mnist", tmp_path / "data", 28)
    assert len(x) == 12 and "downloading " + url in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(mod.MNIST[:2])


def test_download_with_a_wrong_md5_leaves_nothing_behind(mod, tmp_path, monkeypatch, capsys):
    served = serve_mnist(tmp_path, monkeypatch, mod, wrong_md5=True)
    with http_server(served) as url:
        monkeypatch.setitem(mod.SOURCES, "mnist", (url, mod.SOURCES["mnist"][1]))
        err = error_of(capsys, mod, ["--dataset", MNIST_AS.get(mod.__name__, "mnist"), "--data-dir",
                                     tmp_path / "data", "--out", tmp_path / "r"])
    assert "fails its MD5 check" in err
    assert not (tmp_path / "data" / "mnist").exists() or not any((tmp_path / "data" / "mnist").iterdir())


def test_no_network_says_which_file_to_put_where(mod, tmp_path, monkeypatch, capsys):
    serve_mnist(tmp_path, monkeypatch, mod, closed_port_url())
    err = error_of(capsys, mod, ["--dataset", MNIST_AS.get(mod.__name__, "mnist"), "--data-dir",
                                 tmp_path / "data", "--out", tmp_path / "r"])
    assert "cannot download" in err and "train-images-idx3-ubyte.gz" in err
    assert str((tmp_path / "data" / "mnist").resolve()) in err


# ---------------------------------------------------------------- bad inputs: one sentence, nothing lost
def damaged_mnist(tmp_path, damage, name="mnist"):
    folder = tmp_path / "data" / "mnist"
    write_mnist_like(folder, n=20)
    f = folder / "train-images-idx3-ubyte.gz"
    if damage == "truncated":
        f.write_bytes(f.read_bytes()[:-100])
    elif damage == "garbage":
        f.write_bytes(b"\x1f\x8b" + os.urandom(500))
    elif damage == "short":
        write_idx(f, np.zeros((19, 28, 28)))  # 19 images for 20 labels
    else:
        write_idx(f, np.zeros(10))  # a 1-D (labels) file in the images' place
    return ["--dataset", name, "--data-dir", tmp_path / "data"]


@pytest.mark.parametrize("damage,message", [("truncated", "cannot read mnist"), ("garbage", "cannot read mnist"),
                                            ("short", "19 images but 20 labels"),
                                            ("wrong-kind", "not an IDX file of 3 dimensions")],
                         ids=lambda v: v)
def test_a_damaged_idx_file_is_named_and_kept(mod, tmp_path, capsys, damage, message):
    argv = damaged_mnist(tmp_path, damage, MNIST_AS.get(mod.__name__, "mnist"))
    before = snapshot(tmp_path / "data")
    assert message in error_of(capsys, mod, [*argv, "--out", tmp_path / "r"])
    assert snapshot(tmp_path / "data") == before


@pytest.mark.parametrize("script", [s for s in V2 if s != "cyclegan"])  # cyclegan.py: no CIFAR pair
def test_a_truncated_cifar_tarball_is_named(script, tmp_path, capsys):
    mod = importlib.import_module(script)
    tar = tmp_path / "cifar10" / "cifar-10-binary.tar.gz"
    write_cifar_binary(tar)
    tar.write_bytes(tar.read_bytes()[:-200])
    assert "cannot read cifar10" in error_of(capsys, mod, ["--dataset", "cifar10", "--data-dir", tmp_path,
                                                           "--out", tmp_path / "r"])


@pytest.mark.parametrize("case,message", [
    ("unknown-dataset", "unknown dataset 'nosuchset'"), ("empty-folder", "no .png or .jpg images below"),
    ("unreadable-image", "broken.png"), ("non-positive-steps", "--steps: must be a positive integer"),
    ("unavailable-device", "is not available here")],
    ids=lambda v: v)
def test_a_user_mistake_ends_in_one_sentence(mod, tmp_path, capsys, case, message):
    if case == "unavailable-device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for sub in ("trainA", "trainB"):  # folders that cyclegan.py's translation layout accepts too
        (tmp_path / "empty" / sub).mkdir(parents=True)
        write_image_folder(tmp_path / "pics" / sub)
    (tmp_path / "pics" / "trainA" / "cats" / "broken.png").write_bytes(b"not a png")
    argv = {"unknown-dataset": ["--dataset", "nosuchset"], "empty-folder": ["--dataset", tmp_path / "empty"],
            "unreadable-image": ["--dataset", tmp_path / "pics"], "non-positive-steps": ["--steps", "0"],
            "unavailable-device": ["--device", "cuda"]}[case]
    assert message in error_of(capsys, mod, [*argv, "--out", tmp_path / "r"])


def test_an_existing_run_is_not_overwritten_unless_asked(mod, tmp_path, capsys):
    out = tiny_run(mod, tmp_path, "--steps", 2)
    before = snapshot(out)
    err = error_of(capsys, mod, ["--out", out, "--steps", 2])
    assert "--overwrite" in err and snapshot(out) == before
    tiny_run(mod, tmp_path, "--steps", 3, "--overwrite")
    assert [r.split(",")[0] for r in (out / "log.csv").read_text().splitlines()] == ["step", "3"]


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(mod, tmp_path, capsys, monkeypatch):
    real, calls = mod.log_step, []

    def poisoned(cfg, clock, step, **values):
        calls.append(step)
        real(cfg, clock, step, **{k: float("nan") if step >= 5 else v for k, v in values.items()})
    monkeypatch.setattr(mod, "log_step", poisoned)
    err = error_of(capsys, mod, ["--out", tmp_path / "nan", "--steps", 10, "--sample-every", 2, "--device", "cpu",
                                 *TINY[mod.__name__]])
    assert "NaN or inf at step 5" in err and "--lr below" in err
    state = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and state["script"] == mod.PROG and state["options"]["steps"] == 10


def test_the_progress_line_gives_the_rate_and_the_time_left_at_that_rate(mod, tmp_path, capsys):
    """50 s for the first 10 of 100 steps: 0.2 steps/s, and 90 steps left take 450 s = 7:30."""
    import time
    from types import SimpleNamespace
    (tmp_path / "log.csv").write_text("")
    cfg = SimpleNamespace(out=tmp_path, steps=100, log_every=10, lr=1e-3)
    mod.log_step(cfg, time.time() - 50, 10, loss=0.25)
    mod.log_step(cfg, time.time() - 51, 11, loss=0.5)  # not a --log-every step: no line, no row
    line = capsys.readouterr().out.strip()
    assert line.startswith("step 10/100  loss 0.25  0.2 steps/s, 7:30 left") and "\n" not in line
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0] == "step,loss,seconds" and rows[1].startswith("10,0.25,50") and len(rows) == 2


# ---------------------------------------------------------------- the command line as a user meets it
@pytest.mark.parametrize("script", V2)
def test_help_is_the_docstring_and_every_flag_with_its_default(script):
    r = subprocess.run([sys.executable, str(ROOT / f"{script}.py"), "--help"], capture_output=True, text=True)
    mod = importlib.import_module(script)
    assert r.returncode == 0 and mod.__doc__.splitlines()[0] in r.stdout and "Examples" in r.stdout
    for flag, default, _ in mod.COMMON + mod.OPTIONS:
        assert flag in r.stdout
    assert r.stdout.count("(default:") >= len({f for f, d, _ in mod.COMMON + mod.OPTIONS if d not in (False, "")})


@pytest.mark.parametrize("script", V2)
def test_import_prints_and_writes_nothing(script, tmp_path):
    r = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); import {script}"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == r.stderr == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script", V2)
def test_a_command_line_mistake_prints_one_line_and_exits_with_1(script, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / f"{script}.py"), "--dataset", "nope", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "unknown dataset" in r.stderr


@pytest.mark.parametrize("script", V2)
def test_the_script_runs_alone_in_an_empty_folder(script, tmp_path):
    (tmp_path / f"{script}.py").write_text((ROOT / f"{script}.py").read_text())
    r = subprocess.run([sys.executable, f"{script}.py", "--steps", "2", "--log-every", "1", *TINY[script]],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "runs").is_dir() and "step 2/2" in r.stdout
