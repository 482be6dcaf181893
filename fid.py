"""fid.py - judging a generator the way the lecture notes do, one file to read beside them.

The notes' evaluation section (notes 001 and 003, "GAN如何评价好坏"), in their order:
  1. Ask a classifier about each sample y. A confident p(c|y) means a clear sample (quality). The
     class distribution averaged over samples, p(c) = E_y p(c|y), should be even (diversity): one
     class holding most samples is mode collapse, a class that never wins is mode dropping. The
     Inception Score folds both in,  IS = exp(E_y KL(p(c|y) || p(c))),  from 1 to K classes.
  2. FID in three steps: features of real and generated images (the notes' P.l and G.l), a
     Gaussian fitted to each (mu_r, Sigma_r and mu_g, Sigma_g), and their Frechet distance
         FID = ||mu_r - mu_g||^2 + Tr(Sigma_r + Sigma_g - 2 (Sigma_r Sigma_g)^{1/2}).
     Only means and covariances count (the notes call the Gaussian assumption strong): 8gaussians
     and 25gaussians, both of mean 0 and covariance ~I, are ~0 apart. FID falls as N grows:
     compare at one N; 2048-d features need N well above 2,048 (papers use 50,000 samples).
  3. The memorising GAN: copies of the training set score a perfect FID, so each sample's distance
     to its nearest training image is set against the same for held-out real images.
The features: Inception-V3's for colour images. 28-px grey images lie outside its domain (ImageNet's
299-px colour photos): a small classifier trained here stands in ("FD", "classifier score"). 2-D
toy points are their own features (and VEEGAN's modes captured). Not here: CLIP (needs captions).

Examples:
  python fid.py train-classifier --dataset fashion-mnist         # once: a small CNN, ~2 CPU minutes
  python fid.py runs/gan-fashion-mnist/samples.npz fashion-mnist  # classifier features, offline
  python fid.py 8gaussians 25gaussians            # FD ~0, yet only 4 of the 25 modes are hit
  python fid.py samples.npz cifar10         # FID of 32-px colour images (weights downloaded once)
  python fid.py samples.npz cifar10_stats.npz  # against mu_r, Sigma_r that pytorch-fid saved
Deviations: IS splits are a fixed random permutation (class-ordered exports would score ~1);
folder images are centre-cropped square, where pytorch-fid stretches them to 299 x 299.
"""
import argparse, gzip, hashlib, io, math, os, sys, tarfile, urllib.request, zlib
from collections import OrderedDict
from pathlib import Path
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# ------------------------------------------------------- 1. a classifier's view: quality, diversity
def class_coverage(p_cy, y=None):
    """Confidence (mean max p(c|y)), the entropy of p(c), each class's share of the samples (over
    half: mode collapse; under a tenth of a fair one: dropped); with asked-for labels y, hits."""
    # p(c) = E_y p(c|y), the class distribution averaged over the samples: even = diverse
    K, p_c = p_cy.shape[1], p_cy.mean(0)
    share = np.bincount(p_cy.argmax(1), minlength=K) / len(p_cy)
    out = {"confidence": float(p_cy.max(1).mean()), "max_entropy": math.log(K),
           "class_entropy": float(-(p_c * np.log(np.clip(p_c, 1e-12, None))).sum()),
           "class_share": share.round(4).tolist(),
           "collapsed_to": np.flatnonzero(share > 0.5).tolist(),  # mode collapse
           "missing_classes": np.flatnonzero(share < 0.1 / K).tolist()}  # mode dropping
    if y is not None:  # samples that carry the label they were asked for
        out["conditional_accuracy"] = float((p_cy.argmax(1) == np.asarray(y)).mean())
    return out

def inception_score(p_cy, splits=10):
    """exp(E_y KL(p(c|y) || p(c))), p(c) the split's mean: mean, std over (at most N) splits."""
    scores, log = [], lambda p: np.log(np.clip(p, 1e-12, None))
    order = np.random.default_rng(0).permutation(len(p_cy))
    for part in np.array_split(p_cy[order], min(splits, len(p_cy))):
        # KL(p(c|y) || p(c)) = sum_c p(c|y) (log p(c|y) - log p(c)), averaged over y, then exp
        scores.append(math.exp((part * (log(part) - log(part.mean(0)))).sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))

# ------------------------------------------------------- 2. FID: Gaussians and their distance
def gaussian_statistics(f, name="features"):
    """mu and Sigma (float64, unbiased) of N x d features f."""
    if len(f) < 2:
        raise SystemExit(f"{PROG}: error: {name} has {len(f)} sample(s); a covariance needs 2")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])

def frechet_distance(mu_r, Sigma_r, mu_g, Sigma_g):
    """||mu_r - mu_g||^2 + Tr(Sigma_r + Sigma_g - 2 (Sigma_r Sigma_g)^{1/2}) in float64, without a
    square root of the non-symmetric Sigma_r Sigma_g (scipy's sqrtm, through a Schur form). AB and
    BA share their eigenvalues: with A = Sigma_r^{1/2}, Sigma_r Sigma_g = A (A Sigma_g) has those of
    M = A Sigma_g A, symmetric with x^T M x = (Ax)^T Sigma_g (Ax) >= 0, so lambda_i >= 0; the root
    has their square roots, and a trace sums eigenvalues: Tr(.^{1/2}) = sum_i sqrt(lambda_i)."""
    mu_r, Sigma_r, mu_g, Sigma_g = (np.asarray(a, np.float64) for a in (mu_r, Sigma_r, mu_g,
                                                                        Sigma_g))
    lam_r, V = np.linalg.eigh(Sigma_r)  # Sigma_r = V diag(lam_r) V^T
    root = (V * np.sqrt(np.clip(lam_r, 0, None))) @ V.T  # Sigma_r^{1/2} = V diag(lam_r^{1/2}) V^T
    M = root @ Sigma_g @ root
    lam = np.linalg.eigvalsh((M + M.T) / 2)  # symmetrised: round-off only
    # ||mu_r - mu_g||^2 + Tr(Sigma_r) + Tr(Sigma_g) - 2 sum_i sqrt(lambda_i)
    return float(((mu_r - mu_g) ** 2).sum() + np.trace(Sigma_r) + np.trace(Sigma_g)
                 - 2 * np.sqrt(np.clip(lam, 0, None)).sum())

# ------------------------------------------------------- 3. memorisation
def memorisation(x_gen, x_train, x_heldout, seed=0, chunk=2048):
    """Pixel distance (in [0, 1] units) of each sample to its nearest training image, against the
    same for as many random held-out images; a likely copy is closer than 99 % of those are."""
    x_heldout = x_heldout[np.random.default_rng(seed).permutation(len(x_heldout))[:len(x_gen)]]
    flat = lambda x: torch.from_numpy(x.reshape(len(x), -1)).float() / 255
    train = flat(x_train)
    nearest = lambda a: torch.cat([torch.cdist(a[i:i + chunk], train).min(1).values
                                   for i in range(0, len(a), chunk)]).numpy()
    d_gen, d_held = nearest(flat(x_gen)), nearest(flat(x_heldout))
    threshold = float(np.percentile(d_held, 1))
    return {"median_nn_distance": float(np.median(d_gen)), "copy_threshold": threshold,
            "heldout_median_nn_distance": float(np.median(d_held)),
            "likely_copies": float((d_gen < threshold).mean())}

# ------------------------------------------------------- 4. the feature extractors
# (a) The FID Inception-V3: TensorFlow's graph of 2015-12-05 as pytorch-fid ports it, under
# torchvision's names, so the published weights load strictly. Two details of the TF graph move
# FID: its 3x3 average pools exclude the zero padding, and Mixed_7c's pool branch is a MAX pool.
# A third, the final layer's 1008 outputs (not 1000), comes after the features: it moves IS only.
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
        if self.pool[0] == "max/2":
            return torch.cat(outs + [F.max_pool2d(x, 3, stride=2)], 1)
        pooled = (F.max_pool2d(x, 3, 1, 1) if self.pool[0] == "max"
                  else F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
        return torch.cat(outs + [self.branch_pool(pooled)], 1)

class FIDInceptionV3(nn.Module):
    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3, self.Conv2d_2a_3x3 = conv_bn(3, "32:3x3/2"), conv_bn(32, "32:3x3", 0)
        self.Conv2d_2b_3x3, self.Conv2d_3b_1x1 = conv_bn(32, "64:3x3"), conv_bn(64, "80:1x1")
        self.Conv2d_4a_3x3 = conv_bn(80, "192:3x3", 0)
        for name, c_in, branches in MIXED:
            self.add_module(name, Mixed(c_in, branches))
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x):
        """x: N x C x H x W in [0, 1], C = 1 or 3 -> (features N x 2048, IS's logits N x 1008).
        The standard input: bilinear resize to 299 x 299 WITHOUT antialiasing, then 2x - 1."""
        x = x.expand(-1, 3, -1, -1)  # grey: the channel repeated
        x = 2 * F.interpolate(x, (299, 299), mode="bilinear", align_corners=False) - 1
        x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), 3, 2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, 2)  # 73 x 73 -> 35 x 35
        for name, _, _ in MIXED:  # 35 x 35, from Mixed_6a 17 x 17, from Mixed_7a 8 x 8
            x = getattr(self, name)(x)
        f = x.mean((2, 3))  # the 2048-d features: a global average pool
        # IS's logits: the final layer WITHOUT its bias, as the original IS code takes them
        return f, F.linear(f, self.fc.weight)

def load_inception(device):
    """The network with the published weights: downloaded once, SHA-256 checked, loaded strictly."""
    path = Path(torch.hub.get_dir(), "checkpoints", INCEPTION_URL.rsplit("/", 1)[1])
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(INCEPTION_URL, str(path), hash_prefix=INCEPTION_SHA256)
        if hashlib.sha256(path.read_bytes()).hexdigest() != INCEPTION_SHA256:
            raise ValueError("its SHA-256 is not the published one: delete it")
        model = FIDInceptionV3()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    except Exception as e:  # no network; a failed check; another network's weights
        why = " ".join(str(e).split())[:150]  # torch's messages may span lines
        raise SystemExit(f"{PROG}: error: no FID Inception weights at {path} ({type(e).__name__}: "
                         f"{why}); with no network, put {INCEPTION_URL} there") from None
    return model.eval().to(device)

class Classifier(nn.Module):
    """(b) A small CNN for 28 x 28 grey images: 128-d features, then p(c|y) over 10 classes."""
    def __init__(self, n_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 32 x 14 x 14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 64 x 7 x 7
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, n_classes))

    def forward(self, x):  # N x 1 x 28 x 28 in [0, 1] -> (features N x 128, logits N x 10)
        f = self.features(2 * x - 1)
        return f, self.head(f)

def load_classifier(cfg, dataset, device):
    path, model = cfg.classifier or Path(cfg.data_dir, "classifiers", f"{dataset}.pt"), Classifier()
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    except Exception as e:
        raise SystemExit(f"{PROG}: error: no classifier at {path} ({type(e).__name__}); train it: "
                         f"python fid.py train-classifier --dataset {Path(path).stem}") from None
    return model.eval().to(device)

@torch.no_grad()
def extract(src, model, cfg, device):
    """Features f (float64 N x d) and p(c|y) (N x K) of images; 2-D points are their own f."""
    f, p_cy = (src["x"].astype(np.float64), None) if src["kind"] == "points" else (None, None)
    if src["kind"] == "images":
        out = [model(xb.permute(0, 3, 1, 2).float().to(device) / 255)
               for xb in torch.from_numpy(src["x"]).split(cfg.batch_size)]
        f = torch.cat([f for f, _ in out]).double().cpu().numpy()
        p_cy = torch.cat([logits for _, logits in out]).double().softmax(1).cpu().numpy()
    if f is not None and not np.isfinite(f).all():  # a diverged generator's, or broken weights
        raise SystemExit(f"{PROG}: error: features of {src['name']} hold NaN or inf: broken "
                         "samples or broken extractor weights")
    return f, p_cy

# ------------------------------------------------------- 5. sources, the three steps, the report
def load_source(spec, cfg, n_like=None):
    """-> dict(kind="images" (uint8 N x H x W x C) | "points" (N x 2) | "stats", x, name, ...)."""
    path, (name, _, split) = Path(spec), spec.partition(":")
    split = split or "train"
    if path.suffix == ".npz" and path.is_file():
        try:
            data = dict(np.load(path))  # arrays only: np.load runs no code by default
        except (OSError, ValueError) as e:
            raise SystemExit(f"{PROG}: error: {path} cannot be read as .npz ({e})") from None
        if {"mu", "sigma"} <= set(data):  # pytorch-fid's statistics (they do not say N)
            return {"kind": "stats", "name": str(path), "mu": data["mu"], "sigma": data["sigma"]}
        if (x := data.get("x")) is None or not (x.ndim == 2 and x.shape[1] == 2 or x.ndim == 4
                                                and x.dtype == np.uint8 and x.shape[-1] in (1, 3)):
            raise SystemExit(f"{PROG}: error: {path} needs 'x', uint8 N x H x W x C images (C = 1 "
                             "or 3) or N x 2 points, or 'mu' and 'sigma'; it has " + ", ".join(
                                 data))
        return {"kind": "images" if x.ndim == 4 else "points", "x": x, "y": data.get("y"),
                "name": str(path)}
    if path.is_dir():  # every image centre-cropped square, resized to the first one's shorter side
        from PIL import Image
        first = next((p for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_FILES), 0)
        x = load_data(str(path), cfg.data_dir, first and min(Image.open(first).size))[0]
        return {"kind": "images", "x": x.permute(0, 2, 3, 1).numpy(), "name": str(path)}
    if split not in ("train", "test") or name not in TOY_SETS + tuple(SOURCES):
        raise SystemExit(f"{PROG}: error: '{spec}' is no .npz file, folder or data set: use one of "
                         + ", ".join(TOY_SETS + tuple(SOURCES)) + ", with :train or :test")
    seeded = torch.Generator().manual_seed(cfg.seed + (split == "test"))
    if name in TOY_SETS:  # :test draws other points of the same set
        x = sample_toy(name, n_like or cfg.num_real, seeded).numpy()
        return {"kind": "points", "x": x, "name": spec, "dataset": name}
    x, y, _ = load_data(name, cfg.data_dir, 32 if name == "cifar10" else 28, split)
    keep = torch.randperm(len(x), generator=seeded)[:cfg.num_real]  # mnist, fashion-mnist, cifar10
    return {"kind": "images", "x": x[keep].permute(0, 2, 3, 1).numpy(), "y": y[keep].numpy(),
            "name": f"{name}:{split}", "dataset": name}

def evaluate(cfg, device):
    """The notes' three FID steps, then the classifier's view, memorisation and the toy modes."""
    if len(cfg.sources) != 2:
        raise SystemExit(f"{PROG}: error: give two sources, GENERATED and REAL; see --help")
    gen = load_source(cfg.sources[0], cfg)
    real = load_source(cfg.sources[1], cfg, len(gen.get("x", [])))
    kinds, dataset = {gen["kind"], real["kind"]}, real.get("dataset") or gen.get("dataset")
    grey28 = all(s["x"].shape[1:] == (28, 28, 1) for s in (gen, real) if s["kind"] == "images")
    if {"points", "images"} <= kinds:
        raise SystemExit(f"{PROG}: error: cannot compare 2-D points with images")
    extractor = ("raw" if "points" in kinds else "statistics" if "images" not in kinds else
                 "classifier" if grey28 else "inception")
    notes, model = [], (load_inception(device) if extractor == "inception" else load_classifier(
        cfg, dataset or "DATASET", device) if extractor == "classifier" else None)
    # 1. features of the generated and of the real images, f_g and f_r (the notes' G.l and P.l)
    (f_g, p_cy), (f_r, _) = extract(gen, model, cfg, device), extract(real, model, cfg, device)
    # 2. a Gaussian fitted to each: mu_g, Sigma_g and mu_r, Sigma_r (or a statistics file's)
    fit = lambda s, f: (s["mu"], s["sigma"]) if f is None else gaussian_statistics(f, s["name"])
    (mu_g, Sigma_g), (mu_r, Sigma_r) = fit(gen, f_g), fit(real, f_r)
    if np.shape(mu_g) != np.shape(mu_r):
        raise SystemExit(f"{PROG}: error: {len(mu_g)}-d statistics against {len(mu_r)}-d: "
                         "Inception's are 2048-d, the classifier's 128-d")
    # 3. FID = ||mu_r - mu_g||^2 + Tr(Sigma_r + Sigma_g - 2 (Sigma_r Sigma_g)^{1/2}), the square
    #    root through two symmetric eigendecompositions (frechet_distance: why that is exact)
    fd = frechet_distance(mu_r, Sigma_r, mu_g, Sigma_g)
    n = [len(s["x"]) if "x" in s else None for s in (gen, real)]
    r = {"generated": gen["name"], "reference": real["name"], "extractor": extractor, "n": n,
         "FID" if extractor == "inception" else "FD": fd}
    N = min([k for k in n if k] or [10000])  # the smaller N; a statistics file does not give its N
    if extractor != "raw" and N < 10000:  # and rank(Sigma) <= N - 1 < d when N <= d
        notes.append(f"N = {N}: FD is biased up at small N" + "; Sigma singular" * (N <= mu_r.size))
    if p_cy is not None:  # quality and diversity from p(c|y)
        r["Inception Score" if extractor == "inception" else "classifier score"] = \
            inception_score(p_cy)
    if p_cy is not None and extractor == "classifier":  # ImageNet's classes are not the data's
        r["coverage"] = cov = class_coverage(p_cy, gen.get("y"))
        notes += [f"MODE COLLAPSE: class {c} holds {cov['class_share'][c]:.0%} of the samples"
                  for c in cov["collapsed_to"]]
    if gen["kind"] == "images" and "dataset" not in gen and dataset in SOURCES:
        x_train, x_held = (load_data(dataset, cfg.data_dir, 32 if dataset == "cifar10" else 28,
                                     s)[0].permute(0, 2, 3, 1).numpy() for s in ("train", "test"))
        if gen["x"].shape[1:] == x_train.shape[1:]:
            r["memorisation"] = memorisation(gen["x"], x_train, x_held, cfg.seed)
        else:  # 28 x 28 x 3 samples against mnist, say
            notes.append(f"no memorisation check: the samples are H x W x C = "
                         f"{gen['x'].shape[1:]}, {dataset}'s images {x_train.shape[1:]}")
    if gen["kind"] == "points" and dataset in TOY_SETS[:2]:
        r["modes"] = mode_metrics(gen["x"], dataset)
    return {**r, "notes": notes}

def report(r):
    n = " and ".join(str(k) if k else "? (a statistics file)" for k in r["n"])
    print(f"{r['generated']} vs {r['reference']}: {r['extractor']} features, N = {n}")
    for key, v in r.items():
        if key in ("FID", "FD") or key.endswith(("Score", "score")):  # a score: mean +- std
            print(f"  {key:18s} " + (f"{v:.4f}" if key[0] == "F" else f"{v[0]:.3f} +- {v[1]:.3f}"))
        elif isinstance(v, dict):  # coverage, memorisation, modes
            print(f"  {key:18s} " + ", ".join(f"{k} {x:.3f}" if isinstance(x, float) else f"{k} {x}"
                                             for k, x in v.items()))
    for note in r["notes"]:
        print(f"  note: {note}")

def train_classifier(cfg, device):
    """Adam (lr 1e-3) on cross-entropy, images shifted by up to 2 pixels; reports test accuracy."""
    out = Path(cfg.out or Path(cfg.data_dir, "classifiers", f"{cfg.dataset}.pt"))
    try:  # its folder made before the training, not after
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"{PROG}: error: cannot make a folder for --out {out} ({e})") from None
    (x, y, _), (x_test, y_test, _) = (load_data(cfg.dataset, cfg.data_dir, 28, s)
                                      for s in ("train", "test"))
    torch.manual_seed(cfg.seed)
    model = Classifier().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(1, cfg.epochs + 1):
        for idx in torch.randperm(len(x)).split(cfg.batch_size):
            xb = torch.roll(x[idx].float() / 255, torch.randint(-2, 3, (2,)).tolist(), (2, 3))
            loss = F.cross_entropy(model(xb.to(device))[1], y[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch}/{cfg.epochs}: loss {loss.item():.3f}", flush=True)
    test = {"kind": "images", "x": x_test.permute(0, 2, 3, 1).numpy(), "name": "the test set"}
    acc = float((extract(test, model.eval(), cfg, device)[1].argmax(1) == y_test.numpy()).mean())
    torch.save({"dataset": cfg.dataset, "test_accuracy": acc, "model": model.state_dict()},
               b := io.BytesIO())
    write_atomic(out, b.getvalue())
    print(f"test accuracy {acc:.2%} on the {len(y_test)} {cfg.dataset} test images; saved {out}")
    return model, acc

def options(argv):
    train = argv[:1] == ["train-classifier"]
    p = argparse.ArgumentParser("fid.py" + " train-classifier" * train, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add = lambda flag, default, text, **kw: p.add_argument(
        flag, default=default, help=f"{text} (default: {default})", **kw)
    if train:
        add("--dataset", "fashion-mnist", "data set", choices=["mnist", "fashion-mnist"])
        add("--epochs", 3, "passes over the 60,000 training images", type=positive)
        add("--out", "", "checkpoint; empty: <data-dir>/classifiers/<dataset>.pt")
    else:
        p.add_argument("sources", nargs="*", help="GENERATED REAL: each a samples.npz, an image "
                       "folder, pytorch-fid's mu/sigma .npz, or a data set[:train or :test]")
        add("--classifier", "", "empty: <data-dir>/classifiers/<dataset>.pt")
        add("--num-real", 10000, "real images or points drawn from a data set", type=positive)
    add("--batch-size", 128 if train else 100, "images per step or forward pass", type=positive)
    add("--data-dir", "./data", "where data sets are found, or downloaded to")
    add("--seed", 0, "random seed", type=int)
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
    report(results)
    return results

if __name__ == "__main__":
    main()
