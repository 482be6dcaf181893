"""Tests for cyclegan.py: the losses against hand-computed values and torch's own, the history pool,
the schedule, the PatchGAN's 70x70 receptive field (from the layer stack and from the gradient's
support), the generator's shapes, the two known translations T and T^-1 (least squares against
numpy), the built-in pairs, evaluate() with known maps (T itself, a permutation of the modes), tiny
runs of every data kind and option, bad inputs, and learning on the toy pair."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import cyclegan as cg
from helpers import expect_user_error, write_mnist_like

TINY = ["--width", 4, "--batch-size", 4, "--log-every", 2, "--sample-every", 3]


def run(tmp_path, *args, name="run"):
    out = tmp_path / name
    nets = cg.main(["--out", str(out), "--device", "cpu", *map(str, args)])
    return out, nets


def config(*argv):
    return cg.check_options(cg.parse_options(list(map(str, argv))))


def error_of(capsys, argv):
    return expect_user_error(capsys, cg.main, "cyclegan.py", list(map(str, argv)))


def mnist_fixture(tmp_path, n=40):
    images, labels = write_mnist_like(tmp_path / "data" / "mnist", n=n)
    write_mnist_like(tmp_path / "data" / "mnist", n=20, seed=1, split="test")
    return tmp_path / "data"


def write_translation_folder(root, n_train=2, n_test=3, test=True):
    from PIL import Image
    rng = np.random.default_rng(0)
    subs = [("trainA", n_train), ("trainB", n_train)] + ([("testA", n_test), ("testB", n_test)] if test else [])
    for sub, n in subs:
        for i in range(n):
            p = Path(root) / sub / f"img{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (30 + 10 * i, 40, 3), dtype=np.uint8)).save(p)


class Map(torch.nn.Module):  # a known translation, in the place of a trained G
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


# ---------------------------------------------------------------- the losses, by hand
def test_cycle_and_identity_losses_are_per_pixel_mean_absolute_differences():
    x = torch.randn(4, 3, 8, 8)
    y = x + torch.tensor([0.5, -1.0, 0.25]).view(1, 3, 1, 1)   # |diff| = 0.5, 1, 0.25 per channel
    assert cg.cycle_loss(x, y).item() == pytest.approx((0.5 + 1 + 0.25) / 3)
    assert cg.identity_loss(x, y).item() == pytest.approx((0.5 + 1 + 0.25) / 3)
    big = torch.randn(2, 3, 64, 64)  # a mean, not a sum: the same offset gives the same loss at any size
    assert cg.cycle_loss(big, big + 0.5).item() == pytest.approx(0.5)
    z = torch.randn(4, 1, 4, 4)
    assert cg.cycle_loss(x[:, :1, :4, :4], z).item() == pytest.approx(
        torch.nn.functional.l1_loss(z, x[:, :1, :4, :4]).item())


def test_least_squares_and_log_losses_on_hand_computed_outputs():
    D_real, D_fake = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 0.5])
    # 1/2 mean((D_real - 1)^2) + 1/2 mean(D_fake^2) = 1/2 (0 + 0.25)/2 + 1/2 (0 + 0.25)/2
    assert cg.lsgan_d_loss(D_real, D_fake).item() == pytest.approx(0.125)
    assert cg.lsgan_g_loss(D_fake).item() == pytest.approx((1 + 0.25) / 2)
    l = torch.tensor([0.0])  # logit 0: D = 1/2 for both -> (log 2 + log 2) / 2, pix2pix's halved D
    assert cg.bce_d_loss(l, l).item() == pytest.approx(np.log(2))
    sig = lambda x: 1 / (1 + math.exp(-x))  # logits 2 and -1: (-log sigmoid(2) - log(1 - sigmoid(-1))) / 2
    assert cg.bce_d_loss(torch.tensor([2.0]), torch.tensor([-1.0])).item() == pytest.approx(
        (-math.log(sig(2)) - math.log(1 - sig(-1))) / 2)
    logits = torch.tensor([2.0, -1.0, 30.0, -30.0])  # torch's binary cross-entropy, as a second reference
    assert cg.bce_g_loss(logits).item() == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.ones(4)).item(), rel=1e-6)


# ---------------------------------------------------------------- the pool, the schedule
def test_pool_returns_fresh_images_until_full_then_swaps_half_the_time():
    pool, first = [], torch.arange(5.0).view(5, 1)
    assert torch.equal(cg.pool_query(pool, first, 5), first) and len(pool) == 5
    torch.manual_seed(0)
    new = torch.arange(100.0, 1100.0).view(1000, 1)
    got = cg.pool_query(pool, new, 5)
    returned_new = (got == new).float().mean().item()
    assert 0.45 < returned_new < 0.55                 # half new, half a stored image (4.4 sd each side)
    seen = set(first.flatten().tolist())
    for g, n in zip(got.flatten().tolist(), new.flatten().tolist()):
        assert g == n or g in seen                    # old images come back, never unseen ones...
        seen.add(n)
    assert len(pool) == 5 and sorted(pool)[0] != 0    # ...the pool keeps its size and moves on
    torch.manual_seed(0)
    pool2 = []
    cg.pool_query(pool2, first, 5)
    assert torch.equal(cg.pool_query(pool2, new, 5), got)  # reproducible under a seed
    assert not cg.pool_query([], new.clone().requires_grad_(), 5).requires_grad  # D's loss stops there


def test_learning_rate_constant_then_linear_to_zero():
    assert cg.lr_at(1, 1000, 2e-4) == 2e-4
    assert cg.lr_at(500, 1000, 2e-4) == 2e-4                       # the middle: still the base rate
    assert cg.lr_at(501, 1000, 2e-4) == pytest.approx(2e-4 * 499 / 500)  # then 1/500 less a step
    assert cg.lr_at(750, 1000, 2e-4) == pytest.approx(1e-4)        # half way down
    assert cg.lr_at(1000, 1000, 2e-4) == 0.0                       # the end: zero


# ---------------------------------------------------------------- the networks
def receptive_field(net):
    """One output's field of view from the layer stack: r <- r * stride + (kernel - stride), from the
    last convolution back to the first."""
    r = 1
    for m in reversed([m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]):
        r = r * m.stride[0] + (m.kernel_size[0] - m.stride[0])
    return r


def test_patchgan_receptive_field_is_70():
    D = cg.patchgan(3, 8)
    assert receptive_field(D) == 70
    # independently: the input pixels that influence one output pixel (the gradient's support). Instance
    # norm's statistics span the whole image, so it is taken out for this check: the convolutions alone
    # define the patch.
    D = torch.nn.Sequential(*[torch.nn.Identity() if isinstance(m, torch.nn.InstanceNorm2d) else m for m in D])
    x = torch.randn(1, 3, 256, 256, requires_grad=True)
    out = D(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    support = x.grad.abs().sum((0, 1)) > 0
    rows, cols = support.any(1).nonzero(), support.any(0).nonzero()
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


def test_the_28_px_patchgan_sees_the_whole_image():
    D = cg.patchgan(3, 8)
    assert D(torch.randn(1, 3, 28, 28)).shape[2:] == (1, 1) and D(torch.randn(1, 3, 64, 64)).shape[2:] == (6, 6)


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (100, 1), (256, 3)])
def test_generator_keeps_the_size(size, channels):
    G = cg.resnet_generator(channels, channels, 4, 2)
    stem = G[0]
    assert isinstance(stem, torch.nn.ReflectionPad2d) and stem.padding == (3, 3, 3, 3)  # not the channel count
    with torch.no_grad():
        assert G(torch.randn(1, channels, size, size)).shape == (1, channels, size, size)
    assert sum(isinstance(m, cg.ResidualBlock) for m in G) == 2


def test_default_run_folders_and_data_kind_defaults():
    cfg = config("--dataset", "fashion-mnist:colour", "--paired")
    assert cfg.out == "runs/cyclegan-fashion-mnist-colour-paired"
    assert (cfg.batch_size, cfg.width, cfg.image_size, cfg.lambda_identity) == (16, 16, 28, 0.5)
    toy = config()
    assert (toy.batch_size, toy.width, toy.lambda_identity, toy.out) == (256, 128, 0.0, "runs/cyclegan-8gaussians")


# ---------------------------------------------------------------- the known translations
def test_colour_T_is_the_documented_palette_and_its_inverse_is_least_squares():
    x = torch.tensor([-1.0, 1.0, 0.0]).view(3, 1, 1, 1)
    rgb = (cg.colour_T(x)[:, :, 0, 0] + 1) / 2
    assert torch.allclose(rgb[0], cg.BG.flatten()) and torch.allclose(rgb[1], cg.FG.flatten())  # black, white
    assert torch.allclose(rgb[2], (cg.BG + cg.FG).flatten() / 2)
    grey = torch.linspace(-1, 1, 256).view(1, 1, 16, 16)
    assert torch.allclose(cg.colour_T_inverse(cg.colour_T(grey)), grey, atol=1e-6)  # exact on T's colours
    colours = torch.rand(200, 3)  # any colour: numpy's least-squares m, then clipped to [0, 1]
    d, c = (cg.FG - cg.BG).flatten().numpy(), (colours - cg.BG.flatten()).numpy()
    m = np.clip(np.linalg.lstsq(d[:, None], c.T, rcond=None)[0][0], 0, 1)
    got = cg.colour_T_inverse(colours.view(200, 3, 1, 1) * 2 - 1).flatten().numpy()
    np.testing.assert_allclose((got + 1) / 2, m, atol=1e-6)
    assert ((m == 0) | (m == 1)).any() and ((m > 0) & (m < 1)).any()  # clipped and unclipped cases both met


def test_colour_halves_are_disjoint_and_test_pairs_are_true_translations(tmp_path):
    data = mnist_fixture(tmp_path, n=40)
    A, B, y_A, held_out = cg.load_pair(config("--dataset", "mnist:colour", "--data-dir", data), "train")
    assert A.shape == (20, 3, 28, 28) and B.shape == (20, 3, 28, 28) and not held_out
    assert torch.equal(A[:, 0], A[:, 1])                      # A: grey, repeated to 3 channels
    x_all, y_all, _ = cg.load_data("mnist", data, 28)
    x_all = x_all.float() / 127.5 - 1
    index = lambda x: [int(torch.cdist(xi.flatten()[None], x_all.flatten(1)).argmin()) for xi in x]
    src_A, src_B = index(A[:, :1]), index(cg.colour_T_inverse(B))
    assert len(set(src_A)) == len(set(src_B)) == 20 and not set(src_A) & set(src_B)  # disjoint halves
    assert torch.equal(y_A, y_all[src_A])                     # the labels are A's own
    At, Bt, yt, held_out = cg.load_pair(config("--dataset", "mnist:colour", "--data-dir", data), "test")
    assert len(At) == 20 and held_out and torch.allclose(Bt, cg.colour_T(At[:, :1]))


def test_paired_colour_pair_is_aligned(tmp_path):
    """pix2pix needs b_i = T(a_i): the paired training split pairs every input with its own translation."""
    data = mnist_fixture(tmp_path, n=40)
    A, B, _, _ = cg.load_pair(config("--dataset", "mnist:colour", "--data-dir", data, "--paired"), "train")
    assert len(A) == len(B) == 20 and torch.allclose(B, cg.colour_T(A[:, :1]))
    A_u, _, _, _ = cg.load_pair(config("--dataset", "mnist:colour", "--data-dir", data), "train")
    assert torch.equal(A, A_u)                                  # the same input half as the unpaired run


# ---------------------------------------------------------------- evaluate() with known maps
def test_evaluate_gives_zero_error_for_G_equal_T_and_exports_the_test_images_with_labels(tmp_path):
    data = mnist_fixture(tmp_path)
    cfg = config("--dataset", "mnist:colour", "--data-dir", data, "--num-samples", 15)
    result, export = cg.evaluate(cfg, {"G": Map(lambda a: cg.colour_T(a[:, :1]))}, "cpu")
    assert result["l1_to_truth"] == 0 and result["inputs"] == "held-out test images"
    x_test, y_test, _ = cg.load_data("mnist", data, 28, "test")
    assert export["x"].shape == (15, 28, 28, 1) and export["x"].dtype == np.uint8  # grey, as fid.py reads
    rows = [int(np.flatnonzero((x_test[:, 0].numpy() == img[..., 0]).all((1, 2)))[0]) for img in export["x"]]
    assert len(set(rows)) == 15 and export["y"].tolist() == y_test[rows].tolist()  # each image, its label
    result, _ = cg.evaluate(cfg, {"G": Map(lambda a: a)}, "cpu")  # G = identity: the baseline itself
    assert result["l1_to_truth"] == pytest.approx(result["l1_identity_baseline"]) and result["l1_to_truth"] > 0.1


def mode_permutation(perm):
    """G = T after moving each 8gaussians mode k as a block onto mode perm[k]."""
    centres, _ = cg.toy_centres("8gaussians")

    def G(a):
        k = torch.cdist(a, centres).argmin(1)
        return cg.toy_T(a - centres[k] + centres[torch.tensor(perm)[k]])
    return G


def test_toy_evaluation_tells_the_truth_from_a_permutation_of_the_modes():
    """G = T puts 1 - exp(-4.5) = 98.9 % of the points within 3 std of the right B mode (the 2-D Gaussian's
    closed form) and |G(a) - T(a)| = 0; a turn by 45 degrees, or a permutation that is no symmetry, is as
    realistic but never on the right mode."""
    cfg = config("--num-samples", 20000)
    exact = 1 - math.exp(-4.5)
    r, _ = cg.evaluate(cfg, {"G": Map(cg.toy_T)}, "cpu")
    assert r["on_B_modes"] == pytest.approx(exact, abs=0.004) and r["on_true_mode"] == pytest.approx(exact, abs=0.004)
    assert r["l1_to_truth"] == 0
    for perm in ([1, 2, 3, 4, 5, 6, 7, 0], [1, 0, 3, 2, 6, 7, 4, 5]):  # 45 degrees; swaps, not a symmetry
        r, _ = cg.evaluate(cfg, {"G": Map(mode_permutation(perm))}, "cpu")
        assert r["on_B_modes"] == pytest.approx(exact, abs=0.004) and r["on_true_mode"] == 0.0
        assert r["l1_to_truth"] > 0.5


def test_a_permutation_of_the_modes_is_cycle_consistent_and_gives_B_exactly():
    """The docstring's claim for a permutation that is no symmetry: F = its inverse undoes it to float
    precision, and G(a) puts 1/8 of the points on each B mode (sd 0.0023 at n = 20,000)."""
    perm = [1, 0, 3, 2, 6, 7, 4, 5]
    G, T_inv = mode_permutation(perm), lambda b: (b - cg.TOY_SHIFT) / cg.TOY_SCALE
    F = lambda b: T_inv(mode_permutation([perm.index(k) for k in range(8)])(T_inv(b)))  # P^-1 o T^-1
    a = cg.sample_toy("8gaussians", 20000, torch.Generator().manual_seed(0))
    b = cg.toy_T(cg.sample_toy("8gaussians", 20000, torch.Generator().manual_seed(1)))
    assert torch.allclose(F(G(a)), a, atol=1e-5) and torch.allclose(G(F(b)), b, atol=1e-5)
    b_centres = cg.toy_T(cg.toy_centres("8gaussians")[0])
    share = torch.bincount(torch.cdist(G(a), b_centres).argmin(1), minlength=8) / len(a)
    assert (share - 1 / 8).abs().max() < 0.01
    spread = lambda x: (x - b_centres[torch.cdist(x, b_centres).argmin(1)]).std(0)  # within-mode spread
    assert torch.allclose(spread(G(a)), spread(b), rtol=0.03)


# ---------------------------------------------------------------- tiny runs
def check_run(out, step, shape=None):
    for f in ["config.json", "log.csv", "losses.png", f"samples_{step}.png", "samples.npz", "checkpoint.pt", "metrics.json"]:
        assert (out / f).is_file(), f
    x = np.load(out / "samples.npz")["x"]
    if shape is None:
        assert x.dtype == np.float32 and x.shape[1] == 2
    else:
        assert x.dtype == np.uint8 and x.shape[1:] == shape
    return json.loads((out / "metrics.json").read_text())


def test_tiny_toy_run_writes_its_files_and_the_checkpoint_holds_train_s_nets(tmp_path):
    out, nets = run(tmp_path, "--steps", 4, "--width", 8, "--batch-size", 16, "--log-every", 2, "--sample-every", 3,
                    "--num-samples", 50, "--lambda-identity", 1)
    m = check_run(out, 4)
    assert 0 <= m["on_true_mode"] <= m["on_B_modes"] <= 1 and m["l1_to_truth"] > 0
    header = (out / "log.csv").read_text().splitlines()[0].split(",")
    assert header == ["step", "loss_G_gan", "loss_cycle", "loss_identity", "loss_D_A", "loss_D_B", "lr", "seconds"]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert set(state) == {"script", "options", "step", "G", "F", "D_A", "D_B", "opt_G", "opt_D"}  # no pools
    assert state["step"] == 4 and all(torch.equal(v, nets["F"].state_dict()[k]) for k, v in state["F"].items())


@pytest.mark.parametrize("extra", [[], ["--lambda-cycle", 0], ["--paired"]])
def test_colour_pair_runs(tmp_path, extra):
    data = mnist_fixture(tmp_path)
    out, _ = run(tmp_path, "--dataset", "mnist:colour", "--data-dir", data, "--steps", 3, *TINY, "--num-samples", 10,
                 *extra)
    m = check_run(out, 3, (28, 28, 1))
    assert set(m) == {"inputs", "l1_to_truth", "l1_identity_baseline"} and 0 < m["l1_to_truth"] < 2
    assert len(np.load(out / "samples.npz")["y"]) == 10
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ({"G", "D"} <= set(state) and "F" not in state) if extra == ["--paired"] else {"G", "F", "D_A", "D_B"} <= set(state)
    header = (out / "log.csv").read_text().splitlines()[0]
    assert header.startswith("step,loss_G_adv,loss_l1,loss_D" if extra == ["--paired"] else "step,loss_G_gan")


def test_a_folder_is_judged_on_its_own_test_split_wherever_the_run_starts(tmp_path, monkeypatch):
    """testA/ testB/ are looked for below the data folder, not in the current directory: a run started
    elsewhere uses them (3 test images, not the 2 training ones), and a current directory that has
    testA/ testB/ does not make a folder without them look held out."""
    write_translation_folder(tmp_path / "pics")
    write_translation_folder(tmp_path / "no_test", test=False)
    (tmp_path / "elsewhere" / "testA").mkdir(parents=True)
    (tmp_path / "elsewhere" / "testB").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    out, _ = run(tmp_path, "--dataset", tmp_path / "pics", "--image-size", 32, "--steps", 2, *TINY, name="pics")
    assert check_run(out, 2, (32, 32, 3))["inputs"] == "held-out test images"
    assert len(np.load(out / "samples.npz")["x"]) == 3
    out, _ = run(tmp_path, "--dataset", "../no_test", "--image-size", 32, "--steps", 2, *TINY, name="no_test")
    assert check_run(out, 2, (32, 32, 3))["inputs"].startswith("TRAINING images")  # said, not hidden
    assert len(np.load(out / "samples.npz")["x"]) == 2


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs_are_one_sentence_each(capsys, tmp_path):
    r = tmp_path / "r"
    for dataset in ["mnist:sepia", "mnist:invert", "cifar10:colour", "25gaussians", "horse2zebra"]:
        assert f"unknown dataset '{dataset}'" in error_of(capsys, ["--dataset", dataset, "--out", r])
    (tmp_path / "half" / "trainA").mkdir(parents=True)
    assert "a folder with trainA/ trainB/" in error_of(capsys, ["--dataset", tmp_path / "half", "--out", r])
    assert "--paired (pix2pix) needs pairs" in error_of(capsys, ["--paired", "--out", r])
    write_translation_folder(tmp_path / "pics")
    assert "--paired (pix2pix) needs pairs" in error_of(capsys, ["--dataset", tmp_path / "pics", "--paired", "--out", r])
    assert "multiple of 4" in error_of(capsys, ["--dataset", "mnist:colour", "--image-size", 30, "--out", r])
    assert "--lr must be positive" in error_of(capsys, ["--lr", 0, "--out", r])
    assert "must not be negative" in error_of(capsys, ["--lambda-cycle", -1, "--out", r])
    assert not r.exists()


# ---------------------------------------------------------------- learning
def test_400_steps_close_the_cycle_and_pull_g_of_a_towards_b(tmp_path):
    """Untrained: G(a) lies ~0.9-1.0 from B's modes and F(G(a)) ~0.86 from a; after 400 steps (seeds
    0-4 measured 0.06-0.42, at most 0.42 of the start, and 0.003-0.005, at most 0.006 of it) both must
    have fallen well below that."""
    a = cg.sample_toy("8gaussians", 1000, torch.Generator().manual_seed(9))
    b_centres = cg.toy_T(cg.toy_centres("8gaussians")[0])
    result = []
    for steps in (1, 400):
        _, nets = run(tmp_path, "--steps", steps, "--log-every", 400, "--sample-every", 100000, "--num-samples", 100,
                      name=str(steps))
        with torch.no_grad():
            fake_b = nets["G"](a)
            result.append((torch.cdist(fake_b, b_centres).min(1).values.mean(), (nets["F"](fake_b) - a).abs().mean()))
    (dist_0, cycle_0), (dist, cycle) = result
    assert dist < 0.7 * dist_0 and cycle < 0.1 * cycle_0


@pytest.mark.slow
def test_toy_pair_learns_a_cycle_consistent_map_onto_B(tmp_path):
    """2,000 steps (the default) on the toy pair: G sends most points onto a mode of B, F(G(a)) returns
    to a, and no mode of B is left out. (Which B mode each A mode goes to, unpaired data cannot say.)"""
    _, nets = run(tmp_path, "--log-every", 500)
    a = cg.sample_toy("8gaussians", 1000, torch.Generator().manual_seed(9))
    with torch.no_grad():
        fake_b, back = nets["G"](a), nets["F"](nets["G"](a))
    b_centres = cg.toy_T(cg.toy_centres("8gaussians")[0])
    on_b = torch.cdist(fake_b, b_centres).min(1).values < 0.1   # B's modes lie >= 0.5 apart
    assert on_b.float().mean() > 0.8
    assert (back - a).norm(dim=1).median() < 0.05
    assert len(torch.cdist(fake_b[on_b], b_centres).argmin(1).unique()) >= 6  # no collapse onto few modes
