"""Tests for cgan.py: the three-case loss on hand-computed logits, mismatched labels, that y reaches
G and D through e(y), the three cases on a D built by hand, the optimum 1 / (2 - w), conditional
learning on a toy set, tiny runs of every option and data kind and the script's own bad inputs.
The plumbing block is tested for every script in test_plumbing.py."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import cgan
from helpers import expect_user_error, snapshot, write_cifar_binary, write_image_folder, write_mnist_like

ROOT = Path(__file__).resolve().parents[1]


def run(tmp_path, *args, name="run"):
    out = tmp_path / name
    cgan.main(["--out", str(out), "--device", "cpu", *map(str, args)])
    return out


def error_of(capsys, argv):
    return expect_user_error(capsys, cgan.main, "cgan.py", argv)


def config(*args):
    return cgan.parse_options([str(a) for a in args])


# ---------------------------------------------------------------- the concept, by hand
def test_three_case_loss_on_hand_computed_logits():
    # logits ln 3 -> D = 3/4; 0 -> 1/2; -ln 3 -> 1/4
    D_match = torch.tensor([math.log(3), 0.0])       # real, matching: want log D
    D_mismatch = torch.tensor([0.0, -math.log(3)])   # real, wrong label: want log(1 - D)
    D_fake = torch.tensor([math.log(3), math.log(3)])  # generated: want log(1 - D)
    pos = -(math.log(0.75) + math.log(0.5)) / 2
    mis = -(math.log(0.5) + math.log(0.75)) / 2
    fake = -(math.log(0.25) + math.log(0.25)) / 2
    for w in [0.0, 0.25, 0.5, 1.0]:
        expected = pos + w * mis + (1 - w) * fake
        got = cgan.conditional_discriminator_loss(D_match, D_mismatch, D_fake, w).item()
        assert got == pytest.approx(expected, abs=1e-6), w
    # w = 0 is the plain conditional GAN: whatever D says on mismatched pairs weighs nothing
    wild = torch.tensor([30.0, -30.0])
    assert cgan.conditional_discriminator_loss(D_match, wild, D_fake, 0.0).item() == pytest.approx(pos + fake, abs=1e-6)
    # G's non-saturating loss: -log D(G(z, y), y)
    assert cgan.generator_loss(D_fake).item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_mismatched_labels_never_equal_the_true_ones_and_cover_the_others():
    y = torch.arange(10).repeat(2000)
    y_wrong = cgan.mismatched_labels(y, 10, torch.Generator().manual_seed(0))
    assert (y_wrong != y).all() and y_wrong.min() >= 0 and y_wrong.max() <= 9
    # uniform over the 9 other classes: each (y, y') pair with y' != y about 2000/9 times
    counts = torch.zeros(10, 10)
    counts.index_put_((y, y_wrong), torch.ones(len(y)), accumulate=True)
    off = counts[~torch.eye(10, dtype=torch.bool)]
    assert off.min() > 150 and off.max() < 300 and counts.diag().sum() == 0
    two = cgan.mismatched_labels(torch.tensor([0, 1, 0, 1]), 2)  # with 2 classes the wrong one is forced
    assert two.tolist() == [1, 0, 1, 0]


@pytest.mark.parametrize("dataset", ["8gaussians", "mnist"])
def test_y_changes_G_and_D_and_only_through_its_embedding(dataset):
    cfg = config("--dataset", dataset, "--width", 8, "--z-dim", 4)
    torch.manual_seed(0)
    G, D = cgan.build_models(cfg, 2 if dataset == "8gaussians" else 1, 10)
    G.eval(), D.eval()
    z = torch.randn(4, 4)
    y0, y1 = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    with torch.no_grad():
        x0, x1 = G(z, y0), G(z, y1)
        assert not torch.allclose(x0, x1)                 # same z, another class: another sample
        assert not torch.allclose(D(x0, y0), D(x0, y1))   # same x, another class: another score
        G.embed.weight[1], D.embed.weight[1] = G.embed.weight[0], D.embed.weight[0]
        assert torch.equal(G(z, y1), x0) and torch.equal(D(x0, y1), D(x0, y0))  # e(1) = e(0)


def hand_built_D(s=50.0, t=1.7, M=10.0):
    """A toy D(x, y) = psi(mlp([x, e(y)])) set by hand: e(y) = one-hot(y); hidden unit k is
    relu(c_k . x + M (e_k(y) - 1)), that is relu(c_y . x) for k = y and 0 for the others; the next
    layer passes it on, the third sums, and the logit is s (relu(c_y . x) - t). With |c|^2 = 4 / 1.414^2
    = 2.0006, c_y . x is 2.0006 at mode y and at most 2.0006 cos 45 deg = 1.4146 at any other mode."""
    _, D = cgan.build_models(config("--width", 16, "--emb-dim", 8), 2, 8)
    l1, l2, l3, l4 = [m for m in D.blocks[0] if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for p in D.parameters():
            p.zero_()
        D.embed.weight[:] = torch.eye(8)
        l1.weight[:8, :2], l1.weight[:8, 2:], l1.bias[:8] = cgan.toy_centres("8gaussians")[0], M * torch.eye(8), -M
        l2.weight[:8, :8] = torch.eye(8)
        l3.weight[0, :8] = 1.0
        l4.weight[0, 0], l4.bias[0] = s, -s * t
    return D


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
def test_a_hand_built_D_scores_the_three_cases_1_0_0_and_L_D_by_hand(w):
    D, g = hand_built_D(), torch.Generator().manual_seed(0)
    centres, _ = cgan.toy_centres("8gaussians")
    x, y = cgan.sample_toy_labelled("8gaussians", 2000, g)
    with torch.no_grad():
        logit_match, logit_mismatch = D(x, y), D(x, cgan.mismatched_labels(y, 8, g))
        logit_wrong_G, logit_right_G = D(centres[(y + 1) % 8], y), D(centres[y], y)
    assert torch.sigmoid(logit_match).min() > 0.9999       # real x, its own y: 1
    assert torch.sigmoid(logit_mismatch).max() < 1e-4      # real x, a wrong y': 0
    assert torch.sigmoid(logit_wrong_G).max() < 1e-4       # G(z, y) that ignores y: 0
    # by hand: the logit is 50 (2.0006 - 1.7) = 15.03 on (c_y, y) and 50 (1.4146 - 1.7) = -14.27 on
    # (c_(y+1), y); softplus(l) = l + log(1 + e^-l), within 1e-6 of l here
    right, wrong = 50 * (4 / 1.414 ** 2 - 1.7), 50 * (4 / 1.414 ** 2 * math.cos(math.pi / 4) - 1.7)
    assert logit_right_G.mean().item() == pytest.approx(right, abs=1e-3)
    assert cgan.conditional_discriminator_loss(logit_match, logit_mismatch, logit_wrong_G, w) < 1e-4
    assert cgan.conditional_discriminator_loss(logit_match, logit_mismatch, logit_right_G, w).item() \
        == pytest.approx((1 - w) * right, abs=1e-3)  # a G that draws mode y fools it on the third case
    assert cgan.generator_loss(logit_wrong_G).item() == pytest.approx(-wrong, abs=1e-3)
    assert cgan.generator_loss(logit_right_G).item() < 1e-6


@pytest.mark.parametrize("w", [0.0, 0.5])
def test_d_on_matched_pairs_settles_at_1_over_2_minus_w_when_g_is_perfect(w):
    """The optimum stated in cgan.py: with p_G = p_data and classes that never overlap (so the
    mismatched pairs have q(x, y) = 0 where x shows class y), D*(x, y) = 1 / (2 - w): 1/2 for the
    plain cGAN, 2/3 for w = 1/2. Trained here with G replaced by the data sampler itself."""
    torch.manual_seed(0)
    _, D = cgan.build_models(config("--width", 64), 2, 8)
    opt = torch.optim.Adam(D.parameters(), 1e-3)
    for _ in range(400):
        (x, y), (x_fake, _) = cgan.sample_toy_labelled("8gaussians", 256), cgan.sample_toy_labelled("8gaussians", 256)
        y_fake = torch.cdist(x_fake, cgan.toy_centres("8gaussians")[0]).argmin(1)  # a perfect G(z, y)
        loss = cgan.conditional_discriminator_loss(D(x, y), D(x, cgan.mismatched_labels(y, 8)), D(x_fake, y_fake), w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = cgan.sample_toy_labelled("8gaussians", 4000)
    with torch.no_grad():
        assert torch.sigmoid(D(x, y)).mean().item() == pytest.approx(1 / (2 - w), abs=0.03)


def test_labelled_toy_sampler_labels_are_the_modes():
    x, y = cgan.sample_toy_labelled("25gaussians", 5000, torch.Generator().manual_seed(0))
    centres, std = cgan.toy_centres("25gaussians")
    assert torch.equal(torch.cdist(x, centres).argmin(1), y)  # every point lies at its own mode
    assert ((x - centres[y]).norm(dim=1) < 5 * std).all() and torch.bincount(y, minlength=25).min() > 120
    m = cgan.conditional_mode_metrics(x, y, "25gaussians")  # real data: 1 - exp(-9/2) = 98.9 % within 3 std
    assert m["on_target"] == pytest.approx(1 - math.exp(-4.5), abs=0.01) and m["nearest_is_asked"] == 1.0
    m = cgan.conditional_mode_metrics(x, (y + 1) % 25, "25gaussians")  # right points, wrong labels
    assert m["on_target"] == 0 and m["modes"] == 25


# ---------------------------------------------------------------- tiny runs of every option and data kind
def check_run_folder(out, step, n, image_shape=None):
    for f in ["config.json", "log.csv", "losses.png", f"samples_{step}.png", "samples.npz", "checkpoint.pt"]:
        assert (out / f).is_file(), f
    header = (out / "log.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["step", "loss_D", "loss_G"] and {"D_match", "D_mismatch", "D_fake"} <= set(header)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["script"] == "cgan.py" and state["step"] == step
    s = np.load(out / "samples.npz")
    x, y = s["x"], s["y"]
    assert len(x) == len(y) == n
    _, counts = np.unique(y, return_counts=True)
    assert counts.min() == counts.max()  # an equal number per class
    if image_shape is None:
        assert x.dtype == np.float32 and x.shape[1] == 2
    else:
        assert x.dtype == np.uint8 and x.shape[1:] == image_shape
    return x, y


@pytest.mark.parametrize("dataset,w,n", [("8gaussians", 0.5, 208), ("25gaussians", 0.0, 200)])
def test_tiny_toy_runs_export_as_many_samples_for_each_class(tmp_path, dataset, w, n):
    out = run(tmp_path, "--dataset", dataset, "--mismatch-weight", w, "--steps", 6, "--batch-size", 16,
              "--width", 16, "--log-every", 2, "--sample-every", 3, "--num-samples", 210)
    x, y = check_run_folder(out, 6, n)  # 210 // K for each of the K classes
    assert sorted(set(y.tolist())) == list(range(8 if dataset == "8gaussians" else 25))
    m = json.loads((out / "metrics.json").read_text())
    assert {"on_target", "nearest_is_asked", "modes", "high_quality"} <= set(m)


def test_mnist_fixture_run_with_d_steps(tmp_path):
    write_mnist_like(tmp_path / "data" / "mnist", n=40)
    out = run(tmp_path, "--dataset", "mnist", "--data-dir", tmp_path / "data", "--steps", 3,
              "--d-steps", 2, "--batch-size", 8, "--width", 8, "--z-dim", 8, "--num-samples", 20, "--log-every", 1)
    x, y = check_run_folder(out, 3, 20, (28, 28, 1))
    assert y.tolist() == sorted(y.tolist()) and set(y.tolist()) == set(range(10))


def test_train_leaves_the_options_as_given(tmp_path):
    write_mnist_like(tmp_path / "data" / "fashion-mnist", n=40)
    cfg = config("--dataset", "fashion-mnist", "--data-dir", tmp_path / "data", "--out", tmp_path / "r",
                 "--steps", 2, "--batch-size", 8, "--width", 8, "--z-dim", 8, "--device", "cpu")
    before = dict(vars(cfg))
    cgan.train(cfg)
    assert vars(cfg) == before
    assert json.loads((tmp_path / "r" / "config.json").read_text()) == before  # the options, as given


def test_class_grid_rows_share_the_noise(tmp_path):
    """Column j of the grid uses the same z for every class: generate() with the same seed must give, for
    each class, G(z_j, k) with one shared z."""
    cfg = config("--dataset", "mnist", "--width", 8, "--z-dim", 4)
    torch.manual_seed(0)
    G, _ = cgan.build_models(cfg, 1, 10)
    x, y = cgan.generate(G, cfg, 3, seed=11)
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(11))
    G.eval()
    with torch.no_grad():
        for k in (2, 5):
            assert torch.allclose(x[3 * k:3 * k + 3], G(z, torch.full((3,), k)), atol=1e-6)
    assert y.tolist() == [k for k in range(10) for _ in range(3)]


def test_cifar10_fixture_run(tmp_path):
    write_cifar_binary(tmp_path / "data" / "cifar10" / "cifar-10-binary.tar.gz")
    out = run(tmp_path, "--dataset", "cifar10", "--data-dir", tmp_path / "data", "--steps", 2, "--batch-size", 4,
              "--width", 8, "--z-dim", 8, "--num-samples", 10)
    check_run_folder(out, 2, 10, (32, 32, 3))


def test_image_folder_subfolders_are_classes(tmp_path):
    write_image_folder(tmp_path / "pics", classes=("cats", "dogs", "owls"))
    assert config("--dataset", tmp_path / "pics").image_size == 64
    out = run(tmp_path, "--dataset", tmp_path / "pics", "--image-size", 32, "--steps", 2, "--batch-size", 4,
              "--width", 8, "--z-dim", 8, "--num-samples", 6)
    _, y = check_run_folder(out, 2, 6, (32, 32, 3))
    assert y.tolist() == [0, 0, 1, 1, 2, 2]


# ---------------------------------------------------------------- learning
def test_points_asked_for_mode_k_land_on_mode_k(tmp_path):
    """A short seeded run on 8gaussians (600 steps at 4 times the default 2-D learning rate): nearly every
    point asked for mode k lands nearest to mode k, and most within 3 std of it. An untrained G does neither.
    Seeds 0-4 gave on_target 0.85, 1.00, 0.85, 1.00, 0.94 and, for every k, 100 % of label k nearest to k."""
    out = run(tmp_path, "--steps", 600, "--lr", 2e-4, "--log-every", 300, "--sample-every", 600)
    m = json.loads((out / "metrics.json").read_text())
    assert m["on_target"] > 0.75 and m["modes"] == 8, m
    s = np.load(out / "samples.npz")
    centres, _ = cgan.toy_centres("8gaussians")
    nearest = torch.cdist(torch.from_numpy(s["x"]), centres).argmin(1).numpy()
    assert all((nearest[s["y"] == k] == k).mean() > 0.95 for k in range(8))  # for every k, not on average
    G, _ = cgan.build_models(config(), 2, 8)
    with torch.no_grad():
        y = torch.arange(8).repeat(100)
        assert cgan.conditional_mode_metrics(G(torch.randn(800, 2), y), y, "8gaussians")["on_target"] < 0.1


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("case,message", [
    ("swissroll", "swissroll has no classes"), ("mismatch-weight-1.5", "--mismatch-weight takes [0, 1]"),
    ("emb-dim-0", "--emb-dim: must be a positive integer"), ("one-class-folder", "has 1 class"),
    ("image-size-48", "DCGAN takes 28, 32, 64"), ("negative-lr", "--lr must be positive"),
    ("batch-size-1-on-images", "BatchNorm needs 2 or more images a batch")],
    ids=lambda v: v)
def test_a_cgan_mistake_ends_in_one_sentence(capsys, tmp_path, case, message):
    write_image_folder(tmp_path / "one", sizes=((32, 32),), classes=("cats",))
    argv = {"swissroll": ["--dataset", "swissroll"], "mismatch-weight-1.5": ["--mismatch-weight", "1.5"],
            "emb-dim-0": ["--emb-dim", "0"], "one-class-folder": ["--dataset", tmp_path / "one"],
            "image-size-48": ["--dataset", "mnist", "--image-size", "48"], "negative-lr": ["--lr", "-1"],
            "batch-size-1-on-images": ["--dataset", "mnist", "--batch-size", "1"]}.get(case)
    assert message in error_of(capsys, [*argv, "--out", tmp_path / "r"])


# ---------------------------------------------------------------- real data (slow)
@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_short_run_separates_the_classes(tmp_path):
    """300 steps on the real data: trousers (class 1) and bags (8) already differ - a row's mean image
    is closer to its own class's mean image than to the other's."""
    out = run(tmp_path, "--dataset", "fashion-mnist", "--data-dir", tmp_path / "empty", "--steps", 300,
              "--log-every", 100, "--sample-every", 300, "--num-samples", 200)
    s = np.load(out / "samples.npz")
    x_real, y_real, _ = cgan.load_data("fashion-mnist", tmp_path / "empty", 28, split="test")
    mean = {k: x_real[y_real == k].float().mean(0)[0].numpy() for k in (1, 8)}
    for k, other in [(1, 8), (8, 1)]:
        g = s["x"][s["y"] == k][..., 0].astype(np.float64).mean(0)
        assert np.abs(g - mean[k]).mean() < np.abs(g - mean[other]).mean()
