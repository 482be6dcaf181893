"""gan.py: the concept against independent references (hand-computed losses, D* from the densities,
JS by numerical integration and scipy, the mode metric's closed form), tiny runs of every option,
the checkpoint and learning. The plumbing (data, downloads, checkpoints, bad inputs) is tested
once for every script in test_plumbing.py."""
import json
import math

import numpy as np
import pytest
import torch

import gan

LOG2 = math.log(2)


def run(tmp_path, *args, name="run"):
    out = tmp_path / name
    gan.main(["--out", str(out), "--device", "cpu", *map(str, args)])
    return out


def normal_pdf(x, mu, s):
    return np.exp(-0.5 * ((x - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi))


def trapezoid(f, x):  # written out: np.trapezoid exists only in NumPy >= 2
    return float(((f[1:] + f[:-1]) / 2 * np.diff(x)).sum())


# ---------------------------------------------------------------- the concept, by hand
def test_losses_equal_hand_computed_values():
    # logits 0 and ln 3 mean D = 1/2 and 3/4; logits 0 and -ln 3 mean D = 1/2 and 1/4
    logit_real, logit_fake = torch.tensor([0.0, math.log(3)]), torch.tensor([0.0, -math.log(3)])
    V = (math.log(0.5) + math.log(0.75)) / 2 + (math.log(0.5) + math.log(0.75)) / 2
    assert gan.value_function(logit_real, logit_fake).item() == pytest.approx(V, abs=1e-6)
    assert gan.discriminator_loss(logit_real, logit_fake).item() == pytest.approx(-V, abs=1e-6)
    assert gan.generator_loss_minimax(logit_fake).item() == pytest.approx(
        (math.log(0.5) + math.log(0.75)) / 2, abs=1e-6)
    assert gan.generator_loss_nonsaturating(logit_fake).item() == pytest.approx(
        -(math.log(0.5) + math.log(0.25)) / 2, abs=1e-6)


def test_losses_stay_exact_for_confident_logits():
    # sigmoid-then-log would give log(0) = -inf here
    logit_real, logit_fake = torch.tensor([100.0]), torch.tensor([-100.0])
    assert gan.value_function(logit_real, logit_fake).item() == pytest.approx(0.0, abs=1e-12)
    assert gan.generator_loss_nonsaturating(logit_fake).item() == pytest.approx(100.0)
    assert gan.generator_loss_minimax(logit_fake).item() == pytest.approx(0.0, abs=1e-12)


def test_minimax_gradient_is_sigmoid_l_and_nonsaturating_is_one_minus_it():
    # a confidently rejected fake (logit -8): d/dl log(1 - sigmoid(l)) = -sigmoid(l) ~ -3e-4,
    # d/dl -log sigmoid(l) = -(1 - sigmoid(l)) ~ -1
    l = torch.tensor([-8.0], requires_grad=True)
    g_mm, = torch.autograd.grad(gan.generator_loss_minimax(l), l)
    g_ns, = torch.autograd.grad(gan.generator_loss_nonsaturating(l), l)
    s = 1 / (1 + math.exp(8))
    assert g_mm.item() == pytest.approx(-s, rel=1e-4) and g_ns.item() == pytest.approx(-(1 - s), rel=1e-4)


def test_js_lower_bound_is_zero_for_a_blind_d_and_log2_for_a_perfect_one():
    assert gan.js_lower_bound(-2 * LOG2) == pytest.approx(0.0)  # D = 1/2 everywhere
    assert gan.js_lower_bound(0.0) == pytest.approx(LOG2)       # V = 0: D is always right


def test_trained_discriminator_approaches_d_star_of_the_densities():
    """D*(x) = p_data / (p_data + p_G) for P_data = N(0, 1), P_G = N(1.5, 0.7^2), computed here."""
    D = gan.train_discriminator(lambda n: torch.randn(n, 1), lambda n: 1.5 + 0.7 * torch.randn(n, 1),
                                steps=1500)
    xs = np.array([-1.0, 0.0, 0.5, 1.0, 1.5, 2.0])
    expected = normal_pdf(xs, 0, 1) / (normal_pdf(xs, 0, 1) + normal_pdf(xs, 1.5, 0.7))
    with torch.no_grad():
        got = torch.sigmoid(D(torch.tensor(xs, dtype=torch.float32)[:, None]))[:, 0].numpy()
    np.testing.assert_allclose(got, expected, atol=0.06)


def test_optimal_discriminator_maximises_the_value_function_pointwise():
    """V's integrand at x is p(x) log D + q(x) log(1 - D); a fine grid search over D in (0, 1) finds
    its maximiser independently of the closed form p / (p + q)."""
    grid = np.linspace(1e-4, 1 - 1e-4, 200001)
    for p, q in [(0.3, 0.1), (0.05, 0.9), (2.0, 2.0), (1e-3, 0.4)]:
        best = grid[np.argmax(p * np.log(grid) + q * np.log(1 - grid))]
        assert gan.optimal_discriminator(p, q) == pytest.approx(best, abs=1e-4), (p, q)


def test_exact_js_of_gaussians_equals_scipy_quad():
    integrate = pytest.importorskip("scipy.integrate")
    for theta in [0.0, 0.5, 2.0, 5.0]:
        def integrand(x):
            p, q = normal_pdf(x, 0, 1), normal_pdf(x, theta, 1)
            m = (p + q) / 2
            return 0.5 * (p * math.log(p / m) if p > 0 else 0) + 0.5 * (q * math.log(q / m) if q > 0 else 0)
        ref = integrate.quad(integrand, -15, 15 + theta, points=[0, theta], limit=200)[0]
        assert gan.js_exact_gaussians(theta) == pytest.approx(ref, abs=1e-7)
    assert gan.js_exact_gaussians(12.0) == pytest.approx(LOG2, abs=1e-6)


def test_js_bound_from_a_trained_d_matches_the_integrated_js_of_two_gaussians():
    x = np.linspace(-14, 20, 200001)
    for theta in [1.0, 3.0]:
        p, q = normal_pdf(x, 0, 1), normal_pdf(x, theta, 1)
        exact = trapezoid(0.5 * p * np.log(2 * p / (p + q)) + 0.5 * q * np.log(2 * q / (p + q)), x)
        shift = torch.tensor([theta, 0.0])
        D = gan.train_discriminator(lambda n: torch.randn(n, 2), lambda n: torch.randn(n, 2) + shift, steps=800)
        with torch.no_grad():
            V = gan.value_function(D(torch.randn(50000, 2)), D(torch.randn(50000, 2) + shift)).item()
        assert gan.js_lower_bound(V) == pytest.approx(exact, abs=0.02), theta


def test_js_saturates_at_log2_and_the_minimax_gradient_vanishes_for_disjoint_supports():
    """Parallel lines (0, U[0,1]) vs (theta, U[0,1]): JS = log 2 at every theta > 0 and, through a
    near-optimal D, G's minimax gradient falls towards zero; for overlapping Gaussians it does not."""
    base = lambda n: torch.stack([torch.zeros(n), torch.rand(n)], 1)
    results = {}
    for theta in [0.5, 2.0, 4.0]:
        shift = torch.tensor([theta, 0.0])
        D = gan.train_discriminator(base, lambda n: base(n) + shift, steps=600)
        th = torch.tensor(theta, requires_grad=True)
        logit_fake = D(base(5000) + torch.stack([th, torch.tensor(0.0)]))
        V = gan.value_function(D(base(5000)), logit_fake)
        g, = torch.autograd.grad(gan.generator_loss_minimax(logit_fake), th)
        results[theta] = (gan.js_lower_bound(V.item()), abs(g.item()))
    assert all(js == pytest.approx(LOG2, rel=0.01) for js, _ in results.values()), results
    grads = [results[t][1] for t in sorted(results)]
    assert grads[0] > grads[1] > grads[2] and grads[2] < 1e-3, grads
    D = gan.train_discriminator(lambda n: torch.randn(n, 2), lambda n: torch.randn(n, 2) + torch.tensor([1.0, 0]),
                                steps=300)
    th = torch.tensor(1.0, requires_grad=True)
    g, = torch.autograd.grad(gan.generator_loss_minimax(D(torch.randn(5000, 2) + torch.stack([th, 0 * th]))), th)
    assert abs(g.item()) > 0.05


def test_js_experiment_table_holds_scipys_js_and_a_d_near_d_star(tmp_path):
    """With 300 D steps a theta: the exact JS column equals scipy's integral, the bound from the
    trained D stays below it (a bound holds for any D) yet within 0.06 of it, and D is near D*."""
    integrate = pytest.importorskip("scipy.integrate")
    rows = gan.main(["--experiment", "js", "--js-steps", "300", "--out", str(tmp_path / "js")])
    lines = (tmp_path / "js" / "js.csv").read_text().splitlines()
    assert lines[0].split(",") == gan.JS_COLUMNS and len(lines) == 1 + 10 + 8
    assert (tmp_path / "js" / "js.png").stat().st_size > 10000
    for r in [r for r in rows if r["case"] == "gaussians"]:
        def integrand(x, t=r["theta"]):
            p, q = normal_pdf(x, 0, 1), normal_pdf(x, t, 1)
            return sum(0.5 * a * math.log(2 * a / (p + q)) for a in (p, q) if a > 0)
        ref = integrate.quad(integrand, -15, 15 + r["theta"], points=[0, r["theta"]], limit=200)[0]
        assert r["js_exact"] == pytest.approx(ref, abs=1e-6)
        assert ref - 0.06 < r["js_lower_bound"] <= ref + 0.005, r
        assert r["mean_abs_D_minus_D_star"] < 0.08, r


@pytest.mark.parametrize("argv,message", [(["--lr", "-1"], "--lr must be positive"),
                                          (["--beta1", "2"], "--beta1 in [0, 1)"),
                                          (["--dataset", "mnist", "--image-size", "48"], "DCGAN takes 28, 32, 64"),
                                          (["--dataset", "mnist", "--batch-size", "1"],
                                           "BatchNorm needs 2 or more images a batch")],
                         ids=["negative-lr", "beta1-2", "image-size-48", "batch-size-1-on-images"])
def test_a_gan_mistake_ends_in_one_sentence(capsys, tmp_path, argv, message):
    from helpers import expect_user_error
    assert message in expect_user_error(capsys, gan.main, "gan.py", [*argv, "--out", tmp_path / "r"])


def test_js_experiment_d_is_close_to_d_star_after_its_default_training(tmp_path):
    """With --js-steps 1000 (the default) sigma(D) is within 0.05 of D* on average for the
    overlapping Gaussians, where D* is a smooth function that a small MLP can fit."""
    rows = []
    for theta in [1.0, 2.0]:
        shift = torch.tensor([theta, 0.0])
        D = gan.train_discriminator(lambda n: torch.randn(n, 2), lambda n: torch.randn(n, 2) + shift, 1000)
        x = torch.cat([torch.randn(20000, 2), torch.randn(20000, 2) + shift]).double()
        p_data, p_g = (torch.exp(-((x - mu) ** 2).sum(1) / 2) for mu in (0, shift.double()))
        with torch.no_grad():
            rows.append((torch.sigmoid(D(x.float())[:, 0]).double() - gan.optimal_discriminator(p_data, p_g))
                        .abs().mean().item())
    assert max(rows) < 0.05, rows


# ---------------------------------------------------------------- toy data and the mode metric
@pytest.mark.parametrize("name,radius_or_step,std", [("8gaussians", 2 / 1.414, 0.02 / 1.414),
                                                     ("25gaussians", 2 / 2.828, 0.05 / 2.828)])
def test_toy_mixtures_follow_the_wgan_gp_construction(name, radius_or_step, std):
    x = gan.sample_toy(name, 40000, torch.Generator().manual_seed(0))
    centres, s = gan.toy_centres(name)
    assert s == pytest.approx(std)
    if name == "8gaussians":  # 8 centres at radius 2, angles k * 45 degrees, / 1.414
        angles = torch.atan2(centres[:, 1], centres[:, 0]) % (2 * math.pi)
        np.testing.assert_allclose(sorted(angles.tolist()), [k * math.pi / 4 for k in range(8)], atol=1e-6)
        np.testing.assert_allclose(centres.norm(dim=1), radius_or_step, rtol=1e-6)
    else:  # the grid {-4, -2, 0, 2, 4}^2 / 2.828
        np.testing.assert_allclose(sorted(set(np.round(centres[:, 0].tolist(), 6))),
                                   np.array([-4, -2, 0, 2, 4]) / 2.828, atol=1e-6)
    nearest = torch.cdist(x, centres).argmin(1)
    assert (x - centres[nearest]).std().item() == pytest.approx(std, rel=0.03)
    counts = torch.bincount(nearest, minlength=len(centres)).float()
    assert counts.min() > 0.8 * counts.mean()


def test_swissroll_is_the_2d_slice_of_the_classic_roll():
    r = (gan.sample_toy("swissroll", 20000, torch.Generator().manual_seed(0)) * 7.5).norm(dim=1)
    assert r.min() > 1.5 * math.pi - 1.2 and r.max() < 4.5 * math.pi + 1.2  # t in [1.5 pi, 4.5 pi]
    assert r.mean().item() == pytest.approx(3 * math.pi, rel=0.03)


def test_mode_metric_of_real_samples_is_the_gaussian_closed_form():
    # for a 2-D Gaussian, P(|x - mu| < 3 std) = 1 - exp(-9/2) = 98.89 %
    for name, n_modes in [("8gaussians", 8), ("25gaussians", 25)]:
        m = gan.mode_metrics(gan.sample_toy(name, 20000, torch.Generator().manual_seed(0)), name)
        assert m["modes"] == m["of"] == n_modes
        assert m["high_quality"] == pytest.approx(1 - math.exp(-4.5), abs=0.004)


def test_mode_metric_counts_one_mode_for_a_collapse_and_none_between_modes():
    centres, std = gan.toy_centres("8gaussians")
    assert gan.mode_metrics(centres[3] + std * torch.randn(1000, 2), "8gaussians")["modes"] == 1
    m = gan.mode_metrics((centres[0] + centres[1]) / 2 + 0.01 * torch.randn(1000, 2), "8gaussians")
    assert m["modes"] == 0 and m["high_quality"] == 0.0


# ---------------------------------------------------------------- models and options
@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 3)])
def test_dcgan_maps_noise_to_images_in_minus1_1_and_images_to_one_logit(size, channels):
    G, D = gan.dcgan_pair(16, channels, size, 8)
    x = G(torch.randn(5, 16))
    assert x.shape == (5, channels, size, size) and x.abs().max() <= 1 and D(x).shape == (5, 1)


def test_dcgan_init_follows_radford_et_al():
    G, D = gan.dcgan_pair(100, 1, 28, 64)
    conv = [m.weight for m in [*G.modules(), *D.modules()] if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    bn = [m.weight for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert torch.cat([w.flatten() for w in conv]).std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.cat(bn).mean().item() == pytest.approx(1.0, abs=0.01)


def test_defaults_depend_on_the_data_kind():
    toy, img = gan.parse_options([]), gan.parse_options(["--dataset", "mnist"])
    assert (toy.batch_size, toy.z_dim, toy.width, toy.num_samples) == (256, 2, 256, 2500)
    assert (img.batch_size, img.z_dim, img.width, img.num_samples, img.image_size) == (64, 100, 64, 1000, 28)
    assert toy.out == "runs/gan-8gaussians" and gan.parse_options(["--experiment", "js"]).out == "runs/gan-js"


# ---------------------------------------------------------------- tiny runs
def check_run_folder(out, step):
    for f in ["config.json", "log.csv", "losses.png", f"samples_{step}.png", "samples.npz", "checkpoint.pt"]:
        assert (out / f).is_file(), f
    assert json.loads((out / "config.json").read_text())["steps"] == step
    assert (out / "log.csv").read_text().splitlines()[0] == "step,loss_D,loss_G,D_x,D_G_z,seconds"
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["script"] == "gan.py" and state["step"] == step
    return np.load(out / "samples.npz")["x"]


@pytest.mark.parametrize("dataset", ["8gaussians", "25gaussians", "swissroll"])
def test_tiny_toy_run_writes_every_file(tmp_path, dataset):
    out = run(tmp_path, "--dataset", dataset, "--steps", 6, "--batch-size", 16, "--width", 16,
              "--log-every", 2, "--sample-every", 3, "--num-samples", 50)
    x = check_run_folder(out, 6)
    assert x.shape == (50, 2) and x.dtype == np.float32 and (out / "samples_3.png").is_file()
    assert (out / "metrics.json").exists() == (dataset != "swissroll")


@pytest.mark.parametrize("size", [28, 32, 64])
def test_tiny_image_run_writes_uint8_samples(tmp_path, size):
    from helpers import write_mnist_like
    write_mnist_like(tmp_path / "data" / "mnist", n=40)
    out = run(tmp_path, "--dataset", "mnist", "--data-dir", tmp_path / "data", "--image-size", size, "--steps", 3,
              "--batch-size", 8, "--width", 8, "--z-dim", 8, "--num-samples", 10, "--log-every", 1)
    x = check_run_folder(out, 3)
    assert x.shape == (10, size, size, 1) and x.dtype == np.uint8


@pytest.mark.parametrize("g_loss,d_steps", [("minimax", 1), ("nonsaturating", 3)])
def test_each_step_makes_k_d_updates_and_one_g_update(tmp_path, g_loss, d_steps, monkeypatch):
    calls = {"D": 0, "G": 0}
    d_loss, g_fn = gan.discriminator_loss, gan.GENERATOR_LOSSES[g_loss]
    monkeypatch.setattr(gan, "discriminator_loss", lambda *a: calls.__setitem__("D", calls["D"] + 1) or d_loss(*a))
    monkeypatch.setitem(gan.GENERATOR_LOSSES, g_loss, lambda *a: calls.__setitem__("G", calls["G"] + 1) or g_fn(*a))
    run(tmp_path, "--steps", 4, "--batch-size", 8, "--width", 8, "--g-loss", g_loss, "--d-steps", d_steps,
        "--sample-every", 100, "--log-every", 100)
    assert calls["D"] == 4 * d_steps
    assert calls["G"] == 4  # one per step


def test_the_checkpoint_holds_the_trained_g_and_d(tmp_path):
    """Read back with weights_only into freshly built networks, the checkpoint's G and D compute
    what the G and D that train() returns compute: they are saved after the last update."""
    from helpers import write_mnist_like
    write_mnist_like(tmp_path / "data" / "mnist", n=40)
    for dataset in ["8gaussians", "mnist"]:
        cfg = gan.parse_options(["--dataset", dataset, "--data-dir", str(tmp_path / "data"), "--batch-size", "8",
                                 "--width", "8", "--z-dim", "4", "--steps", "7", "--sample-every", "5",
                                 "--out", str(tmp_path / dataset), "--device", "cpu"])
        G = gan.train(cfg)
        state = torch.load(tmp_path / dataset / "checkpoint.pt", weights_only=True)
        assert state["step"] == 7 and state["options"]["dataset"] == dataset
        G2, D2 = (gan.mlp(4, 8, 2), gan.mlp(2, 8, 1)) if dataset == "8gaussians" else gan.dcgan_pair(4, 1, 28, 8)
        G2.load_state_dict(state["G"]), D2.load_state_dict(state["D"])
        z = torch.randn(6, 4)
        with torch.no_grad():
            torch.testing.assert_close(G2.eval()(z), G(z))
        assert state["opt_G"]["state"][0]["step"] == 7 and state["opt_D"]["state"][0]["step"] == 7


# ---------------------------------------------------------------- learning
def test_300_steps_pull_the_samples_towards_the_modes(tmp_path):
    """The quick, steady check: the mean distance from G(z) to its nearest mode of 8gaussians.
    Untrained G (five draws): 1.24-1.37; after 300 steps, seeds 0-5: 0.44, 0.49, 0.51, 0.42, 0.42,
    0.34. The bar, 0.8, sits between the two with a margin on both sides."""
    centres, _ = gan.toy_centres("8gaussians")
    mean_dist = lambda x: torch.cdist(torch.as_tensor(x), centres).min(1).values.mean().item()
    with torch.no_grad():
        assert mean_dist(gan.mlp(2, 256, 2)(torch.randn(1000, 2))) > 1.0
    for seed in [0, 1]:
        out = run(tmp_path, "--steps", 300, "--log-every", 300, "--sample-every", 300, "--seed", seed,
                  "--num-samples", 1000, name=f"s{seed}")
        assert mean_dist(np.load(out / "samples.npz")["x"]) < 0.8, seed


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_run_covers_most_modes_of_8gaussians(tmp_path, seed):
    """The full default run (4,000 steps). Measured on seeds 0-2 by `make bench`: 6/8 modes 87.4 %,
    8/8 78.7 %, 8/8 87.8 % high quality; the same files on another 2-core machine (other float
    kernels, and GAN training is chaotic): 8/8 91.2 %, 8/8 59.2 %, 6/8 85.0 %. The bar sits below the
    worst of both with a margin: 5 of 8 modes and 45 % high quality."""
    out = run(tmp_path, "--seed", seed, "--log-every", 1000, "--sample-every", 4000)
    m = json.loads((out / "metrics.json").read_text())
    assert m["modes"] >= 5 and m["high_quality"] > 0.45, m
