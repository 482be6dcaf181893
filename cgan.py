"""cgan.py - a conditional GAN whose discriminator checks that x matches its condition y.

The generator takes a condition and noise, x = G(z, y); the discriminator judges a PAIR, D(x, y).
Judging realism alone is not enough: a D that only asks "is x real?" is satisfied by a sharp image of
the wrong class, so G is free to ignore y. The lecture notes' discriminator therefore separates three
cases:

    real x that matches y          -> 1
    real x with a mismatched y'    -> 0      (sharp, but not what was asked for)
    generated x = G(z, y) with y   -> 0

so that D learns to check the fit of x to y, and G can only fool it by drawing what y asks for.
Labels here are classes: the mode a toy point came from, a digit, a garment, a sub-folder name.

Run it:
    python cgan.py                                   # 8 Gaussians, label = mode, about a minute on a CPU
    python cgan.py --dataset 25gaussians             # 25 labelled modes
    python cgan.py --dataset fashion-mnist           # one row per class (~15 min on 2 CPU cores; --steps 2000: 8)
    python cgan.py --dataset mnist | cifar10 | path/to/folder_with_one_subfolder_per_class
    python cgan.py --d-cond concat                   # Mirza & Osindero: y joined to D's input
    python cgan.py --mismatch-weight 0               # ablation: no mismatched real pairs

Lecture notes followed: conditional generation (the generator's two inputs: a condition and a random
sample z); the conditional discriminator that sees (condition, x) and its three cases; paired
(labelled) data needed to train it; the GAN objective and the non-saturating generator loss.

Deliberate deviations from the papers: Mirza & Osindero (2014) used maxout MLPs and D saw only
matched pairs and fakes; we use DCGAN-style networks and add Reed et al.'s (2016) mismatched real
pairs. D returns a logit and every log D is written with softplus (stable; identical in value).
Minibatches are drawn with replacement (no epochs) so a resumed run replays the same batches.
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

SCRIPT = "cgan"
TOY_SETS = ("8gaussians", "25gaussians", "swissroll")
IMAGE_SETS = ("mnist", "fashion-mnist", "cifar10")
CLASS_NAMES = {"mnist": [str(k) for k in range(10)],
               "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                 "Sneaker", "Bag", "Ankle boot"],
               "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}


# ----------------------------------------------------------------------------------------------
# 1. Configuration: every option, its default and what it does (`python cgan.py --help`).
# ----------------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(
        prog="cgan.py", description="A conditional GAN, G(z, y) and D(x, y), whose discriminator also "
        "rejects real images paired with the wrong label. Toy 2-D sets (label = mode) or labelled images.",
        epilog="Examples: python cgan.py | python cgan.py --dataset fashion-mnist | python cgan.py "
        "--d-cond concat --mismatch-weight 0")
    a = p.add_argument
    a("--dataset", default="8gaussians", help="8gaussians, 25gaussians (label = the mode a point came from), "
      "mnist, fashion-mnist, cifar10, or a folder of png/jpg images with one sub-folder per class "
      "(default: %(default)s)")
    a("--data-dir", default="./data", help="where datasets live / are downloaded (default: %(default)s)")
    a("--out", default=None, help="run folder (default: runs/cgan-<dataset>)")
    a("--steps", type=int, default=None, help="generator updates (default: 3000 for 2-D sets, about a minute "
      "on 2 CPU cores; 4000 for images, about 15 minutes for 28 px on 2 CPU cores - 2000 already reach 97 %% conditional accuracy on Fashion-MNIST)")
    a("--batch-size", type=int, default=None, help="minibatch size m (default: 256 for 2-D sets, 64 for images)")
    a("--lr", type=float, default=2e-4, help="Adam learning rate for G and D, DCGAN paper (default: %(default)s)")
    a("--beta1", type=float, default=0.5, help="Adam beta1, 0.5 as in DCGAN (default: %(default)s)")
    a("--lr-decay", default=None, choices=["none", "linear"], help="learning-rate schedule: linear decays to 0 "
      "at the last step, which tightens the 2-D clusters at the end (default: linear for 2-D sets, none for images)")
    a("--d-cond", default="projection", choices=["projection", "concat"], help="how D sees y: projection "
      "(Miyato & Koyama 2018: D(x, y) = psi(phi(x)) + e(y).phi(x)) or concat (Mirza & Osindero 2014: the "
      "label embedding joined to D's input) (default: %(default)s)")
    a("--mismatch-weight", type=float, default=0.5, help="w in [0, 1]: weight of the (real x, wrong y) term "
      "in D's loss; generated pairs get 1 - w, so the two negative cases together weigh as much as the "
      "positive one. 0.5 is Reed et al.'s 1/2 + 1/2; 0 turns the mismatch term off (default: %(default)s)")
    a("--d-steps", type=int, default=1, help="k, discriminator updates per generator update (default: %(default)s)")
    a("--z-dim", type=int, default=None, help="noise dimension (default: 2 for 2-D sets, 100 for images)")
    a("--emb-dim", type=int, default=16, help="size of the learned label embeddings e(y) in G and in the "
      "concat D (default: %(default)s)")
    a("--width", type=int, default=None, help="hidden units of the MLPs (2-D) or base channels of the "
      "DCGAN (images) (default: 256 for 2-D sets, 64 for images)")
    a("--image-size", type=int, default=None, help="28, 32 or 64 pixels (default: 28 for (fashion-)mnist, "
      "32 for cifar10, 64 for a folder)")
    a("--labels", default=None, help="comma-separated class indices drawn in the figures and exported to "
      "samples.npz, e.g. 0,3,7 (default: every class)")
    a("--seed", type=int, default=0, help="random seed; the same seed on CPU gives the same numbers (default: %(default)s)")
    a("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto picks cuda > mps > cpu (default: %(default)s)")
    a("--log-every", type=int, default=100, help="progress line and log.csv row cadence (default: %(default)s)")
    a("--sample-every", type=int, default=1000, help="sample figure + checkpoint cadence (default: %(default)s)")
    a("--num-samples", type=int, default=None, help="samples exported to samples.npz at the end, split "
      "equally over the classes (default: 2400 points for 2-D sets, 1000 images)")
    a("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    a("--overwrite", action="store_true", help="start afresh even if <out> already holds a run")
    p.set_defaults(experiment="train")  # no side experiments here; the shared prepare_out reads this field
    return p


def finish_config(cfg):
    """Fill the dataset-dependent defaults (stated in --help), the class names, and validate."""
    toy = cfg.dataset in TOY_SETS
    if cfg.dataset == "swissroll":
        raise UserError("swissroll has no classes to condition on: use 8gaussians or 25gaussians (label = mode)")
    if not toy and cfg.dataset not in IMAGE_SETS and not Path(cfg.dataset).is_dir():
        raise UserError(f"unknown dataset '{cfg.dataset}': choose one of 8gaussians, 25gaussians, "
                        f"{', '.join(IMAGE_SETS)}, or give the path of a folder with one sub-folder per class")
    name = cfg.dataset if (toy or cfg.dataset in IMAGE_SETS) else Path(cfg.dataset).resolve().name
    cfg.out = cfg.out or f"runs/{SCRIPT}-{name}"
    cfg.steps = cfg.steps if cfg.steps is not None else (3000 if toy else 4000)
    cfg.batch_size = cfg.batch_size if cfg.batch_size is not None else (256 if toy else 64)
    cfg.lr_decay = cfg.lr_decay if cfg.lr_decay is not None else ("linear" if toy else "none")
    cfg.z_dim = cfg.z_dim if cfg.z_dim is not None else (2 if toy else 100)
    cfg.width = cfg.width if cfg.width is not None else (256 if toy else 64)
    cfg.num_samples = cfg.num_samples if cfg.num_samples is not None else (2400 if toy else 1000)
    if cfg.image_size is None and not toy:
        cfg.image_size = {"mnist": 28, "fashion-mnist": 28, "cifar10": 32}.get(cfg.dataset, 64)
    if not toy and cfg.image_size not in (28, 32, 64):
        raise UserError(f"--image-size {cfg.image_size} is not supported: the DCGAN here takes 28, 32 or 64 pixels")
    for flag in ("steps", "batch_size", "d_steps", "z_dim", "emb_dim", "width", "log_every", "sample_every", "num_samples"):
        if getattr(cfg, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(cfg, flag)}")
    if not 0 <= cfg.mismatch_weight <= 1:
        raise UserError(f"--mismatch-weight must lie in [0, 1], got {cfg.mismatch_weight}")
    cfg.classes = (CLASS_NAMES.get(cfg.dataset) or [f"mode {k}" for k in range(len(toy_centres(cfg.dataset)[0]))]
                   if toy or cfg.dataset in IMAGE_SETS else folder_classes(cfg.dataset))
    if len(cfg.classes) < 2:
        raise UserError(f"{cfg.dataset} has {len(cfg.classes)} class: a conditional GAN needs at least two "
                        "(put the images of each class in its own sub-folder)")
    try:
        cfg.labels = [int(s) for s in cfg.labels.split(",")] if cfg.labels else list(range(len(cfg.classes)))
    except ValueError:
        raise UserError(f"--labels takes comma-separated class indices such as 0,3,7, got '{cfg.labels}'")
    bad = [k for k in cfg.labels if not 0 <= k < len(cfg.classes)]
    if bad:
        raise UserError(f"--labels: class {bad[0]} is out of range; {name} has classes 0..{len(cfg.classes) - 1}")
    return cfg


# ----------------------------------------------------------------------------------------------
# 2. Data with labels. Toy 2-D: the WGAN-GP reference mixtures (CONVENTIONS §5), label = the mode a
#    point was drawn from. Images: float tensors in [-1, 1], N x C x H x W, plus integer labels.
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


def sample_toy_labelled(name, n, generator=None):
    """n points of a mixture and their labels: y ~ U{0..K-1}, x = centre_y + std * N(0, I)."""
    centres, std = toy_centres(name)
    y = torch.randint(len(centres), (n,), generator=generator)
    return centres[y] + std * torch.randn(n, 2, generator=generator), y


def folder_classes(root):
    """The class names of an image folder, in the order load_image_folder numbers them (sorted
    sub-folder names; images lying directly in root form the class '')."""
    rel = [p.relative_to(root).parts for p in Path(root).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    return sorted({r[0] if len(r) > 1 else "" for r in rel})


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


# ----------------------------------------------------------------------------------------------
# 3. Models. Both take the label y as a LongTensor of class indices; D returns a logit l, and
#    D(x, y) = sigmoid(l) is the probability that x is real AND matches y.
# ----------------------------------------------------------------------------------------------
def mlp(n_in, width, n_out):
    return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(), nn.Linear(width, n_out))


def dcgan_channels(size, width):
    n_up = 3 if size == 64 else 2
    return size // 2 ** n_up, [width * 2 ** (n_up - 1 - i) for i in range(n_up)]  # e.g. 7, [128, 64]


def broadcast(e, h):
    """A label embedding N x E as E constant feature maps the size of h: N x E x H x W."""
    return e[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])


class Generator(nn.Module):
    """G(z, y). A learned embedding e(y) is joined to z at the input; for images it is also joined,
    as constant extra channels, to the feature maps before every upsampling, so every layer knows y."""

    def __init__(self, cfg, channels, n_classes):
        super().__init__()
        self.embed, e = nn.Embedding(n_classes, cfg.emb_dim), cfg.emb_dim
        self.toy = cfg.dataset in TOY_SETS
        if self.toy:
            self.net = mlp(cfg.z_dim + e, cfg.width, 2)
            return
        s0, ch = dcgan_channels(cfg.image_size, cfg.width)
        self.stem = nn.Sequential(nn.Linear(cfg.z_dim + e, ch[0] * s0 * s0, bias=False), nn.BatchNorm1d(ch[0] * s0 * s0),
                                  nn.ReLU(), nn.Unflatten(1, (ch[0], s0, s0)))
        self.ups = nn.ModuleList([nn.Sequential(nn.ConvTranspose2d(ch[i] + e, ch[i + 1], 4, 2, 1, bias=False),
                                                nn.BatchNorm2d(ch[i + 1]), nn.ReLU()) for i in range(len(ch) - 1)])
        self.ups.append(nn.Sequential(nn.ConvTranspose2d(ch[-1] + e, channels, 4, 2, 1), nn.Tanh()))

    def forward(self, z, y):
        e = self.embed(y)
        if self.toy:
            return self.net(torch.cat([z, e], 1))
        h = self.stem(torch.cat([z, e], 1))
        for up in self.ups:
            h = up(torch.cat([h, broadcast(e, h)], 1))
        return h


class Discriminator(nn.Module):
    """D(x, y) = a logit. A feature extractor phi (MLP for 2-D; DCGAN strided convolutions for images)
    and a linear head psi, conditioned one of two ways:
      concat:     D(x, y) = psi(phi([x, e(y)]))        - y joined to the input (Mirza & Osindero);
      projection: D(x, y) = psi(phi(x)) + e(y) . phi(x) - the idea (Miyato & Koyama): if log p(y|x) is
                  a softmax over linear functions of phi(x), the log-ratio of the conditional densities
                  log p_data(x, y) / p_G(x, y) splits into a y-free term psi(phi(x)) and an inner
                  product of a class embedding with phi(x). D then checks the class by one dot product
                  with the features it already has, instead of re-learning y from extra input channels."""

    def __init__(self, cfg, channels, n_classes):
        super().__init__()
        self.toy, self.cond = cfg.dataset in TOY_SETS, cfg.d_cond
        e_in = cfg.emb_dim if self.cond == "concat" else 0
        if self.toy:
            self.phi = nn.Sequential(nn.Linear(2 + e_in, cfg.width), nn.ReLU(), nn.Linear(cfg.width, cfg.width),
                                     nn.ReLU(), nn.Linear(cfg.width, cfg.width), nn.ReLU())
            n_feat = cfg.width
        else:
            s0, ch = dcgan_channels(cfg.image_size, cfg.width)
            layers = [nn.Conv2d(channels + e_in, ch[-1], 4, 2, 1), nn.LeakyReLU(0.2)]  # no BatchNorm on the input layer
            for i in reversed(range(len(ch) - 1)):
                layers += [nn.Conv2d(ch[i + 1], ch[i], 4, 2, 1, bias=False), nn.BatchNorm2d(ch[i]), nn.LeakyReLU(0.2)]
            self.phi, n_feat = nn.Sequential(*layers, nn.Flatten()), ch[0] * s0 * s0
        self.psi = nn.Linear(n_feat, 1)
        self.embed = nn.Embedding(n_classes, cfg.emb_dim if self.cond == "concat" else n_feat)
        nn.init.normal_(self.embed.weight, 0.0, self.embed.embedding_dim ** -0.5)  # e(y) . phi(x) starts O(1)

    def forward(self, x, y):
        e = self.embed(y)
        if self.cond == "concat":
            return self.psi(self.phi(torch.cat([x, e if self.toy else broadcast(e, x)], 1)))
        phi = self.phi(x)
        # projection discriminator: f(x, y) = psi(phi(x)) + e(y) . phi(x)
        return self.psi(phi) + (e * phi).sum(1, keepdim=True)


def build_models(cfg, channels, n_classes):
    G, D = Generator(cfg, channels, n_classes), Discriminator(cfg, channels, n_classes)
    if cfg.dataset not in TOY_SETS:
        for m in list(G.modules()) + list(D.modules()):  # DCGAN init: weights ~ N(0, 0.02), BN scale ~ N(1, 0.02)
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.normal_(m.weight, 1.0, 0.02), nn.init.zeros_(m.bias)
    return G, D


# ----------------------------------------------------------------------------------------------
# 4. The concept. D_match, D_mismatch, D_fake are D's LOGITS on the three kinds of pair; with
#    D = sigmoid(l):  log D = -softplus(-l),  log(1 - D) = -softplus(l).
# ----------------------------------------------------------------------------------------------
def mismatched_labels(y, n_classes, generator=None):
    """A wrong label for every sample, uniform over the other n_classes - 1 classes: adding an offset
    in 1..K-1 modulo K can never give back y itself."""
    offset = torch.randint(1, n_classes, y.shape, generator=generator).to(y.device)
    return (y + offset) % n_classes


def conditional_discriminator_loss(D_match, D_mismatch, D_fake, w):
    # The three cases as binary cross-entropy, the two negative cases weighted w and 1 - w:
    # L_D = -E[log D(x, y)] - w E[log(1 - D(x, y'))] - (1 - w) E[log(1 - D(G(z, y), y))]
    #       real x, its own y       real x, a wrong y'           generated x, the y it was asked for
    # w = 1/2 is Reed et al. (2016); w = 0 is the plain conditional GAN (D_mismatch is not needed).
    # Keeping the negative weights summing to 1 balances positives and negatives as in the plain GAN.
    loss = F.softplus(-D_match).mean() + (1 - w) * F.softplus(D_fake).mean()
    if w > 0:
        loss = loss + w * F.softplus(D_mismatch).mean()
    return loss


def generator_loss(D_fake):
    # non-saturating: G minimises -E[log D(G(z, y), y)] - it must look real AND match y to score high
    return F.softplus(-D_fake).mean()


# ----------------------------------------------------------------------------------------------
# 5. Training: the GAN algorithm (fix G, train D; fix D, train G) on pairs (x, y).
# ----------------------------------------------------------------------------------------------
def train(cfg, device):
    out = Path(cfg.out)
    toy, K = cfg.dataset in TOY_SETS, len(cfg.classes)
    if toy:
        x_data, y_data, channels = None, None, 2
    else:
        x_data, y_data = load_images(cfg.dataset, cfg.data_dir, cfg.image_size)
        channels = x_data.shape[1]
        print(f"{cfg.dataset}: {len(x_data)} images of {channels}x{cfg.image_size}x{cfg.image_size}, {K} classes")
    G, D = (m.to(device) for m in build_models(cfg, channels, K))
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    print(f"G: {sum(p.numel() for p in G.parameters()):,} parameters, D ({cfg.d_cond}): "
          f"{sum(p.numel() for p in D.parameters()):,}; mismatch weight w = {cfg.mismatch_weight}")

    def real_batch(m):
        if toy:
            x, y = sample_toy_labelled(cfg.dataset, m)
            return x.to(device), y.to(device)
        i = torch.randint(len(x_data), (m,))  # drawn with replacement, no epochs
        return x_data[i].to(device), y_data[i].to(device)

    parts = {"G": G, "D": D, "opt_G": opt_G, "opt_D": opt_D}  # what a checkpoint holds
    start, elapsed = 0, 0.0
    if cfg.resume:
        start, elapsed = load_checkpoint(out / "checkpoint.pt", cfg, parts)
        print(f"resumed from {out / 'checkpoint.pt'} at step {start}")
    start_log(out / "log.csv", start)
    write_atomic(out / "config.json", lambda f: f.write(json.dumps(vars(cfg), indent=1)), mode="w")
    # Fixed noise for the figures (own generator: figures compare across steps, resuming changes nothing).
    z_fixed = torch.randn(10 if not toy else 1200, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))
    t0, t_last, last_logged = time.time() - elapsed, time.time(), start
    for step in range(start + 1, cfg.steps + 1):
        lr = cfg.lr * (1 - (step - 1) / cfg.steps if cfg.lr_decay == "linear" else 1)
        for opt in (opt_G, opt_D):
            for group in opt.param_groups:
                group["lr"] = lr
        # 1. For k steps: sample m labelled examples (x, y) ~ P_data, a wrong label y' != y for each,
        #    and m noise vectors z; update D on the three cases. G is held fixed.
        for _ in range(cfg.d_steps):
            x_real, y = real_batch(cfg.batch_size)
            y_wrong = mismatched_labels(y, K)
            with torch.no_grad():
                x_fake = G(torch.randn(cfg.batch_size, cfg.z_dim, device=device), y)
            D_match, D_fake = D(x_real, y), D(x_fake, y)
            D_mismatch = D(x_real, y_wrong) if cfg.mismatch_weight > 0 else None
            loss_D = conditional_discriminator_loss(D_match, D_mismatch, D_fake, cfg.mismatch_weight)
            opt_D.zero_grad(set_to_none=True)
            loss_D.backward()
            opt_D.step()
        # 2. Sample m labels y ~ U{0..K-1} and noise z, update G to make D(G(z, y), y) say "real and
        #    matching". D is held fixed and carries over to the next round (never re-initialised).
        y_G = torch.randint(K, (cfg.batch_size,), device=device)
        loss_G = generator_loss(D(G(torch.randn(cfg.batch_size, cfg.z_dim, device=device), y_G), y_G))
        opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        opt_G.step()

        if not (torch.isfinite(loss_D) and torch.isfinite(loss_G)):
            raise UserError(f"a loss became NaN/inf at step {step}; the last good checkpoint is kept in "
                            f"{out / 'checkpoint.pt'}; try a lower --lr (now {cfg.lr})")
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.time()
            rate, t_last, last_logged = (step - last_logged) / max(now - t_last, 1e-9), now, step
            with torch.no_grad():
                D_mismatch = D(x_real, y_wrong)  # also logged when w = 0: does D check y on its own?
            row = {"step": step, "loss_D": loss_D.item(), "loss_G": loss_G.item(),
                   "D_match": torch.sigmoid(D_match).mean().item(), "D_mismatch": torch.sigmoid(D_mismatch).mean().item(),
                   "D_fake": torch.sigmoid(D_fake).mean().item(), "lr": lr, "seconds": now - t0}
            if toy:  # conditional quality as training goes
                x_e, y_e = generate(G, cfg, list(range(K)), 100, device, seed=7)
                row["on_target"] = conditional_mode_metrics(x_e, y_e, cfg.dataset)["on_target"]
            append_log(out / "log.csv", row)
            print(f"step {step}/{cfg.steps}  loss_D {row['loss_D']:.3f}  loss_G {row['loss_G']:.3f}  D(x,y) "
                  f"{row['D_match']:.2f}  D(x,y') {row['D_mismatch']:.2f}  D(G(z,y),y) {row['D_fake']:.2f}"
                  + (f"  on target {100 * row['on_target']:.1f}%" if toy else "")
                  + f"  {rate:.1f} steps/s  left {fmt_time((cfg.steps - step) / max(rate, 1e-9))}", flush=True)
        if step % cfg.sample_every == 0 or step == cfg.steps:
            save_samples_figure(out / f"samples_{step}.png", cfg, G, D, z_fixed, device)
            save_checkpoint(out / "checkpoint.pt", cfg, parts, step, time.time() - t0)
    plot_losses(out / "log.csv", out / "losses.png")
    return G, D


@torch.no_grad()
def generate(G, cfg, labels, n_per_class, device, seed):
    """n_per_class samples of each class in labels, from their own noise generator (no training RNG used).
    The same noise is reused for every class, so column j of a class grid shares z_j."""
    was_training = G.training
    G.eval()
    z = torch.randn(n_per_class, cfg.z_dim, generator=torch.Generator().manual_seed(seed))
    xs, ys = [], []
    for k in labels:
        y = torch.full((n_per_class,), k, dtype=torch.long)
        xs += [G(zb.to(device), yb.to(device)).float().cpu() for zb, yb in zip(z.split(500), y.split(500))]
        ys.append(y)
    G.train(was_training)
    return torch.cat(xs), torch.cat(ys)


# ----------------------------------------------------------------------------------------------
# 6. Evaluation, figures, export.
# ----------------------------------------------------------------------------------------------
def mode_metrics(x, dataset):
    """Modes captured and high-quality %, the VEEGAN / PacGAN definition: a sample is high quality if it
    lies within 3 std of its nearest mode; a mode is captured if it is nearest to >= 1 such sample."""
    centres, std = toy_centres(dataset)
    dist, nearest = torch.cdist(torch.as_tensor(x, dtype=torch.float32), centres).min(1)
    good = dist < 3 * std
    return {"modes": int(nearest[good].unique().numel()), "of": len(centres), "high_quality": good.float().mean().item()}


def conditional_mode_metrics(x, y, dataset):
    """on_target: share of samples within 3 std of the mode they were ASKED for (y); nearest_is_asked:
    share whose nearest mode is the asked one; plus the unconditional modes / high-quality figures."""
    centres, std = toy_centres(dataset)
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    on_target = (x - centres[y]).norm(dim=1) < 3 * std
    nearest = torch.cdist(x, centres).argmin(1)
    per_class = [on_target[y == k].float().mean().item() for k in y.unique()]
    return {**mode_metrics(x, dataset), "on_target": on_target.float().mean().item(),
            "nearest_is_asked": (nearest == y).float().mean().item(), "worst_class_on_target": min(per_class)}


@torch.no_grad()
def save_samples_figure(path, cfg, G, D, z_fixed, device):
    from matplotlib.figure import Figure
    G.eval(), D.eval()
    if cfg.dataset in TOY_SETS:
        # Left: generated points coloured by the label they were asked for, over the real data (grey),
        # with each mode's index. Right: D(x, y = 0) over the plane - a matching-aware D accepts only
        # the neighbourhood of mode 0, not every real mode.
        fig = Figure(figsize=(11, 5))
        centres, _ = toy_centres(cfg.dataset)
        n_per = len(z_fixed) // len(cfg.labels)
        y = torch.tensor(cfg.labels).repeat_interleave(n_per)
        x_fake = G(z_fixed[:len(y)].to(device), y.to(device)).float().cpu()
        x_real, y_real = sample_toy_labelled(cfg.dataset, 1000, torch.Generator().manual_seed(cfg.seed + 2))
        lim = 2.0
        ax = fig.add_subplot(1, 2, 1)
        ax.scatter(*x_real.numpy().T, s=30, c="lightgray", label="real")
        ax.scatter(*x_fake.numpy().T, s=2, c=y.numpy() % 10, cmap="tab10", vmin=0, vmax=9, label="G(z, y), colour = y")
        for k, c in enumerate(centres):
            ax.annotate(str(k), c.numpy(), xytext=(6, 6), textcoords="offset points", fontsize=7)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=f"{cfg.dataset}, step {path.stem[8:]}")
        ax.legend(loc="lower right", fontsize=7)
        ax = fig.add_subplot(1, 2, 2)
        g = torch.linspace(-lim, lim, 150)
        xx, yy = torch.meshgrid(g, g, indexing="xy")
        grid = torch.stack([xx.flatten(), yy.flatten()], 1).to(device)
        D_grid = torch.sigmoid(D(grid, torch.zeros(len(grid), dtype=torch.long, device=device))).cpu().view(150, 150)
        cs = ax.contourf(xx.numpy(), yy.numpy(), D_grid.numpy(), levels=20, cmap="RdBu_r", vmin=0, vmax=1, alpha=0.8)
        fig.colorbar(cs, ax=ax, label="D(x, y=0)", fraction=0.046)
        ax.scatter(*x_real[y_real != 0].numpy().T, s=3, c="k", label="real, other modes")
        ax.scatter(*x_real[y_real == 0].numpy().T, s=3, c="yellow", label="real, mode 0")
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title="D(x, y = 0): real AND mode 0?")
        ax.legend(loc="lower right", fontsize=7)
    else:
        # One row per class, the same noise z_j in column j of every row: rows change the class,
        # columns change the style.
        x_fake = torch.cat([G(z_fixed.to(device), torch.full((len(z_fixed),), k, device=device)).float().cpu()
                            for k in cfg.labels])
        fig = Figure(figsize=(6, 0.6 * len(cfg.labels) + 0.8))
        ax = fig.add_subplot()
        ax.imshow(image_grid(x_fake, len(z_fixed)), cmap="gray" if x_fake.shape[1] == 1 else None)
        h = x_fake.shape[2] + 2
        ax.set_yticks([h * (i + 0.5) for i in range(len(cfg.labels))], [cfg.classes[k] or "(top)" for k in cfg.labels], fontsize=8)
        ax.set_xticks([])
        ax.set_title(f"{cfg.dataset}, step {path.stem[8:]}: row = class y, column = noise z")
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
    G.train(), D.train()


def image_grid(x, ncol):
    """N x C x H x W in [-1, 1] -> one uint8 H' x W' (x C) picture."""
    x = to_uint8(x)
    n, h, w, c = x.shape
    rows = math.ceil(n / ncol)
    grid = np.full((rows * (h + 2), ncol * (w + 2), c), 255, np.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        grid[r * (h + 2) + 1: r * (h + 2) + 1 + h, k * (w + 2) + 1: k * (w + 2) + 1 + w] = x[i]
    return grid[..., 0] if c == 1 else grid


def to_uint8(x):
    """[-1, 1] float N x C x H x W -> uint8 N x H x W x C in 0..255."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def plot_losses(csv_path, png_path):
    from matplotlib.figure import Figure
    if not csv_path.exists():
        return
    cols = np.genfromtxt(csv_path, delimiter=",", names=True, ndmin=1)
    fig = Figure(figsize=(10, 3.5))
    groups = [(["loss_D", "loss_G"], "loss"), (["D_match", "D_mismatch", "D_fake"], "mean D output")]
    if "on_target" in cols.dtype.names:
        groups.append((["on_target"], "share on the asked mode"))
    labels = {"D_match": "D(x, y)", "D_mismatch": "D(x, y')", "D_fake": "D(G(z, y), y)"}
    for i, (names, title) in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), i + 1)
        for n in names:
            ax.plot(cols["step"], cols[n], label=labels.get(n, n))
        ax.set(xlabel="step", title=title)
        ax.legend()
    fig.tight_layout()
    write_atomic(png_path, lambda f: fig.savefig(f, format="png", dpi=100))


# --- scaffolding: logging, checkpoints, files (identical in every script; skip on first read) ---
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


def start_log(path, step):
    """Keep the log rows up to the checkpoint's step (all of them are dropped for a fresh run)."""
    if path.exists() and step == 0:
        path.unlink()
    elif path.exists():
        lines = path.read_text().splitlines(keepends=True)
        keep = lines[:1] + [r for r in lines[1:] if float(r.split(",")[0]) <= step]
        write_atomic(path, lambda f: f.write("".join(keep)), mode="w")


def append_log(path, row):
    new = not path.exists()
    with open(path, "a") as f:
        f.write((",".join(row) + "\n" if new else "") + ",".join(f"{v:.6g}" for v in row.values()) + "\n")


ARCH_KEYS = ("dataset", "image_size", "z_dim", "emb_dim", "width", "d_cond", "classes")  # must match to resume


def save_checkpoint(path, cfg, parts, step, elapsed):
    """parts: name -> model or optimizer; each one's state_dict is saved under its name."""
    state = {"script": SCRIPT, "config": vars(cfg), "step": step, "elapsed": elapsed,
             **{name: part.state_dict() for name, part in parts.items()},
             "rng_cpu": torch.get_rng_state(),
             "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    write_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path, cfg, parts):
    if not path.exists():
        raise UserError(f"--resume: no checkpoint at {path}; run without --resume to start")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} cannot be loaded ({type(e).__name__}); it is corrupt or not a checkpoint")
    if not isinstance(state, dict) or state.get("script") != SCRIPT:
        raise UserError(f"{path} was not written by {SCRIPT}.py (it says {state.get('script') if isinstance(state, dict) else '?'})")
    diff = [k for k in ARCH_KEYS if state["config"].get(k) != getattr(cfg, k)]
    if diff:
        raise UserError(f"{path} was trained with another configuration (" + ", ".join(
            f"--{k.replace('_', '-')} {state['config'].get(k)} vs {getattr(cfg, k)}" for k in diff) + ")")
    if any(name not in state for name in parts):
        raise UserError(f"{path} lacks parts this run needs ({', '.join(n for n in parts if n not in state)})")
    for name, part in parts.items():
        part.load_state_dict(state[name])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return state["step"], state["elapsed"]


def pick_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available() or name == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name} was asked for but is not available here; use --device auto or cpu")
    return name


def prepare_out(cfg):
    """A new run never overwrites an old one by accident."""
    out = Path(cfg.out)
    if cfg.resume or cfg.overwrite or cfg.experiment != "train":
        return
    if (out / "checkpoint.pt").exists() or (out / "log.csv").exists():
        raise UserError(f"{out} already holds a run: pass --resume to continue it, --overwrite to start it "
                        "again, or --out to choose another folder")


def main(argv=None):
    cfg = build_parser().parse_args(argv)
    try:
        cfg = finish_config(cfg)
        device = pick_device(cfg.device)
        torch.manual_seed(cfg.seed)
        prepare_out(cfg)
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        G, D = train(cfg, device)
        # Export: an equal number of samples for each class in --labels, with y (CONVENTIONS §4).
        n_per = max(1, cfg.num_samples // len(cfg.labels))
        x, y = generate(G, cfg, cfg.labels, n_per, device, seed=cfg.seed + 3)
        x = x.numpy().astype(np.float32) if cfg.dataset in TOY_SETS else to_uint8(x)
        write_atomic(out / "samples.npz", lambda f: np.savez(f, x=x, y=y.numpy()))
        if cfg.dataset in TOY_SETS:
            m = conditional_mode_metrics(x, y, cfg.dataset)
            write_atomic(out / "metrics.json", lambda f: f.write(json.dumps(m)), mode="w")
            print(f"on the asked mode (within 3 std): {100 * m['on_target']:.1f}% (worst class "
                  f"{100 * m['worst_class_on_target']:.1f}%), nearest mode = asked mode {100 * m['nearest_is_asked']:.1f}%, "
                  f"modes captured {m['modes']}/{m['of']} ({len(x)} samples)")
        print(f"figures, samples.npz (x, y) and checkpoint.pt are in {out}/")
        return G, D
    except UserError as e:
        print(f"cgan.py: error: {e}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
