"""fid.py - how the notes judge a generator, computed exactly, in one file.

The notes' evaluation chapter, step by step:
  1. Ask a pretrained classifier about each sample. A confident p(c|x) means a clear sample (quality);
     the class distribution AVERAGED over samples, p(c) = E_x p(c|x), should be even: peaked means
     mode collapse, a class that never wins means mode dropping. The Inception Score folds both into
     IS = exp(E_x KL(p(c|x) || p(c))).
  2. FID: take the classifier's penultimate-layer features of real and of generated images, fit a
     Gaussian to each, and measure the Frechet distance between the two Gaussians,
         FID = ||mu_r - mu_g||^2 + Tr(Sigma_r + Sigma_g - 2 (Sigma_r Sigma_g)^{1/2}).
  3. Its blind spot: a generator that memorises the training set gets a perfect FID. We compare each
     sample's distance to its nearest training image with the same distance for held-out real images.
Also KID (an unbiased kernel alternative to FID) and, for the toy 2-D sets, modes captured and
high-quality % (VEEGAN / PacGAN).

Run it:
    python fid.py train-classifier --dataset fashion-mnist         # once: a small CNN, a few CPU minutes
    python fid.py runs/gan-fashion-mnist/samples.npz fashion-mnist  # classifier features, offline
    python fid.py fashion-mnist:test fashion-mnist                  # real vs real: the floor to read scores against
    python fid.py samples.npz cifar10 --extractor inception         # the standard FID (weights downloaded once)
    python fid.py runs/gan-8gaussians/samples.npz 8gaussians        # modes, high-quality %, 2-D Frechet distance
    python fid.py cifar10 --extractor inception --save-stats cifar10_stats.npz   # cache the real statistics

Lecture notes followed: evaluating a generator with a classifier (confidence, the class-averaged
distribution, mode collapse and mode dropping), the Inception Score, FID and its formula, and the
memorising GAN that FID cannot catch.

Deliberate deviations: scores computed with our small MNIST classifier or on raw 2-D coordinates are
labelled "FD (classifier features)" / "FD (2-D points)", never "FID", which is reserved for the
Inception network below. The matrix square root uses symmetric eigendecompositions (derived in
frechet_distance) instead of scipy's sqrtm; no offset is ever added to a covariance.
"""
import argparse
import gzip
import hashlib
import json
import math
import os
import pickle
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SCRIPT = "fid"
TOY_SETS = ("8gaussians", "25gaussians", "swissroll")
IMAGE_SETS = ("mnist", "fashion-mnist", "cifar10")
METRICS = ("fid", "kid", "is", "coverage", "memorisation", "modes")
# Weights of the TensorFlow FID Inception (2015-12-05) ported to PyTorch, as the standard PyTorch FID
# implementation publishes them; the file name carries the first 8 hex digits of its SHA-256.
INCEPTION_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                 "pt_inception-2015-12-05-6726825d.pth")
INCEPTION_SHA256_PREFIX = "6726825d"


# ----------------------------------------------------------------------------------------------
# 1. Configuration (`python fid.py --help`, `python fid.py train-classifier --help`).
# ----------------------------------------------------------------------------------------------
EXAMPLES = """examples:
  python fid.py train-classifier --dataset fashion-mnist
  python fid.py runs/gan-fashion-mnist/samples.npz fashion-mnist
  python fid.py fashion-mnist:test fashion-mnist          (real vs real: the floor)
  python fid.py samples.npz cifar10 --extractor inception
  python fid.py runs/gan-8gaussians/samples.npz 8gaussians
A source is a samples.npz from our scripts, a folder of images, a statistics .npz written by
--save-stats, or a dataset name (mnist, fashion-mnist, cifar10, or a toy set), optionally with
:train or :test (default train)."""


def build_parser():
    p = argparse.ArgumentParser(prog="fid.py", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Judge generated samples against real ones: FID, KID, Inception/"
                                "classifier score, class coverage, memorisation, toy-set modes.", epilog=EXAMPLES)
    a = p.add_argument
    a("sources", nargs="*", help="GENERATED [REAL]: the samples to judge and the reference (one source "
      "with --save-stats)")
    a("--extractor", default="auto", choices=["auto", "inception", "classifier", "raw"], help="features: the "
      "FID Inception-V3, our small 28x28 classifier, or raw 2-D coordinates; auto picks raw for 2-D points, "
      "classifier for 28x28 grey images, inception otherwise (default: %(default)s)")
    a("--dims", type=int, default=2048, choices=[64, 192, 768, 2048], help="Inception feature layer: 64 "
      "(first max pool), 192 (second max pool), 768 (pre-aux), 2048 (final pool, the standard) (default: %(default)s)")
    a("--weights", default=None, help="Inception weight file pt_inception-2015-12-05-6726825d.pth (default: "
      "the torch hub cache, downloaded there once with a checksum)")
    a("--classifier", default=None, help="classifier checkpoint (default: <data-dir>/classifiers/<dataset>.pt, "
      "written by `fid.py train-classifier`)")
    a("--metrics", default="all", help="comma-separated subset of " + ",".join(METRICS) + "; 'all' computes "
      "every one that applies to the inputs (default: %(default)s)")
    a("--num-real", type=int, default=10000, help="real images (or points) drawn from a dataset name (default: %(default)s)")
    a("--kid-subsets", type=int, default=100, help="KID: number of random subsets (default: %(default)s)")
    a("--kid-subset-size", type=int, default=1000, help="KID: subset size, capped by the smaller set (default: %(default)s)")
    a("--splits", type=int, default=10, help="Inception / classifier score: number of splits (default: %(default)s)")
    a("--save-stats", default=None, help="write mu, Sigma and their provenance of the FIRST source to this .npz")
    a("--json", action="store_true", help="print the results as JSON instead of a table")
    a("--data-dir", default="./data", help="where datasets live / are downloaded (default: %(default)s)")
    a("--batch-size", type=int, default=100, help="images per forward pass (default: %(default)s)")
    a("--seed", type=int, default=0, help="seed for subsets and sampled real data (default: %(default)s)")
    a("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto picks cuda > mps > cpu (default: %(default)s)")
    return p


def build_classifier_parser():
    p = argparse.ArgumentParser(prog="fid.py train-classifier", description="Train the small CNN whose "
                                "features and predictions fid.py uses for 28x28 grey images, and print its test accuracy.")
    a = p.add_argument
    a("--dataset", required=True, choices=["mnist", "fashion-mnist"], help="which dataset to train on")
    a("--epochs", type=int, default=3, help="passes over the 60,000 training images (default: %(default)s)")
    a("--batch-size", type=int, default=128, help="minibatch size (default: %(default)s)")
    a("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    a("--out", default=None, help="checkpoint path (default: <data-dir>/classifiers/<dataset>.pt)")
    a("--data-dir", default="./data", help="where datasets live / are downloaded (default: %(default)s)")
    a("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    a("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto picks cuda > mps > cpu (default: %(default)s)")
    return p


# ----------------------------------------------------------------------------------------------
# 2. Data: the same loaders as every training script, plus the sources fid.py reads.
# ----------------------------------------------------------------------------------------------
def toy_centres(name):
    """Mode centres and per-mode std of the mixture sets, in the dataset's own (scaled) coordinates."""
    if name == "8gaussians":
        k = torch.arange(8) * (2 * math.pi / 8)
        return torch.stack([2 * torch.cos(k), 2 * torch.sin(k)], 1) / 1.414, 0.02 / 1.414
    if name == "25gaussians":
        g = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
        return torch.cartesian_prod(g, g) / 2.828, 0.05 / 2.828
    raise ValueError(f"{name} has no discrete modes")


def sample_toy(name, n, generator=None):
    """n points of a toy 2-D set: mixtures = centre + std * N(0, I); swissroll = (t cos t, t sin t) + noise."""
    if name == "swissroll":  # the 2-D slice of the classic swiss roll, noise 0.25, divided by 7.5
        t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
        x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) + 0.25 * torch.randn(n, 2, generator=generator)
        return x / 7.5
    centres, std = toy_centres(name)
    idx = torch.randint(len(centres), (n,), generator=generator)
    return centres[idx] + std * torch.randn(n, 2, generator=generator)


# --- scaffolding: dataset files, download, checksums (identical in every script; skip on first read) ---
DATASETS = {  # file name -> MD5 of the published file; mirrors are tried in order
    "mnist": {"mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
                          "http://yann.lecun.com/exdb/mnist/"],
              "files": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}},
    "fashion-mnist": {"mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                                  "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"],
                      "files": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                                "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                                "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
                      "system_dir": "/usr/share/datasets/fashion-mnist"},  # Debian: dataset-fashion-mnist
    "cifar10": {"mirrors": ["https://www.cs.toronto.edu/~kriz/"],
                "files": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}},
}


class UserError(Exception):
    """A user mistake or a broken environment: main() prints the message, no traceback."""


def file_hash(path, algorithm="md5"):
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(urls, dest, digest, algorithm="md5"):
    """Fetch a published file from the first mirror that works, check its hash (a full hex digest or a
    prefix of one), and only then rename it into place: a failed download leaves nothing behind."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp, failures = dest.with_name(dest.name + ".part"), []
    for url in urls:
        h, done, last = hashlib.new(algorithm), 0, 0.0
        try:
            with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
                total = int(r.headers.get("Content-Length") or 0)
                for block in iter(lambda: r.read(1 << 16), b""):
                    f.write(block), h.update(block)
                    done += len(block)
                    if time.time() - last > 0.5 or done == total:
                        last = time.time()
                        print(f"\rdownloading {url}: {done / 1e6:.1f}/{total / 1e6:.1f} MB", end="", file=sys.stderr)
            print(file=sys.stderr)
            if h.hexdigest().startswith(digest):
                os.replace(tmp, dest)
                return dest
            failures.append(f"{url}: checksum mismatch ({algorithm} {h.hexdigest()}, expected {digest})")
        except OSError as e:  # URLError, refused connection, timeout, disk full
            failures.append(f"{url}: {getattr(e, 'reason', e)}")
        tmp.unlink(missing_ok=True)
    raise UserError(f"could not get {dest.name} ({'; '.join(failures)}); with no network, put the file "
                    f"in {dest.parent.resolve()}/ by hand")


def find_or_download(name, fname, data_dir):
    """A file already in <data-dir>/<name>/ or the system folder is used as is; else it is downloaded."""
    spec = DATASETS[name]
    for folder in (Path(data_dir) / name, Path(spec.get("system_dir", "/nonexistent"))):
        if (folder / fname).is_file():
            return folder / fname
    return download([m + fname for m in spec["mirrors"]], Path(data_dir) / name / fname, spec["files"][fname])


def read_idx(path, magic):
    """IDX file (MNIST format): big-endian magic, dims, then uint8 data. Structure is checked fully."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()  # gzip verifies its CRC at the end: a truncated or corrupt file fails here
    except (OSError, EOFError) as e:
        raise UserError(f"{path} is corrupt or truncated ({e}); delete it and run again to fetch a fresh copy")
    ndim = magic & 0xFF
    if len(raw) < 4 + 4 * ndim or int.from_bytes(raw[:4], "big") != magic:
        raise UserError(f"{path} is not an IDX file of the expected kind; delete it and run again")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path} holds {data.size} values where its header promises {int(np.prod(dims))}; "
                        "delete it and run again")
    return data.reshape(dims)


class RestrictedUnpickler(pickle.Unpickler):
    """CIFAR-10 ships as pickles. Unpickling can run arbitrary code, so admit only numpy arrays."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module == "numpy.core.multiarray" and hasattr(np, "_core"):
            module = "numpy._core.multiarray"  # numpy >= 2 renamed the module that old pickles name
        return super().find_class(module, name)


def load_cifar10(data_dir, split):
    fname = "cifar-10-python.tar.gz"
    path = find_or_download("cifar10", fname, data_dir)
    if file_hash(path) != DATASETS["cifar10"]["files"][fname]:  # verified BEFORE anything is unpickled
        raise UserError(f"{path} fails its MD5 checksum (corrupt, truncated or not the published file); "
                        "delete it and run again")
    members = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in members:
                d = RestrictedUnpickler(tar.extractfile(f"cifar-10-batches-py/{m}"), encoding="bytes").load()
                xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32)), ys.append(d[b"labels"])
    except (tarfile.TarError, KeyError, pickle.UnpicklingError, EOFError, OSError) as e:
        raise UserError(f"{path} could not be read as the CIFAR-10 python tarball ({e})")
    return np.concatenate(xs).transpose(0, 2, 3, 1), np.concatenate(ys)


def load_image_folder(root, size):
    """Every png/jpg below root, resized (shorter side) and centre-cropped; sub-folder = class."""
    from PIL import Image  # comes with matplotlib
    files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise UserError(f"no .png/.jpg images found below {root}")
    classes = sorted({p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "" for p in files})
    xs, ys = [], []
    for p in files:
        try:
            im = Image.open(p).convert("RGB")
        except OSError as e:
            raise UserError(f"cannot read image {p} ({e}); remove or replace it")
        s = size / min(im.size)
        im = im.resize((max(size, round(im.width * s)), max(size, round(im.height * s))), Image.BICUBIC)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        xs.append(np.asarray(im.crop((left, top, left + size, top + size)), np.uint8))
        rel = p.relative_to(root).parts
        ys.append(classes.index(rel[0] if len(rel) > 1 else ""))
    return np.stack(xs), np.array(ys)


def load_images(dataset, data_dir, image_size, split="train"):
    """Returns x: float32 N x C x H x W in [-1, 1] and y: int64 labels."""
    if dataset in ("mnist", "fashion-mnist"):
        pre = "train" if split == "train" else "t10k"
        x = read_idx(find_or_download(dataset, f"{pre}-images-idx3-ubyte.gz", data_dir), 0x803)[..., None]
        y = read_idx(find_or_download(dataset, f"{pre}-labels-idx1-ubyte.gz", data_dir), 0x801)
        if len(x) != len(y):
            raise UserError(f"{dataset}: {len(x)} images but {len(y)} labels; delete the files and run again")
    elif dataset == "cifar10":
        x, y = load_cifar10(data_dir, split)
    else:
        x, y = load_image_folder(dataset, image_size)
    x = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).float() / 127.5 - 1  # uint8 -> [-1, 1]
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(-1, 1), torch.from_numpy(np.array(y, dtype=np.int64))


def load_source(spec, cfg, n_like=None):
    """A source -> dict(kind='images' | 'points' | 'stats', x, y, name, dataset, split).
    Images are uint8 N x H x W x C; points float32 N x 2."""
    path, (name, _, split) = Path(spec), spec.partition(":")
    split = split or "train"
    if path.suffix == ".npz" and path.is_file():
        try:
            z = np.load(path, allow_pickle=False)
            data = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise UserError(f"{path} cannot be read as .npz ({e})")
        if "mu" in data and "sigma" in data:
            return {"kind": "stats", "name": str(path), **data}
        if "x" not in data:
            raise UserError(f"{path} has neither 'x' (samples) nor 'mu'/'sigma' (statistics); it has {sorted(data)}")
        x = data["x"]
        kind = "points" if x.ndim == 2 and x.shape[1] == 2 else "images"
        if kind == "images" and (x.ndim != 4 or x.dtype != np.uint8 or x.shape[-1] not in (1, 3)):
            raise UserError(f"{path}: 'x' must be uint8 N x H x W x C images (C = 1 or 3) or N x 2 points, "
                            f"got {x.dtype} {x.shape}")
        return {"kind": kind, "x": x, "y": data.get("y"), "name": str(path), "dataset": None}
    if path.is_dir():
        sizes = {}
        for p in sorted(q for q in path.rglob("*") if q.suffix.lower() in (".png", ".jpg", ".jpeg")):
            try:
                from PIL import Image
                with Image.open(p) as im:
                    sizes.setdefault(im.size, []).append(p.name)
            except OSError as e:
                raise UserError(f"cannot read image {p} ({e}); remove or replace it")
        if len(sizes) > 1:
            desc = ", ".join(f"{w}x{h} ({len(v)} files, e.g. {v[0]})" for (w, h), v in sizes.items())
            raise UserError(f"{path} mixes image sizes: {desc}; metrics need one size, resize them first")
        size = min(next(iter(sizes))) if sizes else 0
        x, _ = load_image_folder(path, size)
        return {"kind": "images", "x": x, "y": None, "name": str(path), "dataset": None}
    if name in TOY_SETS:
        g = torch.Generator().manual_seed(cfg.seed + (1 if split == "test" else 0))
        x = sample_toy(name, n_like or cfg.num_real, g).numpy().astype(np.float32)
        return {"kind": "points", "x": x, "y": None, "name": f"{name} ({len(x)} points)", "dataset": name}
    if name in IMAGE_SETS:
        if split not in ("train", "test"):
            raise UserError(f"unknown split '{split}' in '{spec}': use {name}:train or {name}:test")
        x, y = load_images(name, cfg.data_dir, {"cifar10": 32}.get(name, 28), split)
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.num_real]
        return {"kind": "images", "x": to_uint8(x[idx]), "y": y[idx].numpy(), "name": f"{name}:{split}",
                "dataset": name, "split": split}
    raise UserError(f"'{spec}' is neither a .npz file, a folder, nor a dataset name "
                    f"({', '.join(IMAGE_SETS + TOY_SETS)}, optionally with :train or :test)")


# ----------------------------------------------------------------------------------------------
# 3. Feature extractors.
#    (a) The FID Inception-V3: the TensorFlow graph of 2015-12-05 as the standard PyTorch FID code
#        rebuilds it. Parameter names follow torchvision's Inception3, so the published weight file
#        loads with strict=True. It differs from torchvision's network in three ways, each a detail
#        of the TensorFlow graph that the published FID numbers depend on:
#        - 1008 output classes (TF's label map), not 1000;
#        - the average pools inside Mixed_5*, Mixed_6b-e and Mixed_7b exclude the zero padding from
#          the average (count_include_pad=False, TF's behaviour), torchvision's include it;
#        - Mixed_7c pools its pool branch with a 3x3 MAX pool, not an average pool (a quirk of the
#          TF graph).
# ----------------------------------------------------------------------------------------------
class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3, TF's) -> ReLU."""
    def __init__(self, c_in, c_out, **kw):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **kw)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def avg_pool_tf(x):
    # 3x3 average over the valid (unpadded) pixels only: count_include_pad=False
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):  # Mixed_5b, 5c, 5d: 1x1 | 5x5 | double 3x3 | pool -> 1x1
    def __init__(self, c_in, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(avg_pool_tf(x))], 1)


class InceptionB(nn.Module):  # Mixed_6a: grid reduction 35 -> 17
    def __init__(self, c_in):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):  # Mixed_6b-e: 7x7 convolutions factorised into 1x7 and 7x1
    def __init__(self, c_in, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(avg_pool_tf(x))], 1)


class InceptionD(nn.Module):  # Mixed_7a: grid reduction 17 -> 8
    def __init__(self, c_in):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):  # Mixed_7b, 7c: expanded filter banks (1x3 and 3x1 side by side)
    def __init__(self, c_in, max_pool):
        super().__init__()
        self.max_pool = max_pool  # True only for Mixed_7c: the TF graph's max pool
        self.branch1x1 = BasicConv2d(c_in, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else avg_pool_tf(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Returns the features of one layer (dims 64, 192, 768 or 2048, spatially averaged) and the
    1008-class logits (used by the Inception Score) when dims = 2048."""
    def __init__(self, dims=2048):
        super().__init__()
        self.dims = dims
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = InceptionE(1280, max_pool=False), InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x):
        """x: float N x 3 x H x W in [0, 1] -> (features N x dims, logits N x 1008 or None)."""
        # The standard preprocessing, named: BILINEAR resize to 299 x 299 WITHOUT antialiasing
        # (align_corners=False), then scale [0, 1] -> [-1, 1].
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False, antialias=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)                                       # 64 x 73 x 73
        if self.dims == 64:
            return x.mean((2, 3)), None
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)  # 192 x 35 x 35
        if self.dims == 192:
            return x.mean((2, 3)), None
        for block in ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"]:
            x = getattr(self, block)(x)                                        # 768 x 17 x 17
        if self.dims == 768:
            return x.mean((2, 3)), None
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x))).mean((2, 3))       # 2048: global average pool
        return x, self.fc(x)


def load_inception(cfg, device):
    """The FID Inception with the published weights; returns (model, weights hash)."""
    if cfg.weights:
        path = Path(cfg.weights)
        if not path.is_file():
            raise UserError(f"--weights {path}: no such file")
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[1]
        if not path.is_file():
            download([INCEPTION_URL], path, INCEPTION_SHA256_PREFIX, "sha256")
    digest = file_hash(path, "sha256")
    if not cfg.weights and not digest.startswith(INCEPTION_SHA256_PREFIX):
        raise UserError(f"{path} fails its SHA-256 check (corrupt or truncated); delete it and run again")
    model = FIDInceptionV3(cfg.dims)
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    except Exception as e:
        raise UserError(f"{path} is not the FID Inception weight file ({type(e).__name__}: {str(e)[:200]})")
    return model.eval().to(device), digest[:16]


# (b) A small CNN for 28 x 28 grey images: our offline extractor for (Fashion-)MNIST. Its 128-d
#     penultimate layer gives the features, its softmax the predictions p(c|x).
class Classifier(nn.Module):
    def __init__(self, n_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),           # 32 x 14 x 14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),          # 64 x 7 x 7
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, n_classes))

    def forward(self, x):
        """x: float N x 1 x 28 x 28 in [-1, 1] -> (features N x 128, logits N x 10)."""
        f = self.features(x)
        return f, self.head(f)


def load_classifier(path, device):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no classifier at {path}: train it once with `python fid.py train-classifier "
                        f"--dataset {path.stem}` (a few CPU minutes), or pass --classifier")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert isinstance(state, dict) and state.get("kind") == "classifier"
        model = Classifier()
        model.load_state_dict(state["model"])
    except Exception:
        raise UserError(f"{path} is not a classifier checkpoint written by `fid.py train-classifier`")
    return model.eval().to(device), file_hash(path, "sha256")[:16]


@torch.no_grad()
def extract(src, extractor, model, cfg, device):
    """Features (float64 N x d) and class probabilities p(c|x) (N x K, or None) of a source."""
    x = src["x"]
    if extractor == "raw":
        return x.astype(np.float64), None
    feats, probs = [], []
    for i in range(0, len(x), cfg.batch_size):
        b = torch.from_numpy(np.array(x[i:i + cfg.batch_size])).permute(0, 3, 1, 2).float().to(device) / 255
        if extractor == "inception":
            b = b.expand(-1, 3, -1, -1)  # grey -> RGB by repeating the channel
        else:
            if b.shape[1] == 3:
                b = b.mean(1, keepdim=True)
            b = b * 2 - 1  # the classifier is trained on [-1, 1], like every script's data
        f, logits = model(b)
        feats.append(f.double().cpu()), probs.append(None if logits is None else logits.double().softmax(1).cpu())
    f = torch.cat(feats).numpy()
    if not np.isfinite(f).all():
        raise UserError(f"features of {src['name']} contain NaN/inf: the images or the extractor's weights are broken")
    return f, (None if probs[0] is None else torch.cat(probs).numpy())


# ----------------------------------------------------------------------------------------------
# 4. The metrics.
# ----------------------------------------------------------------------------------------------
def gaussian_statistics(f, name="features", notes=None):
    """mu and Sigma (float64, unbiased) of N x d features, with diagnostics instead of silence."""
    n, d = f.shape
    mu, sigma = f.mean(0), np.cov(f, rowvar=False).reshape(d, d)
    if notes is not None:
        if n <= d:
            notes.append(f"{name}: only {n} samples for {d}-dimensional features, so Sigma has rank <= {n - 1} "
                         f"and the estimate is poor; a Frechet distance needs N well above d (10,000+ is the standard)")
        ev = np.linalg.eigvalsh(sigma)
        rank = int((ev > ev.max() * 1e-10).sum()) if ev.max() > 0 else 0
        if rank < d:
            notes.append(f"{name}: Sigma is rank-deficient (rank {rank} of {d}); its tiny/negative round-off "
                         "eigenvalues are clamped to 0 in the square root, no offset is added")
    return mu, sigma


def psd_sqrt(sigma):
    """Sigma^{1/2} of a symmetric positive semi-definite matrix: V diag(sqrt(max(lambda, 0))) V^T."""
    lam, V = np.linalg.eigh(sigma)
    return (V * np.sqrt(np.clip(lam, 0, None))) @ V.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Frechet (2-Wasserstein) distance between N(mu1, Sigma1) and N(mu2, Sigma2), in float64:
        d^2 = ||mu1 - mu2||^2 + Tr(Sigma1) + Tr(Sigma2) - 2 Tr((Sigma1 Sigma2)^{1/2}).
    Why Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(S1^{1/2} S2 S1^{1/2})):
      - AB and BA have the same eigenvalues. With A = S1^{1/2} and B = S1^{1/2} S2:
        AB = S1 S2 and BA = S1^{1/2} S2 S1^{1/2} =: M.
      - M is symmetric positive semi-definite (x^T M x = (S1^{1/2} x)^T S2 (S1^{1/2} x) >= 0), so its
        eigenvalues lambda_i are real and >= 0; S1 S2 is not symmetric, but has the same lambda_i.
      - (S1 S2)^{1/2} is the matrix whose square is S1 S2; its eigenvalues are sqrt(lambda_i), and a
        trace is the sum of eigenvalues.
    So two symmetric eigendecompositions (S1^{1/2}, then the eigenvalues of M) replace a general
    (Schur-based) square root of a non-symmetric matrix: faster, and exactly real."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise UserError(f"the two sets of statistics have different dimensions ({mu1.shape} vs {mu2.shape})")
    s1_half = psd_sqrt(sigma1)
    M = s1_half @ sigma2 @ s1_half
    lam = np.linalg.eigvalsh((M + M.T) / 2)  # symmetrise away round-off before the symmetric solver
    tr_covmean = np.sqrt(np.clip(lam, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def kernel_inception_distance(f1, f2, subsets=100, subset_size=1000, seed=0):
    """KID: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over
    random subsets. Unbiased: its expectation is 0 when both sets come from one distribution."""
    rng = np.random.default_rng(seed)
    d, m = f1.shape[1], min(subset_size, len(f1), len(f2))
    if m < 2:
        raise UserError("KID needs at least 2 samples in each set")
    values = []
    for _ in range(subsets):
        x, y = f1[rng.choice(len(f1), m, replace=False)], f2[rng.choice(len(f2), m, replace=False)]
        k_xx, k_yy, k_xy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        # MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + same for y - 2 sum_{i, j} k(x_i, y_j) / m^2
        values.append((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
                      - 2 * k_xy.sum() / m ** 2)
    return float(np.mean(values)), float(np.std(values))


def inception_score(p_yx, splits=10):
    """IS = exp(E_x KL(p(c|x) || p(c))), p(c) = E_x p(c|x) within each split; mean and std over splits.
    1 when every prediction is the same distribution; K (classes) for confident, balanced predictions.
    The splits are random (a fixed permutation): samples stored class by class, as a conditional model
    exports them, would otherwise put one class in each split and score about 1."""
    scores = []
    p_yx = p_yx[np.random.default_rng(0).permutation(len(p_yx))]
    for part in np.array_split(p_yx, splits):
        p_y = part.mean(0, keepdims=True)
        kl = (part * (np.log(np.clip(part, 1e-12, None)) - np.log(np.clip(p_y, 1e-12, None)))).sum(1)
        scores.append(math.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def class_coverage(p_yx, y=None, class_names=None):
    """The notes' diversity check: average the predicted class distributions over samples. Even means
    diverse; a peak means mode collapse; a class that (almost) never wins means mode dropping."""
    K = p_yx.shape[1]
    p_c = p_yx.mean(0)                                  # p(c) = E_x p(c|x)
    entropy = float(-(p_c * np.log(np.clip(p_c, 1e-12, None))).sum())
    share = np.bincount(p_yx.argmax(1), minlength=K) / len(p_yx)
    missing = [int(c) for c in np.flatnonzero(share < 0.1 / K)]  # won by < 10 % of its fair share 1/K
    out = {"confidence": float(p_yx.max(1).mean()), "class_entropy": entropy, "max_entropy": math.log(K),
           "class_share": [round(float(s), 4) for s in share], "missing_classes": missing}
    if y is not None:  # samples that carry the label they were conditioned on
        out["conditional_accuracy"] = float((p_yx.argmax(1) == np.asarray(y)).mean())
    return out


def nearest_distances(a, b, chunk=2048):
    """For each row of a, the Euclidean distance to its nearest row of b (float32, chunked)."""
    a, b = torch.from_numpy(a).float(), torch.from_numpy(b).float()
    return torch.cat([torch.cdist(a[i:i + chunk], b).min(1).values for i in range(0, len(a), chunk)]).numpy()


def memorisation(x_gen, x_train, x_heldout):
    """Each generated image's pixel distance to its nearest training image, against the same distance
    for real held-out images. A generator that copies sits far below the held-out curve; a sample is a
    likely copy when it is closer than 99 % of held-out images ever are (their 1st percentile)."""
    flat = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255
    d_gen = nearest_distances(flat(x_gen), flat(x_train))
    d_held = nearest_distances(flat(x_heldout), flat(x_train))
    threshold = float(np.percentile(d_held, 1))
    return {"median_nn_distance": float(np.median(d_gen)), "heldout_median_nn_distance": float(np.median(d_held)),
            "copy_threshold": threshold, "likely_copies": float((d_gen < threshold).mean())}


def mode_metrics(x, dataset):
    """Modes captured and high-quality %, the VEEGAN / PacGAN definition: a sample is high quality if it
    lies within 3 std of its nearest mode; a mode is captured if it is nearest to >= 1 such sample."""
    centres, std = toy_centres(dataset)
    dist, nearest = torch.cdist(torch.as_tensor(x, dtype=torch.float32), centres).min(1)
    good = dist < 3 * std
    return {"modes": int(nearest[good].unique().numel()), "of": len(centres), "high_quality": good.float().mean().item()}


def to_uint8(x):
    """[-1, 1] float N x C x H x W -> uint8 N x H x W x C in 0..255."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# ----------------------------------------------------------------------------------------------
# 5. Putting it together: choose the extractor, compute what applies, report.
# ----------------------------------------------------------------------------------------------
def choose_extractor(cfg, sources):
    kinds = {s["kind"] for s in sources}
    if "points" in kinds:
        if kinds - {"points", "stats"}:
            raise UserError("cannot compare 2-D points with images")
        return "raw"
    if cfg.extractor != "auto":
        return cfg.extractor
    imgs = [s for s in sources if s["kind"] == "images"]
    if imgs and all(s["x"].shape[1:3] == (28, 28) and (s["x"].shape[3] == 1 or s.get("dataset") in ("mnist", "fashion-mnist"))
                    for s in imgs):
        return "classifier"
    if not imgs:  # statistics only: use what they were computed with
        return str(sources[0]["extractor"])
    return "inception"


def evaluate(cfg, device):
    metrics = set(METRICS) if cfg.metrics == "all" else set(cfg.metrics.split(","))
    if metrics - set(METRICS):
        raise UserError(f"unknown metric(s) {', '.join(sorted(metrics - set(METRICS)))}: choose from {', '.join(METRICS)}")
    if not 1 <= len(cfg.sources) <= 2 or (len(cfg.sources) == 1 and not cfg.save_stats):
        raise UserError("give two sources, GENERATED and REAL (or one with --save-stats); see python fid.py --help")
    gen = load_source(cfg.sources[0], cfg)
    sources = [gen] + ([load_source(cfg.sources[1], cfg, n_like=len(gen.get("x", [])) or None)]
                       if len(cfg.sources) == 2 else [])
    extractor = choose_extractor(cfg, sources)
    dataset = next((s["dataset"] for s in sources if s.get("dataset")), None)
    model, whash = None, "none"
    if extractor == "inception" and any(s["kind"] == "images" for s in sources):
        model, whash = load_inception(cfg, device)
    elif extractor == "classifier" and any(s["kind"] == "images" for s in sources):
        if not cfg.classifier and dataset not in ("mnist", "fashion-mnist"):
            raise UserError("the classifier extractor needs --classifier PATH when no source names mnist or fashion-mnist")
        model, whash = load_classifier(cfg.classifier or Path(cfg.data_dir) / "classifiers" / f"{dataset}.pt", device)
        if any(s["kind"] == "images" and s["x"].shape[1:3] != (28, 28) for s in sources):
            raise UserError("the classifier takes 28x28 images; use --extractor inception for other sizes")
    dims = {"inception": cfg.dims, "classifier": 128, "raw": 2}[extractor]
    if all(s["kind"] == "stats" for s in sources):  # nothing to extract: the statistics say what they are
        dims, whash = int(sources[0]["dims"]), str(sources[0]["weights_hash"])
    label = {"inception": "FID", "classifier": "FD (classifier features)", "raw": "FD (2-D points)"}[extractor]
    notes, stats, feats, probs = [], [], [], []
    for s in sources:
        if s["kind"] == "stats":
            prov = (str(s["extractor"]), int(s["dims"]), str(s["weights_hash"]))
            if prov != (extractor, dims, whash):
                raise UserError(f"{s['name']} holds statistics of {prov[0]} features ({prov[1]}-d, weights {prov[2]}); "
                                f"the other side uses {extractor} ({dims}-d, weights {whash}): they cannot be compared")
            stats.append((s["mu"], s["sigma"])), feats.append(None), probs.append(None)
            continue
        f, p = extract(s, extractor, model, cfg, device)
        stats.append(gaussian_statistics(f, s["name"], notes)), feats.append(f), probs.append(p)
    results = {"generated": gen["name"], "reference": sources[1]["name"] if len(sources) > 1 else None,
               "extractor": extractor, "dims": dims, "weights_hash": whash,
               "n": [int(len(s["x"])) if "x" in s else int(s["n"]) for s in sources]}
    if cfg.save_stats:
        mu, sigma = stats[0]
        write_atomic(cfg.save_stats, lambda f: np.savez(f, mu=mu, sigma=sigma, n=results["n"][0], extractor=extractor,
                                                        dims=dims, weights_hash=whash, source=gen["name"]))
        results["saved_stats"] = cfg.save_stats
    if len(sources) == 2 and "fid" in metrics:
        results[label] = frechet_distance(*stats[0], *stats[1])
    if len(sources) == 2 and "kid" in metrics and feats[0] is not None and feats[1] is not None:
        results["KID"] = kernel_inception_distance(feats[0], feats[1], cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)
    if probs[0] is not None and "is" in metrics:
        results["Inception Score" if extractor == "inception" else "classifier score"] = inception_score(probs[0], cfg.splits)
    if probs[0] is not None and "coverage" in metrics:
        if extractor == "classifier":  # labels can be checked against our 10-class classifier only
            results["coverage"] = class_coverage(probs[0], gen.get("y"))
        else:                          # TF's 1008 outputs: 0 is background, 1..1000 the ImageNet classes
            results["coverage"] = class_coverage(probs[0][:, 1:1001])
    if "memorisation" in metrics and gen.get("dataset"):
        notes.append("memorisation skipped: the first source is real data, not samples")
    elif "memorisation" in metrics and gen["kind"] == "images" and dataset in IMAGE_SETS:
        size = {"cifar10": 32}.get(dataset, 28)
        if gen["x"].shape[1] == size:
            x_train, _ = load_images(dataset, cfg.data_dir, size, "train")
            x_held, _ = load_images(dataset, cfg.data_dir, size, "test")
            held = to_uint8(x_held[torch.randperm(len(x_held), generator=torch.Generator().manual_seed(cfg.seed))[:len(gen["x"])]])
            results["memorisation"] = memorisation(gen["x"], to_uint8(x_train), held)
    if "modes" in metrics and gen["kind"] == "points" and dataset in ("8gaussians", "25gaussians"):
        results["modes"] = mode_metrics(gen["x"], dataset)
    results["notes"] = notes
    return results


def print_table(r):
    print(f"{r['generated']} vs {r['reference']}  |  {r['extractor']} features ({r['dims']}-d), N = {r['n']}")
    for key, v in r.items():
        if key in ("FID", "FD (classifier features)", "FD (2-D points)"):
            print(f"  {key:28s} {v:.4f}")
        elif key == "KID":
            print(f"  {'KID':28s} {v[0]:.5f} +- {v[1]:.5f}")
        elif key in ("Inception Score", "classifier score"):
            print(f"  {key:28s} {v[0]:.3f} +- {v[1]:.3f}  ({'of 1000' if key == 'Inception Score' else 'of 10'} at best)")
        elif key == "coverage":
            print(f"  {'confidence (mean max p)':28s} {v['confidence']:.3f}")
            print(f"  {'class entropy of E_x p(c|x)':28s} {v['class_entropy']:.3f} of {v['max_entropy']:.3f} nats; "
                  f"missing classes: {v['missing_classes'] or 'none'}")
            if "conditional_accuracy" in v:
                print(f"  {'conditional accuracy':28s} {v['conditional_accuracy']:.3f}")
        elif key == "memorisation":
            print(f"  {'nearest-train distance':28s} median {v['median_nn_distance']:.3f} (held-out real "
                  f"{v['heldout_median_nn_distance']:.3f}); likely copies {100 * v['likely_copies']:.1f}%")
        elif key == "modes":
            print(f"  {'modes captured':28s} {v['modes']}/{v['of']}, high-quality {100 * v['high_quality']:.1f}%")
        elif key == "saved_stats":
            print(f"  statistics saved to {v}")
    for n in r["notes"]:
        print(f"  note: {n}")


# ----------------------------------------------------------------------------------------------
# 6. train-classifier: the offline feature extractor for (Fashion-)MNIST.
# ----------------------------------------------------------------------------------------------
def train_classifier(cfg, device):
    x, y = load_images(cfg.dataset, cfg.data_dir, 28, "train")
    x_test, y_test = load_images(cfg.dataset, cfg.data_dir, 28, "test")
    torch.manual_seed(cfg.seed)
    model = Classifier().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps, t0 = cfg.epochs * (len(x) // cfg.batch_size), time.time()
    for step in range(1, steps + 1):
        if (step - 1) % (len(x) // cfg.batch_size) == 0:
            order = torch.randperm(len(x))
        idx = order[((step - 1) % (len(x) // cfg.batch_size)) * cfg.batch_size:][:cfg.batch_size]
        xb = x[idx].to(device)
        xb = torch.roll(xb, tuple(torch.randint(-2, 3, (2,)).tolist()), (2, 3))  # small shifts: robustness
        loss = F.cross_entropy(model(xb)[1], y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps:
            rate = step / (time.time() - t0)
            print(f"step {step}/{steps}  loss {loss.item():.3f}  {rate:.1f} steps/s  left {fmt_time((steps - step) / rate)}", flush=True)
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xb.to(device))[1].argmax(1).cpu() for xb in x_test.split(1000)])
    acc = (pred == y_test).float().mean().item()
    out = Path(cfg.out or Path(cfg.data_dir) / "classifiers" / f"{cfg.dataset}.pt")
    state = {"script": SCRIPT, "kind": "classifier", "dataset": cfg.dataset, "test_accuracy": acc,
             "model": {k: v.cpu() for k, v in model.state_dict().items()}}
    write_atomic(out, lambda f: torch.save(state, f))
    print(f"test accuracy {100 * acc:.2f}% on the {len(y_test)} {cfg.dataset} test images; saved {out}")
    return model, acc


# --- scaffolding: files, device (identical in every script; skip on first read) ---
def fmt_time(s):
    return f"{int(s // 3600)}:{int(s % 3600 // 60):02d}:{int(s % 60):02d}"


def write_atomic(path, write, mode="wb"):
    """Write to a temporary file, then rename: an interrupted write never leaves a broken file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, mode) as f:
        write(f)
    os.replace(tmp, path)


def pick_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available() or name == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name} was asked for but is not available here; use --device auto or cpu")
    return name


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["train-classifier"]:
            cfg = build_classifier_parser().parse_args(argv[1:])
            return train_classifier(cfg, pick_device(cfg.device))
        cfg = build_parser().parse_args(argv)
        if not cfg.sources:
            build_parser().print_help()
            return None
        results = evaluate(cfg, pick_device(cfg.device))
        print(json.dumps(results, indent=1)) if cfg.json else print_table(results)
        return results
    except UserError as e:
        print(f"fid.py: error: {e}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
