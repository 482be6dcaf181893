"""fid.py - judging a generator the way the lecture notes do, one file to read beside them.

The notes' evaluation section (note 001 and note 003, "GAN如何评价好坏"), in their order:
  1. Ask a classifier about each sample y. A confident p(c|y) means a clear sample (quality). The
     class distribution averaged over samples, p(c) = E_y p(c|y), should be even (diversity): a peak
     is mode collapse, a class that never wins is mode dropping. The Inception Score folds both in,
         IS = exp(E_y KL(p(c|y) || p(c))),   from 1 (no information) to K (confident and balanced);
     it needs a classifier that knows the images: ImageNet's Inception knows no digits or garments.
  2. FID: the classifier's features of real and of generated images (the notes' P.l and G.l, f_r
     and f_g here), a Gaussian fitted to each, and the Frechet distance between the two Gaussians,
         FID = ||mu_r - mu_g||^2 + Tr(Sigma_r + Sigma_g - 2 (Sigma_r Sigma_g)^{1/2}).
     Only means and covariances count (the notes call the Gaussian assumption strong): 25gaussians,
     8gaussians and one Gaussian with the same mean and covariance are all ~0 apart. FID also
     falls as N grows: compare at one N, and 2048-d features need N >= 2,048 (10,000+ is usual).
  3. The memorising GAN: copies of the training set score a perfect FID. We compare each sample's
     distance to its nearest training image with the same distance for held-out real images.
Also KID (an unbiased kernel cousin of FID) and, on the 2-D toy sets, VEEGAN's modes captured and
high-quality %. The names FID, KID and Inception Score are kept for the Inception network; with our
28-px classifier or raw 2-D points the file says FD, KD and "classifier score" instead.

Examples:
  python fid.py train-classifier --dataset fashion-mnist         # once: a small CNN, ~2 CPU minutes
  python fid.py runs/gan-fashion-mnist/samples.npz fashion-mnist  # classifier features, offline
  python fid.py 25gaussians:gaussian 25gaussians                  # FD ~0, few points on a mode
  python fid.py fashion-mnist:test fashion-mnist                  # real vs real: the floor
  python fid.py samples.npz cifar10 --extractor inception         # the standard FID (weights: once)
  python fid.py cifar10 --extractor inception --save-stats c10.npz  # cache the real statistics
A source is a samples.npz, a folder of images, a statistics .npz (ours or pytorch-fid's), or a data
set name with :train or :test (default train); a toy set also takes :gaussian (its Gaussian fit).

Deviations: the square root uses symmetric eigendecompositions, not scipy's sqrtm (derivation in
frechet_distance); IS splits are a fixed random permutation, not consecutive slices (class-ordered
exports would score ~1); non-square folder images are centre-cropped, where pytorch-fid stretches
them to 299 x 299: the same numbers for square images only.
"""
import argparse, gzip, hashlib, io, json, math, os, sys, tarfile, time, urllib.request, zlib
from collections import OrderedDict
from pathlib import Path
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# ------------------------------------------------------- 1. a classifier's view: quality, diversity
def class_coverage(p_cy, y=None, imagenet=False):
    """Confidence (mean max p(c|y)) and p(c) = E_y p(c|y). With our 10-class classifier also each
    class's share of wins and the classes won by < 10 % of a fair share (mode dropping)."""
    if imagenet:  # TF's 1008 outputs: 1..1000 are ImageNet's classes, renormalised over them
        p_cy = p_cy[:, 1:1001] / p_cy[:, 1:1001].sum(1, keepdims=True)
    # p(c) = E_y p(c|y), the class distribution averaged over the samples: even = diverse
    K, p_c = p_cy.shape[1], p_cy.mean(0)
    out = {"confidence": float(p_cy.max(1).mean()), "max_entropy": math.log(K),
           "class_entropy": float(-(p_c * np.log(np.clip(p_c, 1e-12, None))).sum())}
    if not imagenet:  # ImageNet's classes are not the data's: "missing" would mean nothing there
        share = np.bincount(p_cy.argmax(1), minlength=K) / len(p_cy)
        out["class_share"] = [round(float(s), 4) for s in share]
        out["missing_classes"] = [int(c) for c in np.flatnonzero(share < 0.1 / K)]
    if y is not None and not imagenet:  # samples that carry the label they were asked for
        out["conditional_accuracy"] = float((p_cy.argmax(1) == np.asarray(y)).mean())
    return out

def inception_score(p_cy, splits=10):
    """exp(E_y KL(p(c|y) || p(c))) in each split, p(c) the split's mean; mean, std over splits."""
    scores, log = [], lambda p: np.log(np.clip(p, 1e-12, None))
    for part in np.array_split(p_cy[np.random.default_rng(0).permutation(len(p_cy))], splits):
        # KL(p(c|y) || p(c)) = sum_c p(c|y) (log p(c|y) - log p(c)), averaged over y, then exp
        scores.append(math.exp((part * (log(part) - log(part.mean(0)))).sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))

# ------------------------------------------------------- 2. the Frechet distance of two Gaussians
def gaussian_statistics(f, name="features", notes=None):
    """mu and Sigma (float64, unbiased) of N x d features, with a note when the estimate is poor."""
    n, d = f.shape
    if n < 2:
        raise SystemExit(f"{PROG}: error: {name} has {n} sample(s); a covariance needs at least 2")
    mu, sigma = f.mean(0), np.cov(f, rowvar=False).reshape(d, d)
    ev = np.linalg.eigvalsh(sigma)
    rank = int((ev > ev.max() * 1e-10).sum()) if ev.max() > 0 else 0
    if notes is not None and n <= d:
        notes.append(f"{name}: {n} samples of {d}-d features: Sigma has rank <= {n - 1}, a poor "
                     "estimate; a Frechet distance needs N well above d")
    elif notes is not None and rank < d:
        notes.append(f"{name}: Sigma has rank {rank} of {d}; its round-off eigenvalues are clamped "
                     "to 0 in the square root, no offset is added")
    return mu, sigma

def psd_sqrt(sigma):  # symmetric Sigma = V diag(lambda) V^T: Sigma^{1/2} = V diag(sqrt(lambda)) V^T
    lam, V = np.linalg.eigh(sigma)
    return (V * np.sqrt(np.clip(lam, 0, None))) @ V.T

def frechet_distance(mu1, sigma1, mu2, sigma2):
    """d^2 = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2}), in float64, without scipy:
      - AB and BA have the same eigenvalues; with A = S1^{1/2}, B = S1^{1/2} S2 that makes S1 S2
        and M = S1^{1/2} S2 S1^{1/2} share their eigenvalues lambda_i;
      - M is symmetric and x^T M x = (S1^{1/2} x)^T S2 (S1^{1/2} x) >= 0: lambda_i real and >= 0;
      - (S1 S2)^{1/2} has eigenvalues sqrt(lambda_i), and a trace is the sum of the eigenvalues.
    So Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(M)): two symmetric eigendecompositions, all real."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise SystemExit(f"{PROG}: error: the statistics have different dimensions "
                         f"({mu1.shape[0]} and {mu2.shape[0]})")
    s1_half = psd_sqrt(sigma1)
    M = s1_half @ sigma2 @ s1_half
    lam = np.linalg.eigvalsh((M + M.T) / 2)  # symmetrised: round-off only
    diff = mu1 - mu2
    # ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 sum_i sqrt(lambda_i)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
                 - 2 * np.sqrt(np.clip(lam, 0, None)).sum())

# ------------------------------------------------------- 3. memorisation, 4. KID, toy-set modes
def nearest_distances(a, b, chunk=2048):  # each row of a: Euclidean distance to the nearest of b
    a, b = torch.from_numpy(a).float(), torch.from_numpy(b).float()
    return torch.cat([torch.cdist(a[i:i + chunk], b).min(1).values
                      for i in range(0, len(a), chunk)]).numpy()

def memorisation(x_gen, x_train, x_heldout):
    """Pixel distance (in [0, 1] units) of each sample to its nearest training image, against the
    same for held-out real images; a likely copy is closer than 99 % of held-out images are."""
    flat = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255
    d_gen, d_held = (nearest_distances(flat(x), flat(x_train)) for x in (x_gen, x_heldout))
    threshold = float(np.percentile(d_held, 1))
    return {"median_nn_distance": float(np.median(d_gen)), "copy_threshold": threshold,
            "heldout_median_nn_distance": float(np.median(d_held)),
            "likely_copies": float((d_gen < threshold).mean())}

def kernel_distance(f1, f2, subsets=100, subset_size=1000, seed=0):
    """KID: the unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 on random subsets of size m
    (mean, std); its expectation is 0 when both sets come from one distribution."""
    rng, d, m = np.random.default_rng(seed), f1.shape[1], min(subset_size, len(f1), len(f2))
    if m < 2:
        raise SystemExit(f"{PROG}: error: KID needs at least 2 samples in each set")
    values = []
    for _ in range(subsets):
        x, y = f1[rng.choice(len(f1), m, replace=False)], f2[rng.choice(len(f2), m, replace=False)]
        k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        # sum_{i != j} k(x_i, x_j) / (m (m - 1)) + the same for y - 2 sum_{i, j} k(x_i, y_j) / m^2
        values.append((k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
                      - 2 * k_xy.sum() / m ** 2)
    return float(np.mean(values)), float(np.std(values))

# ------------------------------------------------------- 5. the feature extractors
# (a) The FID Inception-V3: TensorFlow's graph of 2015-12-05 as pytorch-fid ports it, under
# torchvision's parameter names, so the published weights load with strict=True. Three details of
# the TF graph differ from torchvision and move FID: 1008 outputs; the 3x3 average pools exclude
# the zero padding (count_include_pad=False); Mixed_7c's pool branch takes a MAX pool.
INCEPTION_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                 "pt_inception-2015-12-05-6726825d.pth")
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
# Each Mixed block: branches of convolutions "out:kernel[/stride]" run in turn; "a|b" is a fork
# (both read the same input, outputs concatenated). The pool branch: "avg C" or "max C" (3x3 pool,
# then a 1x1 conv to C channels) or "max/2" (a bare 3x3 max pool, stride 2).
A = lambda pool: {"branch1x1": "64:1x1", "branch5x5": "48:1x1 64:5x5",
                  "branch3x3dbl": "64:1x1 96:3x3 96:3x3", "pool": f"avg {pool}"}
C = lambda c: {"branch1x1": "192:1x1", "branch7x7": f"{c}:1x1 {c}:1x7 192:7x1",
               "branch7x7dbl": f"{c}:1x1 {c}:7x1 {c}:1x7 {c}:7x1 192:1x7", "pool": "avg 192"}
E = lambda pool: {"branch1x1": "320:1x1", "branch3x3": "384:1x1 384:1x3|384:3x1",
                  "branch3x3dbl": "448:1x1 384:3x3 384:1x3|384:3x1", "pool": f"{pool} 192"}
MIXED = [("Mixed_5b", 192, A(32)), ("Mixed_5c", 256, A(64)), ("Mixed_5d", 288, A(64)),
         ("Mixed_6a", 288, {"branch3x3": "384:3x3/2", "branch3x3dbl": "64:1x1 96:3x3 96:3x3/2",
                            "pool": "max/2"}),
         ("Mixed_6b", 768, C(128)), ("Mixed_6c", 768, C(160)), ("Mixed_6d", 768, C(160)),
         ("Mixed_6e", 768, C(192)),
         ("Mixed_7a", 768, {"branch3x3": "192:1x1 320:3x3/2",
                            "branch7x7x3": "192:1x1 192:1x7 192:7x1 192:3x3/2", "pool": "max/2"}),
         ("Mixed_7b", 1280, E("avg")), ("Mixed_7c", 2048, E("max"))]

def conv_bn(c_in, spec, padding=None):  # "out:KHxKW/stride" -> conv (no bias), BN (TF's eps), ReLU
    out, kernel = spec.split(":")
    (kh, kw), stride = map(int, kernel.split("/")[0].split("x")), int((kernel + "/1").split("/")[1])
    pad = padding if padding is not None else (kh // 2, kw // 2) if stride == 1 else 0
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(c_in, int(out), (kh, kw), stride, pad,
                                                    bias=False),
                                     bn=nn.BatchNorm2d(int(out), eps=0.001), relu=nn.ReLU()))

class Mixed(nn.Module):
    def __init__(self, c_in, branches):
        super().__init__()
        self.chains, self.pool = [], branches["pool"].split()
        for prefix, text in [(k, v) for k, v in branches.items() if k != "pool"]:
            steps, c, chain = text.split(), c_in, []
            for i, step in enumerate(steps, 1):
                forks = step.split("|")
                names = [prefix + (f"_{i}" + "ab"[j] * (len(forks) > 1)) * (len(steps) > 1)
                         for j in range(len(forks))]
                for name, spec in zip(names, forks):
                    self.add_module(name, conv_bn(c, spec))
                chain, c = chain + [names], int(forks[0].split(":")[0])
            self.chains.append(chain)
        if len(self.pool) == 2:
            self.branch_pool = conv_bn(c_in, f"{self.pool[1]}:1x1")

    def forward(self, x):
        outs = []
        for chain in self.chains:
            h = x
            for names in chain:  # a fork's outputs side by side
                h = torch.cat([getattr(self, n)(h) for n in names], 1)
            outs.append(h)
        kind = self.pool[0]
        if kind == "max/2":
            return torch.cat(outs + [F.max_pool2d(x, 3, stride=2)], 1)
        pooled = (F.max_pool2d(x, 3, 1, 1) if kind == "max"
                  else F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
        return torch.cat(outs + [self.branch_pool(pooled)], 1)

class FIDInceptionV3(nn.Module):
    def __init__(self, dims=2048):
        super().__init__()
        self.dims = dims
        self.Conv2d_1a_3x3, self.Conv2d_2a_3x3 = conv_bn(3, "32:3x3/2"), conv_bn(32, "32:3x3", 0)
        self.Conv2d_2b_3x3, self.Conv2d_3b_1x1 = conv_bn(32, "64:3x3"), conv_bn(64, "80:1x1")
        self.Conv2d_4a_3x3 = conv_bn(80, "192:3x3", 0)
        for name, c_in, branches in MIXED:
            self.add_module(name, Mixed(c_in, branches))
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x):
        """x: N x 3 x H x W in [0, 1] -> (features N x dims, logits N x 1008 when dims = 2048).
        The standard input: bilinear resize to 299 x 299 WITHOUT antialiasing, then 2x - 1."""
        x = 2 * F.interpolate(x, (299, 299), mode="bilinear", align_corners=False) - 1
        x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), 3, 2)
        blocks = [n for n, _, _ in MIXED]
        stages = {64: [], 192: ["Conv2d_3b_1x1", "Conv2d_4a_3x3"], 768: blocks[:8],
                  2048: blocks[8:]}  # the grid: 73 x 73, 35 x 35, 17 x 17, 8 x 8
        for dims, names in stages.items():
            for name in names:
                x = getattr(self, name)(x)
            x = F.max_pool2d(x, 3, 2) if dims == 192 else x
            if dims == self.dims:
                f = x.mean((2, 3))  # the features: a global average pool
                # IS's logits: the final layer WITHOUT its bias, as the original IS code takes them
                return f, F.linear(f, self.fc.weight) if dims == 2048 else None

def load_inception(cfg, device, notes):
    """The network with the published weights, downloaded once into torch's hub cache (SHA-256
    checked), or --weights FILE (other weights give FIDs not comparable with published ones)."""
    path = Path(cfg.weights or Path(torch.hub.get_dir(), "checkpoints", INCEPTION_URL[-36:]))
    if not cfg.weights and not path.is_file():
        try:
            print(f"downloading {INCEPTION_URL}", file=sys.stderr, flush=True)
            data = urllib.request.urlopen(INCEPTION_URL, timeout=60).read()
        except OSError as e:
            raise SystemExit(f"{PROG}: error: cannot download {INCEPTION_URL} "
                             f"({getattr(e, 'reason', e)}); pass the file with --weights") from None
        if hashlib.sha256(data).hexdigest() != INCEPTION_SHA256:
            raise SystemExit(f"{PROG}: error: {INCEPTION_URL} fails its SHA-256 check (not saved)")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    if not path.is_file():
        raise SystemExit(f"{PROG}: error: --weights {path}: no such file")
    digest, model = hashlib.sha256(path.read_bytes()).hexdigest(), FIDInceptionV3(cfg.dims)
    if digest != INCEPTION_SHA256 and not cfg.weights:
        raise SystemExit(f"{PROG}: error: {path} fails its SHA-256 check; delete it and run again")
    if digest != INCEPTION_SHA256:
        notes.append(f"{path} is not the published weight file: scores not comparable to papers'")
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    except Exception as e:
        raise SystemExit(f"{PROG}: error: {path} is not the FID Inception weight file "
                         f"({type(e).__name__}: {str(e)[:150]})") from None
    return model.eval().to(device), digest[:16]

class Classifier(nn.Module):
    """(b) A small CNN for 28 x 28 grey images, trained by `fid.py train-classifier`: its 128-d
    penultimate layer gives the features, its softmax p(c|y)."""
    def __init__(self, n_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 32 x 14 x 14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 64 x 7 x 7
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, n_classes))

    def forward(self, x):  # N x 1 x 28 x 28 in [-1, 1] -> (features N x 128, logits N x 10)
        f = self.features(x)
        return f, self.head(f)

def load_classifier(path, device):
    if not Path(path).is_file():
        raise SystemExit(f"{PROG}: error: no classifier at {path}: pass --classifier, or train "
                         f"it once: python fid.py train-classifier --dataset {Path(path).stem}")
    try:
        state, model = torch.load(path, map_location="cpu", weights_only=True), Classifier()
        model.load_state_dict(state["model"])
    except Exception:
        raise SystemExit(f"{PROG}: error: {path} is not a checkpoint of fid.py train-classifier")
    return model.eval().to(device), hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]

@torch.no_grad()
def extract(src, extractor, model, cfg, device):
    """Features (float64 N x d) and p(c|y) (N x K, or None) of uint8 N x H x W x C images."""
    if extractor == "raw":  # the 2-D points are the features
        f, probs = src["x"].astype(np.float64), None
    else:
        feats, probs = [], []
        for xb in torch.from_numpy(src["x"]).split(cfg.batch_size):
            xb = xb.permute(0, 3, 1, 2).float().to(device) / 255
            if extractor == "inception":
                f, logits = model(xb.expand(-1, 3, -1, -1))  # grey: the channel repeated
            else:
                f, logits = model((xb.mean(1, keepdim=True) if xb.shape[1] == 3 else xb) * 2 - 1)
            feats.append(f.double().cpu())
            probs.append(None if logits is None else logits.double().softmax(1).cpu())
        f, probs = torch.cat(feats).numpy(), None if probs[0] is None else torch.cat(probs).numpy()
    if not np.isfinite(f).all():  # a diverged generator's samples, or broken weights
        raise SystemExit(f"{PROG}: error: features of {src['name']} hold NaN or inf: broken "
                         "samples or broken extractor weights")
    return f, probs

# ------------------------------------------------------- 6. sources, the report, train-classifier
def load_source(spec, cfg, n_like=None):
    """-> dict(kind="images" (uint8 N x H x W x C) | "points" (N x 2) | "stats", x, name, ...)."""
    path, (name, _, split) = Path(spec), spec.partition(":")
    split = split or "train"
    if path.suffix == ".npz" and path.is_file():
        try:
            data = dict(np.load(path))  # arrays only: np.load runs no code by default
        except (OSError, ValueError) as e:
            raise SystemExit(f"{PROG}: error: {path} cannot be read as .npz ({e})") from None
        if {"mu", "sigma"} <= set(data):  # ours carry their provenance; pytorch-fid's do not
            return {"kind": "stats", "name": str(path), "extractor": "inception", "dims": 2048,
                    "weights_hash": "none", "n": 0, **data}
        x = data.get("x")
        if x is None or not (x.ndim == 2 and x.shape[1] == 2 or x.ndim == 4 and x.dtype == np.uint8
                             and x.shape[-1] in (1, 3)):
            raise SystemExit(f"{PROG}: error: {path} needs 'x': uint8 N x H x W x C images (C = 1 "
                             "or 3) or N x 2 points, or 'mu' and 'sigma'; it has " + ", ".join(
                                 f"{k} {v.dtype} {v.shape}" for k, v in data.items()))
        return {"kind": "images" if x.ndim == 4 else "points", "x": x, "y": data.get("y"),
                "name": str(path)}
    if path.is_dir():
        with_size = {}
        for p in sorted(q for q in path.rglob("*") if q.suffix.lower() in IMAGE_FILES):
            from PIL import Image
            with Image.open(p) as im:
                with_size.setdefault(im.size, []).append(p.name)
        if len(with_size) > 1:
            raise SystemExit(f"{PROG}: error: {path} mixes image sizes (" + ", ".join(
                f"{w}x{h}: {v[0]}..." for (w, h), v in with_size.items()) + "); resize them first")
        w, h = next(iter(with_size), (1, 1))
        x = load_data(str(path), cfg.data_dir, min(w, h))[0]
        return {"kind": "images", "x": x.permute(0, 2, 3, 1).numpy(), "y": None, "name": str(path),
                "note": f"{path}: {w}x{h} images centre-cropped to {min(w, h)}x{min(w, h)}; "
                        "pytorch-fid would stretch them to 299x299 instead" if w != h else None}
    if name in TOY_SETS and split in ("train", "test", "gaussian"):
        # :test draws other points; :gaussian, one Gaussian with the set's moments
        g = torch.Generator().manual_seed(cfg.seed + (split != "train"))
        x = sample_toy(name, n_like or cfg.num_real, g).numpy().astype(np.float64)
        if split == "gaussian":
            big = sample_toy(name, 100000, g).double().numpy()
            x = np.random.default_rng(cfg.seed).multivariate_normal(big.mean(0), np.cov(big.T),
                                                                    len(x))
        return {"kind": "points", "x": x.astype(np.float32), "name": spec, "dataset": name}
    if name in ("mnist", "fashion-mnist", "cifar10") and split in ("train", "test"):
        x, y, _ = load_data(name, cfg.data_dir, 32 if name == "cifar10" else 28, split)
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed))
        keep = keep[:cfg.num_real]
        return {"kind": "images", "x": x[keep].permute(0, 2, 3, 1).numpy(), "y": y[keep].numpy(),
                "name": f"{name}:{split}", "dataset": name, "split": split}
    raise SystemExit(f"{PROG}: error: '{spec}' is no .npz file, folder or data set: use "
                     + ", ".join(TOY_SETS) + ", mnist, fashion-mnist, cifar10 (:train or :test; "
                     "a toy set also :gaussian)")

def evaluate(cfg, device):
    """Load both sources, extract features, compute every metric that applies."""
    metrics = {"fid", "kid", "is", "coverage", "memorisation", "modes"}
    asked = metrics if cfg.metrics == "all" else set(cfg.metrics.split(","))
    if asked - metrics or len(cfg.sources) not in (2, 2 - bool(cfg.save_stats)):
        raise SystemExit(f"{PROG}: error: " + (f"unknown metric {', '.join(asked - metrics)}: "
                         f"choose from {','.join(sorted(metrics))}" if asked - metrics else
                         "give GENERATED and REAL sources (one with --save-stats); see --help"))
    gen = load_source(cfg.sources[0], cfg)
    sources = [gen] + [load_source(s, cfg, len(gen.get("x", []))) for s in cfg.sources[1:]]
    kinds, dataset = {s["kind"] for s in sources}, next((s["dataset"] for s in sources[::-1]
                                                         if s.get("dataset")), None)  # REAL's
    if {"points", "images"} <= kinds:
        raise SystemExit(f"{PROG}: error: cannot compare 2-D points with images")
    if cfg.extractor == "raw" and "images" in kinds:
        raise SystemExit(f"{PROG}: error: --extractor raw is for 2-D points; images take "
                         "inception or classifier (auto picks one)")
    images = [s["x"] for s in sources if s["kind"] == "images"]
    grey28 = all(x.shape[1:3] == (28, 28) and (x.shape[3] == 1 or dataset in ("mnist",
                 "fashion-mnist")) for x in images)
    extractor = ("raw" if "points" in kinds else cfg.extractor if cfg.extractor != "auto" else
                 "classifier" if images and grey28 else "inception" if images else
                 str(sources[0]["extractor"]))
    model, weights, notes = None, "none", [s["note"] for s in sources if s.get("note")]
    if extractor == "inception" and images:
        model, weights = load_inception(cfg, device, notes)
    elif extractor == "classifier" and images:
        if not grey28:
            raise SystemExit(f"{PROG}: error: the classifier takes 28x28 images; use "
                             "--extractor inception for other sizes")
        if not cfg.classifier and dataset not in ("mnist", "fashion-mnist"):
            raise SystemExit(f"{PROG}: error: --classifier PATH is needed when no source names "
                             "mnist or fashion-mnist")
        model, weights = load_classifier(cfg.classifier or Path(cfg.data_dir, "classifiers",
                                                                f"{dataset}.pt"), device)
    dims = {"inception": cfg.dims, "classifier": 128, "raw": 2}[extractor] if images or \
        "points" in kinds else int(sources[0]["dims"])  # statistics alone: as computed
    stats, feats, probs = [], [], []
    for s in sources:
        if s["kind"] == "stats":  # statistics from a file must match the other side's features
            known = str(s["weights_hash"])  # "none": pytorch-fid's files do not say
            if (str(s["extractor"]), int(s["dims"])) != (extractor, dims) or known != weights \
                    and "none" not in (known, weights):
                raise SystemExit(f"{PROG}: error: {s['name']} holds {s['extractor']} statistics "
                                 f"({s['dims']}-d, weights {s['weights_hash']}), the other side "
                                 f"{extractor} ({dims}-d, weights {weights}): not comparable")
            stats.append((s["mu"], s["sigma"])), feats.append(None), probs.append(None)
            weights = known if weights == "none" else weights
            continue
        f, p = extract(s, extractor, model, cfg, device)
        stats.append(gaussian_statistics(f, s["name"], notes)), feats.append(f), probs.append(p)
    n = [len(s["x"]) if "x" in s else int(s["n"]) for s in sources]
    what = {"inception": "", "classifier": " (classifier features)", "raw": " (2-D points)"}
    what = what[extractor]
    i = "I" * (extractor == "inception")  # the I of FID, KID: for Inception features only
    r = {"generated": gen["name"], "reference": sources[-1]["name"] if len(sources) == 2 else None,
         "extractor": extractor, "dims": dims, "weights_hash": weights, "n": n}
    if cfg.save_stats:
        np.savez(b := io.BytesIO(), mu=stats[0][0], sigma=stats[0][1], n=n[0], extractor=extractor,
                 dims=dims, weights_hash=weights, source=gen["name"])
        try:
            Path(cfg.save_stats).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cfg.save_stats, b.getvalue())
        except OSError as e:
            raise SystemExit(f"{PROG}: error: cannot write --save-stats {cfg.save_stats} ({e})")
        r["saved_stats"] = cfg.save_stats
    if len(sources) == 2 and "fid" in asked:
        r[f"F{i}D{what}"] = frechet_distance(*stats[0], *stats[1])
        if min(n) < 10000 and extractor != "raw":
            notes.append(f"N = {min(n)}: FD is biased upwards at small N; compare at equal N")
    if len(sources) == 2 and "kid" in asked and feats[0] is not None and feats[1] is not None:
        r[f"K{i}D{what}"] = kernel_distance(*feats, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)
    if probs[0] is not None and "is" in asked:
        r["Inception Score" if i else "classifier score"] = inception_score(probs[0], cfg.splits)
    if probs[0] is not None and "coverage" in asked:
        r["coverage"] = class_coverage(probs[0], gen.get("y"), imagenet=bool(i))
    if "memorisation" in asked and gen["kind"] == "images" and not gen.get("dataset") \
            and dataset in ("mnist", "fashion-mnist", "cifar10"):
        size = 32 if dataset == "cifar10" else 28
        x_train, x_held = (load_data(dataset, cfg.data_dir, size, split)[0] for split in ("train",
                                                                                            "test"))
        x_held = x_held[torch.randperm(len(x_held), generator=torch.Generator().manual_seed(
            cfg.seed))[:len(gen["x"])]]
        r["memorisation"] = memorisation(gen["x"], *(x.permute(0, 2, 3, 1).numpy()
                                                     for x in (x_train, x_held)))
    if "modes" in asked and gen["kind"] == "points" and dataset in TOY_SETS[:2]:
        r["modes"] = mode_metrics(gen["x"], dataset)
    return {**r, "notes": notes}

def report(r):
    print(f"{r['generated']} vs {r['reference']}: {r['extractor']} features ({r['dims']}-d), "
          f"N = {r['n']}")
    for key, v in r.items():
        if key[1:3] == "ID" or key[:2] in ("FD", "KD"):
            print(f"  {key:28s} " + (f"{v:.4f}" if key[0] == "F" else f"{v[0]:.5f} +- {v[1]:.5f}"))
        elif key.endswith("core"):
            print(f"  {key:28s} {v[0]:.3f} +- {v[1]:.3f}")
        elif key == "coverage":
            print(f"  {'confidence, mean max p(c|y)':28s} {v['confidence']:.3f}\n  "
                  f"{'entropy of p(c) = E p(c|y)':28s} {v['class_entropy']:.3f} of "
                  f"{v['max_entropy']:.3f} nats" + ("; missing classes: " + (", ".join(
                      map(str, v["missing_classes"])) or "none") if "class_share" in v else ""))
            if "conditional_accuracy" in v:
                print(f"  {'asked-for class recognised':28s} {v['conditional_accuracy']:.3f}")
        elif key == "memorisation":
            print(f"  {'nearest-train distance':28s} median {v['median_nn_distance']:.3f} "
                  f"(held-out {v['heldout_median_nn_distance']:.3f}); likely copies "
                  f"{v['likely_copies']:.1%}")
        elif key == "modes":
            print(f"  {'modes captured':28s} {v['modes']}/{v['of']}, high quality "
                  f"{v['high_quality']:.1%}")
        elif key == "saved_stats":
            print(f"  statistics saved to {v}")
    for note in r["notes"]:
        print(f"  note: {note}")

def train_classifier(cfg, device):
    """Adam on cross-entropy with small random shifts; prints and stores the test accuracy."""
    if cfg.lr <= 0:
        raise SystemExit(f"{PROG}: error: --lr must be positive, not {cfg.lr}")
    out = Path(cfg.out or Path(cfg.data_dir, "classifiers", f"{cfg.dataset}.pt"))
    try:  # its folder made before the training, not after
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"{PROG}: error: cannot make a folder for --out {out} ({e})") from None
    (x, y, _), (x_test, y_test, _) = (load_data(cfg.dataset, cfg.data_dir, 28, s)
                                      for s in ("train", "test"))
    torch.manual_seed(cfg.seed)
    model, per_epoch = Classifier().to(device), len(x) // cfg.batch_size
    opt, steps = torch.optim.Adam(model.parameters(), lr=cfg.lr), cfg.epochs * per_epoch
    t0 = time.time()
    for step in range(steps):
        order = torch.randperm(len(x)) if step % per_epoch == 0 else order
        idx = order[step % per_epoch * cfg.batch_size:][:cfg.batch_size]
        xb = torch.roll(x[idx].float() / 127.5 - 1, torch.randint(-2, 3, (2,)).tolist(), (2, 3))
        loss = F.cross_entropy(model(xb.to(device))[1], y[idx].to(device))
        opt.zero_grad(set_to_none=True), loss.backward(), opt.step()
        if (step + 1) % 200 == 0 or step + 1 == steps:
            left = round((steps - step - 1) * (time.time() - t0) / (step + 1))
            print(f"step {step + 1}/{steps}  loss {loss.item():.3f}  {left // 60}:{left % 60:02}"
                  " left", flush=True)
    with torch.no_grad():
        pred = torch.cat([model.eval()(xb.to(device).float() / 127.5 - 1)[1].argmax(1).cpu()
                          for xb in x_test.split(1000)])
    acc = (pred == y_test).float().mean().item()
    torch.save({"dataset": cfg.dataset, "test_accuracy": acc, "model": {
        k: v.cpu() for k, v in model.state_dict().items()}}, b := io.BytesIO())
    write_atomic(out, b.getvalue())
    print(f"test accuracy {acc:.2%} on the {len(y_test)} {cfg.dataset} test images; saved {out}")
    return model, acc

def options(argv):
    train = argv[:1] == ["train-classifier"]
    p = argparse.ArgumentParser("fid.py" + " train-classifier" * train, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add = lambda flag, default, text, **kw: p.add_argument(
        flag, default=default, help=f"{text} (default: {default})", **kw,
        **{} if "choices" in kw or "action" in kw else {
            "type": positive if type(default) is int and default > 0 else type(default)})
    if train:
        add("--dataset", "fashion-mnist", "data set", choices=["mnist", "fashion-mnist"])
        add("--epochs", 3, "passes over the 60,000 training images")
        add("--lr", 1e-3, "Adam's learning rate")
        add("--out", "", "checkpoint; empty: <data-dir>/classifiers/<dataset>.pt")
    else:
        p.add_argument("sources", nargs="*", help="GENERATED [REAL]: the samples and the reference")
        add("--extractor", "auto", "features: auto takes raw for 2-D points, classifier for 28x28 "
            "grey images, else inception", choices=["auto", "inception", "classifier", "raw"])
        add("--dims", 2048, "Inception layer: 64, 192, 768 (inner pools) or 2048 (the standard)",
            type=int, choices=[64, 192, 768, 2048])
        add("--weights", "", "Inception weight file; empty: downloaded once to torch's hub cache")
        add("--classifier", "", "empty: <data-dir>/classifiers/<dataset>.pt")
        add("--metrics", "all", "comma-separated: fid,kid,is,coverage,memorisation,modes")
        add("--num-real", 10000, "real images or points drawn from a data set name")
        add("--kid-subsets", 100, "KID: random subsets")
        add("--kid-subset-size", 1000, "KID: subset size, at most the smaller set")
        add("--splits", 10, "Inception / classifier score: splits")
        add("--save-stats", "", "write mu, Sigma and their provenance of the first source here")
        add("--json", False, "print the results as JSON", action="store_true")
    add("--batch-size", 128 if train else 100, "images per step or forward pass")
    add("--data-dir", "./data", "where data sets are found, or downloaded to")
    add("--seed", 0, "random seed")
    add("--device", "auto", "auto takes cuda when there is one, else cpu",
        choices=["auto", "cpu", "cuda"])
    return p, p.parse_args(argv[train:])

PROG = "fid.py"  # below: the parts of gan.py's plumbing block that fid.py uses, identical copies

# --- plumbing: the same in every script; skip on first read ---
TOY_SETS = ("8gaussians", "25gaussians", "swissroll")
IMAGE_FILES = (".png", ".jpg", ".jpeg")
MNIST = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz"]
SOURCES = {  # dataset: (where its files are published, {file: MD5})
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", dict(zip(MNIST, [
        "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"]))),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", dict(zip(
        MNIST, ["8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"]))),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",
                {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"})}

def toy_centres(name):
    """WGAN-GP's mixtures: 8 centres at radius 2, angles k * 45 degrees, std 0.02, all / 1.414;
    or the grid {-4, -2, 0, 2, 4}^2, std 0.05, all / 2.828."""
    if name == "8gaussians":
        k = torch.arange(8) * (2 * math.pi / 8)
        return torch.stack([2 * torch.cos(k), 2 * torch.sin(k)], 1) / 1.414, 0.02 / 1.414
    g = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
    return torch.cartesian_prod(g, g) / 2.828, 0.05 / 2.828

def sample_toy(name, n, generator=None):
    if name == "swissroll":  # (t cos t, t sin t), t ~ U[1.5 pi, 4.5 pi], noise 0.25, all / 7.5
        t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
        x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1)
        return (x + 0.25 * torch.randn(n, 2, generator=generator)) / 7.5
    centres, std = toy_centres(name)
    k = torch.randint(len(centres), (n,), generator=generator)  # each point's mode, then its noise
    return centres[k] + std * torch.randn(n, 2, generator=generator)

def mode_metrics(x, name):
    """VEEGAN's measure: a sample is of high quality within 3 std of its nearest mode; a mode is
    captured when it is the nearest mode of at least one such sample."""
    centres, std = toy_centres(name)
    dist, nearest = torch.cdist(torch.as_tensor(x, dtype=torch.float32), centres).min(1)
    return {"modes": nearest[dist < 3 * std].unique().numel(), "of": len(centres),
            "high_quality": (dist < 3 * std).float().mean().item()}

def positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return int(text)

def fetch(name, file, data_dir):
    """<data-dir>/<name>/<file>, else Debian's copy, else a download checked against its MD5."""
    path, url = Path(data_dir, name, file), SOURCES[name][0] + file
    for found in (path, Path("/usr/share/datasets", name, file)):
        if found.is_file():
            return found
    try:
        print(f"downloading {url}", file=sys.stderr, flush=True)
        data = urllib.request.urlopen(url, timeout=60).read()
    except OSError as e:
        raise SystemExit(f"{PROG}: error: cannot download {url} ({getattr(e, 'reason', e)}); "
                         f"with no network, put {file} in {path.parent.resolve()}/") from None
    if hashlib.md5(data).hexdigest() != SOURCES[name][1][file]:
        raise SystemExit(f"{PROG}: error: {url} fails its MD5 check (nothing was saved); try again")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    return path

def load_data(name, data_dir, size, split="train"):
    """x: uint8 images N x C x size x size, y: int64 labels, and the class names."""
    files, arrays, names = [], [], [str(c) for c in range(10)]
    try:
        if name in ("mnist", "fashion-mnist"):  # IDX: 0 0 8 ndim, ndim big-endian uint32s, bytes
            for ndim, f in zip((3, 1), MNIST[:2] if split == "train" else MNIST[2:]):
                files.append(fetch(name, f, data_dir))
                b = gzip.decompress(files[-1].read_bytes())
                if b[:4] != bytes([0, 0, 8, ndim]):
                    raise ValueError(f"{files[-1]} is not an IDX file of {ndim} dimensions")
                dims = [int.from_bytes(b[4 * i + 4:4 * i + 8], "big") for i in range(ndim)]
                arrays.append(np.frombuffer(b, np.uint8, offset=4 + 4 * ndim).reshape(dims))
            x, y = arrays[0][:, None], arrays[1]
        elif name == "cifar10":  # the binary version: records of a label byte + 3 x 32 x 32 bytes
            files = [fetch(name, "cifar-10-binary.tar.gz", data_dir)]
            parts = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
            with tarfile.open(files[0]) as tar:
                b = b"".join(tar.extractfile(f"cifar-10-batches-bin/{f}.bin").read() for f in parts)
            records = np.frombuffer(b, np.uint8).reshape(-1, 3073)
            x, y = records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0]
        elif Path(name).is_dir():  # every png/jpg below, centre-cropped square; sub-folder = class
            from PIL import Image, ImageOps
            files = sorted(p for p in Path(name).rglob("*") if p.suffix.lower() in IMAGE_FILES)
            labels = [p.relative_to(name).parts[0] if p.parent != Path(name) else "" for p in files]
            names = sorted(set(labels))
            x = [np.asarray(ImageOps.fit(Image.open(p).convert("RGB"), (size,) * 2)) for p in files]
            x, y = np.stack(x).transpose(0, 3, 1, 2), [names.index(c) for c in labels]
        else:
            raise SystemExit(f"{PROG}: error: unknown dataset '{name}': choose one of " + ", ".join(
                TOY_SETS) + ", mnist, fashion-mnist, cifar10, or a folder of images")
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
    except (OSError, EOFError, ValueError, KeyError, AttributeError, tarfile.TarError, zlib.error) \
            as e:  # a truncated, corrupt or foreign file
        raise SystemExit(f"{PROG}: error: no .png or .jpg images below {name}" if not files else
                         f"{PROG}: error: cannot read {name} ({e}); delete the bad file") from None
    x = torch.from_numpy(np.array(x))
    if x.shape[-1] != size:  # resized once, kept as uint8
        x = F.interpolate(x.float(), (size, size), mode="bilinear", antialias=True)
        x = x.round().clamp(0, 255).byte()
    return x, torch.tensor(np.array(y, dtype=np.int64)), names

def pick_device(name):
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{PROG}: error: --device cuda is not available here; use auto or cpu")
    return "cuda" if name == "auto" and torch.cuda.is_available() else name.replace("auto", "cpu")

def write_atomic(path, data):
    tmp = Path(f"{path}.tmp")
    tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)
    os.replace(tmp, path)

def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, cfg = options(argv)
    device = pick_device(cfg.device)
    if argv[:1] == ["train-classifier"]:
        return train_classifier(cfg, device)
    if not cfg.sources:
        return parser.print_help()
    results = evaluate(cfg, device)
    print(json.dumps(results, indent=1)) if cfg.json else report(results)
    return results

if __name__ == "__main__":
    main()
