"""Tests for fid.py: closed forms and scipy for the Frechet distance, hand values for IS, coverage
and memorisation, the Inception port against what pytorch-fid itself computes (inception_reference
.npz, made by inception_reference.py) and against a layout written from the paper, loaders, the
weights download against a local server, and bad inputs."""
import hashlib
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fid
from helpers import (expect_user_error, FASHION_SYSTEM_DIR, closed_port_url, http_server,
                     write_cifar_binary, write_idx, write_image_folder)
from inception_reference import replayable_state

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = np.load(Path(__file__).with_name("inception_reference.npz"))


def cfg_for(*argv):
    return fid.options(list(map(str, argv)))[1]


def error_of(capsys, argv):
    return expect_user_error(capsys, fid.main, "fid.py", argv)


def random_spd(d, rng, rank=None):
    A = rng.standard_normal((d, rank or d))
    return A @ A.T / (rank or d) + (0 if rank else 1e-3 * np.eye(d))


# ---------------------------------------------------------------- Frechet distance: closed forms
def test_one_dimensional_gaussians():
    # W2^2(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 + (s1 - s2)^2
    for m1, s1, m2, s2 in [(0, 1, 0, 1), (1, 2, -1, 0.5), (3, 0.1, 3, 4)]:
        got = fid.frechet_distance([m1], [[s1 ** 2]], [m2], [[s2 ** 2]])
        assert got == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, rel=1e-12, abs=1e-12)


def test_diagonal_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3, 50), rng.uniform(0.1, 3, 50)
    mu1, mu2 = rng.standard_normal(50), rng.standard_normal(50)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_equal_covariances_leave_the_mean_term():
    rng = np.random.default_rng(2)
    S = random_spd(40, rng)
    mu1, mu2 = rng.standard_normal(40), rng.standard_normal(40)
    assert fid.frechet_distance(mu1, S, mu2, S) == pytest.approx(((mu1 - mu2) ** 2).sum(), rel=1e-8)


def test_identical_sets_give_zero_and_the_distance_is_symmetric():
    rng = np.random.default_rng(3)
    f, g = rng.standard_normal((500, 64)), rng.standard_normal((400, 64)) * 1.3 + 0.2
    mu, S = fid.gaussian_statistics(f)
    mu2, S2 = fid.gaussian_statistics(g)
    assert abs(fid.frechet_distance(mu, S, mu, S)) < 1e-9 * np.trace(S)
    assert fid.frechet_distance(mu, S, mu2, S2) == pytest.approx(fid.frechet_distance(mu2, S2, mu, S), rel=1e-10)


def test_singular_covariances_keep_the_closed_form():
    # 1-D Gaussians embedded in 5-D (zero elsewhere): singular covariances, closed form still holds.
    S1, S2 = np.zeros((5, 5)), np.zeros((5, 5))
    S1[0, 0], S2[0, 0] = 4.0, 0.25
    assert fid.frechet_distance(np.zeros(5), S1, np.ones(5), S2) == pytest.approx(5 + (2 - 0.5) ** 2, rel=1e-12)


def test_gaussian_statistics_are_numpys_unbiased_mean_and_covariance():
    f = np.random.default_rng(4).standard_normal((30, 3))
    mu, S = fid.gaussian_statistics(f)
    centred = f - f.mean(0)
    np.testing.assert_allclose(mu, f.sum(0) / 30)
    np.testing.assert_allclose(S, centred.T @ centred / 29, rtol=1e-12)


@pytest.mark.parametrize("d", [8, 256, pytest.param(2048, marks=pytest.mark.slow)])
def test_against_scipy_sqrtm(d):
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(d)
    S1, S2 = random_spd(d, rng), random_spd(d, rng)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    covmean = linalg.sqrtm(S1 @ S2)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(S1) + np.trace(S2) - 2 * np.trace(covmean).real
    assert fid.frechet_distance(mu1, S1, mu2, S2) == pytest.approx(ref, rel=1e-6)


# ---------------------------------------------------------------- IS, coverage, memorisation, modes
def test_score_is_one_for_uniform_and_k_for_confident_balanced_predictions():
    assert fid.inception_score(np.full((1000, 10), 0.1))[0] == pytest.approx(1.0)
    onehot = np.eye(10)[np.arange(1000) % 10]
    assert fid.inception_score(onehot, splits=1)[0] == pytest.approx(10.0, rel=1e-6)
    assert fid.inception_score(onehot, splits=10)[0] == pytest.approx(10.0, rel=0.05)  # random splits: near-balanced
    collapsed = np.eye(10)[np.zeros(1000, int)]  # confident but always the same class
    assert fid.inception_score(collapsed)[0] == pytest.approx(1.0)
    # hand value: two samples, p(c|x) = (1, 0) and (1/2, 1/2): p(c) = (3/4, 1/4)
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    kl = (math.log(1 / 0.75) + 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)) / 2
    assert fid.inception_score(p, splits=1)[0] == pytest.approx(math.exp(kl))


def test_score_of_fewer_samples_than_splits_takes_one_split_per_sample():
    p = np.array([[1.0, 0.0], [0.5, 0.5], [0.2, 0.8]])
    mean, std = fid.inception_score(p, splits=10)
    assert np.isfinite(mean) and np.isfinite(std)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0)  # one sample: p(c) = p(c|y), KL 0


def test_inception_score_does_not_depend_on_the_order_of_the_samples():
    """Class-ordered samples (as cgan.py and ddpm.py --cond export them) score like shuffled ones."""
    p = np.repeat(np.eye(10) * 0.91 + 0.01, 100, axis=0)  # 100 confident samples per class, in class order
    ordered, _ = fid.inception_score(p)
    shuffled, _ = fid.inception_score(p[np.random.default_rng(5).permutation(len(p))])
    assert ordered == pytest.approx(shuffled, rel=0.02) and ordered > 5


def test_coverage_flags_a_missing_class_and_reports_accuracy():
    rng = np.random.default_rng(0)
    labels = rng.choice([c for c in range(10) if c != 7], 900)  # class 7 dropped
    p = np.eye(10)[labels] * 0.9 + 0.01
    cov = fid.class_coverage(p, y=labels)
    assert cov["missing_classes"] == [7] and cov["conditional_accuracy"] == 1.0
    assert cov["confidence"] == pytest.approx(0.91) and cov["collapsed_to"] == []
    even = fid.class_coverage(np.eye(10)[np.arange(1000) % 10])
    assert even["missing_classes"] == [] and even["class_entropy"] == pytest.approx(math.log(10))


def test_coverage_flags_mode_collapse_when_one_class_holds_most_samples():
    labels = np.r_[np.full(60, 3), np.arange(40) % 10]  # class 3: 64 of 100
    cov = fid.class_coverage(np.eye(10)[labels])
    assert cov["collapsed_to"] == [3] and cov["class_share"][3] == pytest.approx(0.64)
    assert fid.class_coverage(np.eye(10)[np.arange(100) % 10])["collapsed_to"] == []


def test_memorisation_flags_copies_and_not_fresh_samples():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (1200, 8, 8, 1), dtype=np.uint8)
    train, heldout, fresh = real[:800], real[800:1000], real[1000:]
    copies = fid.memorisation(train[:100], train, heldout)
    assert copies["likely_copies"] == 1.0 and copies["median_nn_distance"] == 0.0
    novel = fid.memorisation(fresh, train, heldout)
    assert novel["likely_copies"] < 0.05
    assert novel["median_nn_distance"] == pytest.approx(novel["heldout_median_nn_distance"], rel=0.05)


def test_mode_metric_matches_the_closed_form():
    m = fid.mode_metrics(fid.sample_toy("25gaussians", 20000, torch.Generator().manual_seed(0)), "25gaussians")
    assert m["modes"] == 25 and m["high_quality"] == pytest.approx(1 - math.exp(-4.5), abs=0.004)


# ---------------------------------------------------------------- the FID Inception
# (name, out, in, kh, kw) of every convolution, written out from the Inception-V3 architecture
# (Szegedy et al. 2016, Figures 5-7 and Table 1) as the published weight file lays it out.
STEM = [("Conv2d_1a_3x3", 32, 3, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 64, 32, 3, 3),
        ("Conv2d_3b_1x1", 80, 64, 1, 1), ("Conv2d_4a_3x3", 192, 80, 3, 3)]


def block_a(name, c_in, pool):
    return [(f"{name}.branch1x1", 64, c_in, 1, 1), (f"{name}.branch5x5_1", 48, c_in, 1, 1),
            (f"{name}.branch5x5_2", 64, 48, 5, 5), (f"{name}.branch3x3dbl_1", 64, c_in, 1, 1),
            (f"{name}.branch3x3dbl_2", 96, 64, 3, 3), (f"{name}.branch3x3dbl_3", 96, 96, 3, 3),
            (f"{name}.branch_pool", pool, c_in, 1, 1)]


def block_c(name, c7):
    return [(f"{name}.branch1x1", 192, 768, 1, 1), (f"{name}.branch7x7_1", c7, 768, 1, 1),
            (f"{name}.branch7x7_2", c7, c7, 1, 7), (f"{name}.branch7x7_3", 192, c7, 7, 1),
            (f"{name}.branch7x7dbl_1", c7, 768, 1, 1), (f"{name}.branch7x7dbl_2", c7, c7, 7, 1),
            (f"{name}.branch7x7dbl_3", c7, c7, 1, 7), (f"{name}.branch7x7dbl_4", c7, c7, 7, 1),
            (f"{name}.branch7x7dbl_5", 192, c7, 1, 7), (f"{name}.branch_pool", 192, 768, 1, 1)]


def block_e(name, c_in):
    return [(f"{name}.branch1x1", 320, c_in, 1, 1), (f"{name}.branch3x3_1", 384, c_in, 1, 1),
            (f"{name}.branch3x3_2a", 384, 384, 1, 3), (f"{name}.branch3x3_2b", 384, 384, 3, 1),
            (f"{name}.branch3x3dbl_1", 448, c_in, 1, 1), (f"{name}.branch3x3dbl_2", 384, 448, 3, 3),
            (f"{name}.branch3x3dbl_3a", 384, 384, 1, 3), (f"{name}.branch3x3dbl_3b", 384, 384, 3, 1),
            (f"{name}.branch_pool", 192, c_in, 1, 1)]


CONVS = (STEM + block_a("Mixed_5b", 192, 32) + block_a("Mixed_5c", 256, 64) + block_a("Mixed_5d", 288, 64)
         + [("Mixed_6a.branch3x3", 384, 288, 3, 3), ("Mixed_6a.branch3x3dbl_1", 64, 288, 1, 1),
            ("Mixed_6a.branch3x3dbl_2", 96, 64, 3, 3), ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3)]
         + block_c("Mixed_6b", 128) + block_c("Mixed_6c", 160) + block_c("Mixed_6d", 160) + block_c("Mixed_6e", 192)
         + [("Mixed_7a.branch3x3_1", 192, 768, 1, 1), ("Mixed_7a.branch3x3_2", 320, 192, 3, 3),
            ("Mixed_7a.branch7x7x3_1", 192, 768, 1, 1), ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
            ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1), ("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3)]
         + block_e("Mixed_7b", 1280) + block_e("Mixed_7c", 2048))


def expected_state_shapes():
    table = {}
    for name, out, c_in, kh, kw in CONVS:
        table[f"{name}.conv.weight"] = (out, c_in, kh, kw)
        for k in ["weight", "bias", "running_mean", "running_var"]:
            table[f"{name}.bn.{k}"] = (out,)
        table[f"{name}.bn.num_batches_tracked"] = ()
    table["fc.weight"], table["fc.bias"] = (1008, 2048), (1008,)
    return table


def pytorch_fid_shapes():
    """{key: shape} of pytorch-fid's own FID Inception, in its order, as the reference stores it."""
    return {k: tuple(int(d) for d in s.split(",") if d) for k, s in (e.split(":") for e in REFERENCE["keys"])}


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    """The one Inception of the fast tier: the reference's replayable weights, laid out as pytorch-fid's
    state dict, saved where load_inception looks and loaded by it (SHA-256 checked, strict)."""
    hub = tmp_path_factory.mktemp("hub")
    path = hub / "checkpoints" / fid.INCEPTION_URL.rsplit("/", 1)[1]
    path.parent.mkdir()
    torch.save({k: torch.from_numpy(v) for k, v in replayable_state(pytorch_fid_shapes()).items()}, path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.hub, "get_dir", lambda: str(hub))
        mp.setattr(fid, "INCEPTION_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
        return fid.load_inception("cpu")


def test_inception_parameters_match_the_published_layout_and_pytorch_fids(inception):
    got = {k: tuple(v.shape) for k, v in inception.state_dict().items()}
    assert len(CONVS) == 94 and got == expected_state_shapes() == pytorch_fid_shapes()


def test_the_port_computes_what_pytorch_fid_computes(inception):
    """pytorch-fid's InceptionV3, with the same replayable weights, gave these 2048-d features for
    these images; the IS logits are those features times fc.weight, WITHOUT fc's bias (order 1)."""
    f, p_cy = fid.extract({"kind": "images", "x": REFERENCE["x"], "name": "ref"}, inception, cfg_for(), "cpu")
    assert np.abs(f - REFERENCE["features"]).max() < 1e-4 * np.abs(REFERENCE["features"]).max()
    logits = torch.from_numpy(REFERENCE["logits"]).double()
    np.testing.assert_allclose(p_cy, logits.softmax(1), atol=1e-4)
    assert not np.allclose(p_cy, (logits + inception.fc.bias.detach().double()).softmax(1), atol=1e-3)


def captured_inputs(model, x, names):
    got = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: got.__setitem__(n, a[0]))
             for n in names]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return got


def test_inception_differs_from_torchvision_where_the_tf_graph_does(inception):
    x = torch.rand(1, 3, 400, 400)  # downsampled to 299: antialiasing would change the input
    names = ["Conv2d_1a_3x3", "Mixed_5b", "Mixed_5b.branch_pool", "Mixed_6b", "Mixed_6b.branch_pool",
             "Mixed_7b", "Mixed_7b.branch_pool", "Mixed_7c", "Mixed_7c.branch_pool"]
    got = captured_inputs(inception, x, names)
    # preprocessing: bilinear resize to 299 without antialiasing, then [0, 1] -> [-1, 1]
    assert torch.allclose(got["Conv2d_1a_3x3"], 2 * F.interpolate(x, (299, 299), mode="bilinear", align_corners=False) - 1)
    for block in ["Mixed_5b", "Mixed_6b", "Mixed_7b"]:  # average pools that exclude the padding
        inp = got[block]
        tf = F.avg_pool2d(inp, 3, 1, 1, count_include_pad=False)
        assert torch.allclose(got[f"{block}.branch_pool"], tf)
        assert not torch.allclose(got[f"{block}.branch_pool"], F.avg_pool2d(inp, 3, 1, 1, count_include_pad=True))
    # Mixed_7c: a max pool in the pool branch
    assert torch.allclose(got["Mixed_7c.branch_pool"], F.max_pool2d(got["Mixed_7c"], 3, 1, 1))
    antialiased = 2 * F.interpolate(x, (299, 299), mode="bilinear", antialias=True) - 1
    assert not torch.allclose(got["Conv2d_1a_3x3"], antialiased, atol=1e-3)


def test_weights_are_downloaded_checked_in_full_and_loaded_strictly(tmp_path, monkeypatch):
    """Against a local server, with a one-layer stand-in for the network (no second Inception)."""
    monkeypatch.setattr(fid, "FIDInceptionV3", lambda: nn.Linear(2, 1))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    served, name = tmp_path / "served", fid.INCEPTION_URL.rsplit("/", 1)[1]
    served.mkdir()
    torch.save(nn.Linear(2, 1).state_dict(), served / name)
    digest = hashlib.sha256((served / name).read_bytes()).hexdigest()
    cached = tmp_path / "hub" / "checkpoints" / name
    with http_server(served) as url:
        monkeypatch.setattr(fid, "INCEPTION_URL", url + name)
        # the whole digest is compared: one differing last hex digit is refused, nothing is kept
        monkeypatch.setattr(fid, "INCEPTION_SHA256", digest[:-1] + ("0" if digest[-1] != "0" else "1"))
        with pytest.raises(SystemExit, match="invalid hash value"):
            fid.load_inception("cpu")
        assert not cached.exists() and list(cached.parent.iterdir()) == []
        monkeypatch.setattr(fid, "INCEPTION_SHA256", digest)
        assert isinstance(fid.load_inception("cpu"), nn.Linear) and cached.is_file()
    torch.save({**nn.Linear(2, 1).state_dict(), "extra": torch.zeros(1)}, cached)  # changed after the download
    with pytest.raises(SystemExit, match="not the published one"):
        fid.load_inception("cpu")
    monkeypatch.setattr(fid, "INCEPTION_SHA256", hashlib.sha256(cached.read_bytes()).hexdigest())
    with pytest.raises(SystemExit, match='Unexpected key.* "extra"') as e:  # strict: no key more
        fid.load_inception("cpu")
    assert "\n" not in str(e.value)  # torch's multi-line message, told in one line
    monkeypatch.setattr(fid, "INCEPTION_URL", closed_port_url() + name)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub2"))
    with pytest.raises(SystemExit, match="with no network, put http.* there"):
        fid.load_inception("cpu")


def test_inception_end_to_end_on_a_folder_against_cifar10(inception, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fid, "load_inception", lambda device: inception)  # the fast tier's only one
    write_cifar_binary(tmp_path / "data" / "cifar10" / "cifar-10-binary.tar.gz")
    write_image_folder(tmp_path / "a", sizes=((64, 64),), classes=("x", "y"))
    r = fid.main([str(tmp_path / "a"), "cifar10", "--num-real", "2", "--data-dir", str(tmp_path / "data")])
    assert r["extractor"] == "inception" and r["n"] == [2, 2] and r["FID"] > 0
    assert "Inception Score" in r and "coverage" not in r  # ImageNet's classes are not the data's
    assert any("biased up at small N; Sigma singular" in n for n in r["notes"])  # diagnostics, not silence
    # 64-px samples against 32-px CIFAR-10: no pixel distances between them, and a note that says so
    assert "memorisation" not in r and any("no memorisation check" in n for n in r["notes"])
    assert "FID " in capsys.readouterr().out


def test_pytorch_fids_statistics_files_are_read_and_their_n_is_unknown(tmp_path, capsys):
    rng = np.random.default_rng(0)  # pytorch-fid's are 2048-d; the reading does not depend on d
    mu1, mu2, S = rng.standard_normal(256), rng.standard_normal(256), np.eye(256)
    np.savez(tmp_path / "theirs.npz", mu=mu1, sigma=S)  # pytorch-fid's format: mu and sigma only
    np.savez(tmp_path / "other.npz", mu=mu2, sigma=2 * S)
    r = fid.main([str(tmp_path / "theirs.npz"), str(tmp_path / "other.npz")])
    assert r["FD"] == pytest.approx(((mu1 - mu2) ** 2).sum() + 256 * (1 - math.sqrt(2)) ** 2)
    assert r["n"] == [None, None] and "N = ? (a statistics file) and ?" in capsys.readouterr().out
    np.savez(tmp_path / "clf.npz", mu=mu2[:128], sigma=S[:128, :128])
    err = error_of(capsys, [tmp_path / "theirs.npz", tmp_path / "clf.npz"])
    assert "256-d statistics against 128-d" in err


# ---------------------------------------------------------------- classifier, loaders, CLI
def write_patterns(folder, n, seed, split):
    """A learnable stand-in for MNIST: class c is a bright 8x8 square at a place of its own, in noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 + 8 * (c // 4): 10 + 8 * (c // 4), 2 + 6 * (c % 4): 10 + 6 * (c % 4)] = 250
    pre = "train" if split == "train" else "t10k"
    write_idx(Path(folder) / f"{pre}-images-idx3-ubyte.gz", images)
    write_idx(Path(folder) / f"{pre}-labels-idx1-ubyte.gz", labels)
    return images, labels


@pytest.fixture
def mnist_dir(tmp_path):
    write_patterns(tmp_path / "data" / "mnist", 300, 1, "train")
    write_patterns(tmp_path / "data" / "mnist", 100, 2, "test")
    return tmp_path / "data"


def test_the_classifier_learns_and_its_checkpoint_scores_samples(mnist_dir, tmp_path, capsys):
    model, acc = fid.main(["train-classifier", "--dataset", "mnist", "--data-dir", str(mnist_dir),
                           "--epochs", "4", "--batch-size", "30"])
    assert acc > 0.9  # chance is 0.1
    saved = torch.load(mnist_dir / "classifiers" / "mnist.pt", weights_only=True)
    assert saved["test_accuracy"] == acc and "test accuracy" in capsys.readouterr().out
    train, labels = write_patterns(tmp_path / "copy", 300, 1, "train")  # the training set itself
    np.savez(tmp_path / "samples.npz", x=train[:120, ..., None], y=labels[:120])
    r = fid.main([str(tmp_path / "samples.npz"), "mnist", "--data-dir", str(mnist_dir)])
    assert r["extractor"] == "classifier" and r["n"] == [120, 300] and "classifier score" in r
    assert r["coverage"]["conditional_accuracy"] > 0.9 and r["coverage"]["missing_classes"] == []
    assert r["memorisation"]["likely_copies"] == 1.0  # copies of training images are caught
    out = capsys.readouterr().out
    assert "FD " in out and "FID" not in out and "MODE COLLAPSE" not in out
    # samples all of one class: mode collapse, said where the report shows it
    np.savez(tmp_path / "threes.npz", x=train[labels == 3][:30, ..., None])
    r = fid.main([str(tmp_path / "threes.npz"), "mnist:test", "--data-dir", str(mnist_dir)])
    assert r["coverage"]["collapsed_to"] == [3] and r["reference"] == "mnist:test"
    assert "MODE COLLAPSE: class 3 holds 100% of the samples" in capsys.readouterr().out


def test_missing_classifier_says_how_to_train_it(tmp_path, capsys, mnist_dir):
    np.savez(tmp_path / "s.npz", x=np.zeros((10, 28, 28, 1), np.uint8))
    err = error_of(capsys, [tmp_path / "s.npz", "mnist", "--data-dir", mnist_dir])
    assert "fid.py train-classifier --dataset mnist" in err


def test_nan_features_are_refused(tmp_path, capsys, mnist_dir):
    model = fid.Classifier()
    for p in model.parameters():
        p.data.fill_(float("nan"))
    torch.save({"kind": "classifier", "model": model.state_dict()}, tmp_path / "nan.pt")
    np.savez(tmp_path / "s.npz", x=np.zeros((10, 28, 28, 1), np.uint8))
    err = error_of(capsys, [tmp_path / "s.npz", "mnist", "--data-dir", mnist_dir, "--classifier", tmp_path / "nan.pt"])
    assert "NaN" in err


def test_loaders(tmp_path, mnist_dir):
    cfg = cfg_for("--data-dir", mnist_dir, "--num-real", 50)
    write_image_folder(tmp_path / "same", sizes=((20, 20),) * 2)
    s = fid.load_source(str(tmp_path / "same"), cfg)
    assert s["kind"] == "images" and s["x"].shape == (4, 20, 20, 3) and s["x"].dtype == np.uint8
    np.savez(tmp_path / "pts.npz", x=np.zeros((7, 2), np.float32))
    assert fid.load_source(str(tmp_path / "pts.npz"), cfg)["kind"] == "points"
    d = fid.load_source("mnist:test", cfg)
    assert d["x"].shape == (50, 28, 28, 1) and d["dataset"] == "mnist" and len(d["y"]) == 50
    assert len(fid.load_source("8gaussians", cfg, n_like=33)["x"]) == 33


def test_a_folder_of_mixed_sizes_is_centre_cropped_to_its_first_images_shorter_side(tmp_path):
    write_image_folder(tmp_path / "mixed")  # 40x30, 28x28 and 64x80 in each of two class folders
    s = fid.load_source(str(tmp_path / "mixed"), cfg_for())
    assert s["x"].shape == (6, 30, 30, 3)


@pytest.mark.parametrize("case,message", [
    ("empty", "no .png or .jpg images below"),
    ("badnpz", "needs 'x', uint8 N x H x W x C images"), ("nokey", "or 'mu' and 'sigma'; it has z"),
    ("unknown", "'nosuch' is no .npz file, folder or data set"), ("one", "give two sources"),
    ("split", "swissroll, mnist, fashion-mnist, cifar10, with :train or :test"),
    ("points_vs_images", "cannot compare 2-D points with images"),
    ("zero-batch", "--batch-size: must be a positive integer, not '0'"),
    ("one-sample", "has 1 sample(s); a covariance needs 2"),
    ("toy-split", "8gaussians:val' is no .npz file, folder or data set"),
    ("nan-points", "nan.npz hold NaN or inf"),
    ("classifier-out-below-a-file", "cannot make a folder for --out")], ids=lambda v: v)
def test_bad_inputs(case, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 8, 8, 1), np.float32))
    np.savez(tmp_path / "nokey.npz", z=np.zeros(3))
    np.savez(tmp_path / "pts.npz", x=np.zeros((3, 2), np.float32))
    np.savez(tmp_path / "nan.npz", x=np.full((10, 2), np.nan, np.float32))  # a diverged generator's
    write_image_folder(tmp_path / "pics", sizes=((8, 8),))
    argv = {"empty": [tmp_path / "empty", "8gaussians"], "badnpz": [tmp_path / "bad.npz", "8gaussians"],
            "nokey": [tmp_path / "nokey.npz", "8gaussians"], "unknown": ["nosuch", "8gaussians"],
            "one": ["8gaussians"], "split": ["mnist:val", "mnist"],
            "points_vs_images": [tmp_path / "pts.npz", tmp_path / "pics"],
            "zero-batch": ["8gaussians", "8gaussians", "--batch-size", "0"],
            "one-sample": ["8gaussians", "8gaussians", "--num-real", "1"],
            "toy-split": ["8gaussians:val", "8gaussians"],
            "nan-points": [tmp_path / "nan.npz", "8gaussians"],
            "classifier-out-below-a-file": ["train-classifier", "--out", tmp_path / "pts.npz" / "c.pt"]}[case]
    assert message in error_of(capsys, argv)


def test_toy_samples_from_gan_py(tmp_path):
    import gan
    gan.main(["--out", str(tmp_path / "g"), "--steps", "3", "--batch-size", "8", "--width", "8", "--num-samples", "300"])
    r = fid.main([str(tmp_path / "g" / "samples.npz"), "8gaussians"])
    assert r["extractor"] == "raw" and r["n"] == [300, 300] and r["modes"]["of"] == 8 and r["FD"] > 0


@pytest.mark.slow
@pytest.mark.skipif(not (FASHION_SYSTEM_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_classifier_learns(tmp_path):
    _, acc = fid.main(["train-classifier", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--epochs", "1"])
    assert acc > 0.8  # one epoch (chance: 0.1); the default 3 epochs reach about 0.88


def test_the_gaussian_assumption_hides_21_of_25_modes_from_the_frechet_distance():
    """The notes call FID's Gaussian assumption strong: 8gaussians has the mean and (nearly) the
    covariance of 25gaussians and is ~0 away from it, though it hits only 4 of the 25 modes."""
    held_out = fid.main(["25gaussians:test", "25gaussians"])
    other = fid.main(["8gaussians", "25gaussians"])  # both: mean 0, covariance ~I
    assert other["FD"] < 0.01 and held_out["FD"] < 0.01
    assert other["modes"]["modes"] == 4  # (+-1.414, 0), (0, +-1.414): 4 of 25, the rest between
    assert other["modes"]["high_quality"] < 0.55 < 0.95 < held_out["modes"]["high_quality"]
    assert fid.main(["swissroll", "25gaussians"])["FD"] > 0.05


def test_fid_py_runs_alone_in_an_empty_folder_prints_usage_with_no_arguments_and_imports_quietly(tmp_path):
    (tmp_path / "fid.py").write_text((ROOT / "fid.py").read_text())
    r = subprocess.run([sys.executable, "-B", "fid.py"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "usage: fid.py" in r.stdout, r.stderr
    assert "python fid.py runs/gan-fashion-mnist/samples.npz" in r.stdout
    r = subprocess.run([sys.executable, "-B", "-c", "import fid"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == r.stderr == "" and sorted(p.name for p in tmp_path.iterdir()) == ["fid.py"]


def test_a_command_line_mistake_prints_one_line_and_exits_with_1(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "fid.py"), "nope", "8gaussians"], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "'nope' is no .npz file" in r.stderr
