"""wgan_gp.py - the Wasserstein GAN, and three ways to keep its critic 1-Lipschitz, side by side.

The notes' answer to "JS gives G no gradient": replace JS with the earth mover (Wasserstein-1)
distance, which by Kantorovich-Rubinstein duality is

    W(P_data, P_G) = max over 1-Lipschitz D of  E_{x~P_data}[D(x)] - E_{x~P_G}[D(x)].

D (now a "critic", no sigmoid) must be 1-Lipschitz, |D(a) - D(b)| <= ||a - b||, i.e. smooth enough.
Three ways to enforce it, chosen with --lipschitz:
    clip  clamp every critic weight to [-c, c] after each step     (WGAN, Arjovsky et al. 2017)
    gp    penalise lambda E[(||grad_x^ D(x^)||_2 - 1)^2] on points x^ between real and fake samples
                                                                   (WGAN-GP, Gulrajani et al. 2017)
    sn    divide each layer's weight by its largest singular value (spectral normalisation, Miyato 2018)

Run it:
    python wgan_gp.py                                  # 25 Gaussians, gradient penalty (~8 min on 2 CPU cores)
    python wgan_gp.py --lipschitz clip                 # the original WGAN; compare the figures
    python wgan_gp.py --lipschitz sn --dataset 8gaussians
    python wgan_gp.py --dataset fashion-mnist          # paper settings (on a CPU: --n-critic 2 --lr 2e-4 --steps 3000)
    python wgan_gp.py --experiment w-vs-js             # W grows with the separation, JS is stuck at log 2
    python wgan_gp.py --experiment gradnorm            # clipping's exploding / vanishing gradients

Lecture notes followed: why JS fails; the Wasserstein / earth mover distance (moving plans, the
smallest average distance); the 1-Lipschitz constraint ("smooth enough", D not sent to +-infinity
on non-overlapping supports); weight clipping, the gradient penalty (interpolate real and fake,
gradient norm near 1) and spectral normalisation; the critic's estimate as a number that tells
whether G is learning.

Deliberate deviations: the 2-D defaults follow the WGAN-GP toy code (lambda = 0.1, batch 256,
Adam betas (0.5, 0.9), n_critic = 5) except where the --help says why (width 256 instead of 512, and
a learning rate of 5e-4 decayed linearly to 0 instead of a constant 1e-4, so a CPU run converges in
minutes); the image critic uses layer normalisation (GroupNorm with one group) for gp and nothing
for clip / sn; spectral normalisation treats a convolution's kernel as a (C_out x C_in*k*k) matrix,
as Miyato et al. do, which bounds but does not equal the convolution's operator norm.
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

SCRIPT = "wgan_gp"
TOY_SETS = ("8gaussians", "25gaussians", "swissroll")
IMAGE_SETS = ("mnist", "fashion-mnist", "cifar10")


# ----------------------------------------------------------------------------------------------
# 1. Configuration: every option, its default and what it does (`python wgan_gp.py --help`).
# ----------------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(
        prog="wgan_gp.py", description="Wasserstein GAN with a 1-Lipschitz critic: gradient penalty, weight "
        "clipping or spectral normalisation, on toy 2-D sets or images.",
        epilog="Examples: python wgan_gp.py | python wgan_gp.py --lipschitz clip | python wgan_gp.py --experiment w-vs-js")
    a = p.add_argument
    a("--dataset", default="25gaussians", help="8gaussians, 25gaussians, swissroll, mnist, fashion-mnist, "
      "cifar10, or a folder of png/jpg images (default: %(default)s)")
    a("--data-dir", default="./data", help="where datasets live / are downloaded (default: %(default)s)")
    a("--out", default=None, help="run folder (default: runs/wgan_gp-<dataset>[-clip|-sn], or runs/wgan_gp-<experiment>)")
    a("--experiment", default="train", choices=["train", "w-vs-js", "gradnorm"], help="train a WGAN; w-vs-js: "
      "sweep the separation of two distributions, critic vs GAN discriminator; gradnorm: per-layer gradient "
      "norms of a deep critic under clip and gp (default: %(default)s)")
    a("--lipschitz", default="gp", choices=["gp", "clip", "sn"], help="how the critic is kept 1-Lipschitz (default: %(default)s)")
    a("--steps", type=int, default=None, help="generator updates (default: 6000 for 2-D sets, about 8 minutes on "
      "2 CPU cores; 1500 for images, a start - on a CPU use --n-critic 2 --lr 2e-4 --steps 3000, which gives "
      "recognisable Fashion-MNIST clothing in about 10 minutes)")
    a("--batch-size", type=int, default=None, help="minibatch size (default: 256 for 2-D sets, as in the "
      "WGAN-GP toy code; 64 for images)")
    a("--lr", type=float, default=None, help="learning rate (default: gp / sn: Adam 1e-4 for images as in "
      "WGAN-GP; 5e-4 for 2-D sets, decayed linearly to 0: faster early progress than the toy code's constant "
      "1e-4 and a sharp fit at the end; clip: RMSProp 5e-5 as in WGAN)")
    a("--lr-decay", default=None, choices=["none", "linear"], help="learning-rate schedule over the run "
      "(default: linear for 2-D sets, none for images)")
    a("--n-critic", type=int, default=5, help="critic updates per generator update, as in both papers (default: %(default)s)")
    a("--lambda-gp", type=float, default=None, help="gp: penalty weight lambda (default: 10 for images, the "
      "WGAN-GP paper's; 0.1 for 2-D sets as in the WGAN-GP toy code, since a critic held that close to slope 1 "
      "cannot resolve modes of std 0.018 (measured: 1 %% high-quality samples with 10); 100 for --experiment "
      "w-vs-js, where the penalty's bias theta^2 / (2 lambda) must stay small)")
    a("--clip", type=float, default=0.01, help="clip: weights are clamped to [-c, c], the WGAN paper's c (default: %(default)s)")
    a("--z-dim", type=int, default=None, help="noise dimension (default: 2 for 2-D sets, 100 for images)")
    a("--width", type=int, default=None, help="hidden units of the MLPs (2-D) or base channels (images) "
      "(default: 256 for 2-D sets, half the toy code's 512 so a CPU run fits in minutes; 32 for images)")
    a("--image-size", type=int, default=None, help="28, 32 or 64 pixels (default: 28 for (fashion-)mnist, "
      "32 for cifar10, 64 for a folder)")
    a("--seed", type=int, default=0, help="random seed; the same seed on CPU gives the same numbers (default: %(default)s)")
    a("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto picks cuda > mps > cpu (default: %(default)s)")
    a("--log-every", type=int, default=100, help="progress line and log.csv row cadence (default: %(default)s)")
    a("--sample-every", type=int, default=500, help="sample figure + checkpoint cadence (default: %(default)s)")
    a("--num-samples", type=int, default=None, help="samples exported to samples.npz at the end "
      "(default: 2500 points for 2-D sets, 1000 images)")
    a("--exp-steps", type=int, default=None, help="experiments: critic updates per setting (default: 1000 for "
      "w-vs-js, 2000 for gradnorm)")
    a("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    a("--overwrite", action="store_true", help="start afresh even if <out> already holds a run")
    return p


def finish_config(cfg):
    """Fill the dataset-dependent defaults (stated in --help) and validate."""
    toy = cfg.dataset in TOY_SETS
    if not toy and cfg.dataset not in IMAGE_SETS and not Path(cfg.dataset).is_dir():
        raise UserError(f"unknown dataset '{cfg.dataset}': choose one of {', '.join(TOY_SETS + IMAGE_SETS)}, "
                        "or give the path of a folder of images")
    name = cfg.dataset if (toy or cfg.dataset in IMAGE_SETS) else Path(cfg.dataset).resolve().name
    suffix = "" if cfg.lipschitz == "gp" else f"-{cfg.lipschitz}"
    cfg.out = cfg.out or (f"runs/{SCRIPT}-{cfg.experiment}" if cfg.experiment != "train" else f"runs/{SCRIPT}-{name}{suffix}")
    cfg.steps = cfg.steps if cfg.steps is not None else (6000 if toy else 1500)
    cfg.batch_size = cfg.batch_size if cfg.batch_size is not None else (256 if toy else 64)
    cfg.lr = cfg.lr if cfg.lr is not None else (5e-5 if cfg.lipschitz == "clip" else 5e-4 if toy else 1e-4)
    cfg.lr_decay = cfg.lr_decay if cfg.lr_decay is not None else ("linear" if toy else "none")
    cfg.z_dim = cfg.z_dim if cfg.z_dim is not None else (2 if toy else 100)
    cfg.width = cfg.width if cfg.width is not None else (256 if toy else 32)
    cfg.num_samples = cfg.num_samples if cfg.num_samples is not None else (2500 if toy else 1000)
    cfg.exp_steps = cfg.exp_steps if cfg.exp_steps is not None else (1000 if cfg.experiment == "w-vs-js" else 2000)
    cfg.lambda_gp = cfg.lambda_gp if cfg.lambda_gp is not None else (
        100.0 if cfg.experiment == "w-vs-js" else 0.1 if toy else 10.0)
    if cfg.image_size is None and not toy:
        cfg.image_size = {"mnist": 28, "fashion-mnist": 28, "cifar10": 32}.get(cfg.dataset, 64)
    if not toy and cfg.image_size not in (28, 32, 64):
        raise UserError(f"--image-size {cfg.image_size} is not supported: the networks here take 28, 32 or 64 pixels")
    for flag in ("steps", "batch_size", "n_critic", "z_dim", "width", "log_every", "sample_every", "num_samples", "exp_steps"):
        if getattr(cfg, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(cfg, flag)}")
    if cfg.clip <= 0 or cfg.lambda_gp < 0 or cfg.lr <= 0:
        raise UserError("--clip and --lr must be positive and --lambda-gp non-negative")
    return cfg


# ----------------------------------------------------------------------------------------------
# 2. Data (the same loaders as every script; see CONVENTIONS §5).
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


# ----------------------------------------------------------------------------------------------
# 3. Models. The critic D outputs a real number (no sigmoid): a score, not a probability.
# ----------------------------------------------------------------------------------------------
class SpectralNorm(nn.Module):
    """Wraps a Linear or Conv2d layer and uses W / sigma(W), sigma = the largest singular value.
    Power iteration: for a matrix W, repeating v <- W^T u / ||W^T u||, u <- W v / ||W v|| makes u, v the
    top singular vectors, and u^T W v -> sigma. One iteration per training step suffices because W
    changes little between steps and u is kept (a buffer) from one step to the next."""
    def __init__(self, layer, n_power_iterations=1):
        super().__init__()
        self.layer, self.n_power_iterations = layer, n_power_iterations
        self.register_buffer("u", F.normalize(torch.randn(layer.weight.shape[0]), dim=0))

    def sigma(self):
        W = self.layer.weight.flatten(1)  # a conv kernel as a C_out x (C_in k k) matrix
        with torch.no_grad():
            u = self.u
            for _ in range(self.n_power_iterations):
                v = F.normalize(W.t() @ u, dim=0)
                u = F.normalize(W @ v, dim=0)
            if self.training:
                self.u.copy_(u)
        return u @ W @ v  # differentiable in W; u, v are constants of this step

    def forward(self, x):
        W = self.layer.weight / self.sigma()
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, W, self.layer.bias)
        return F.conv2d(x, W, self.layer.bias, self.layer.stride, self.layer.padding)


def mlp(n_in, width, n_out, depth=3, sn=False):
    wrap = SpectralNorm if sn else (lambda m: m)
    layers, d = [], n_in
    for _ in range(depth):
        layers += [wrap(nn.Linear(d, width)), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, wrap(nn.Linear(d, n_out)))


def dcgan_generator(z_dim, channels, size, width):
    """Transposed convolutions doubling the resolution: 7 -> 14 -> 28, 8 -> 16 -> 32, 8 -> ... -> 64."""
    n_up = 3 if size == 64 else 2
    s0, ch = size // 2 ** n_up, [width * 2 ** (n_up - 1 - i) for i in range(n_up)]
    G = [nn.Linear(z_dim, ch[0] * s0 * s0), nn.BatchNorm1d(ch[0] * s0 * s0), nn.ReLU(), nn.Unflatten(1, (ch[0], s0, s0))]
    for i in range(n_up - 1):
        G += [nn.ConvTranspose2d(ch[i], ch[i + 1], 4, 2, 1), nn.BatchNorm2d(ch[i + 1]), nn.ReLU()]
    return nn.Sequential(*G, nn.ConvTranspose2d(ch[-1], channels, 4, 2, 1), nn.Tanh())


def dcgan_critic(channels, size, width, lipschitz):
    """Strided convolutions halving the resolution. NO batch normalisation: BN makes each sample's score
    depend on the rest of the batch, but the gradient penalty constrains ||grad D(x^)|| sample by
    sample, so the critic must be a function of one sample. For gp, layer norm (GroupNorm with one
    group: statistics over one sample's C x H x W) is per-sample and fine."""
    n_up = 3 if size == 64 else 2
    s0, ch = size // 2 ** n_up, [width * 2 ** (n_up - 1 - i) for i in range(n_up)]
    wrap = SpectralNorm if lipschitz == "sn" else (lambda m: m)
    norm = (lambda c: nn.GroupNorm(1, c)) if lipschitz == "gp" else (lambda c: nn.Identity())
    D = [wrap(nn.Conv2d(channels, ch[-1], 4, 2, 1)), nn.LeakyReLU(0.2)]
    for i in reversed(range(n_up - 1)):
        D += [wrap(nn.Conv2d(ch[i + 1], ch[i], 4, 2, 1)), norm(ch[i]), nn.LeakyReLU(0.2)]
    return nn.Sequential(*D, nn.Flatten(), wrap(nn.Linear(ch[0] * s0 * s0, 1)))


def build_models(cfg, channels):
    if cfg.dataset in TOY_SETS:
        return mlp(cfg.z_dim, cfg.width, 2), mlp(2, cfg.width, 1, sn=cfg.lipschitz == "sn")
    return (dcgan_generator(cfg.z_dim, channels, cfg.image_size, cfg.width),
            dcgan_critic(channels, cfg.image_size, cfg.width, cfg.lipschitz))


# ----------------------------------------------------------------------------------------------
# 4. The concept.
# ----------------------------------------------------------------------------------------------
def wasserstein_estimate(D_real, D_fake):
    # W(P_data, P_G) ~ E_x[D(x)] - E_z[D(G(z))]  for a (near-)optimal 1-Lipschitz critic D
    return D_real.mean() - D_fake.mean()


def critic_loss(D_real, D_fake):
    # the critic maximises the estimate, so it minimises its negative: E[D(G(z))] - E[D(x)]
    return -wasserstein_estimate(D_real, D_fake)


def generator_loss(D_fake):
    # G minimises the estimate; only its second term depends on G: -E_z[D(G(z))]
    return -D_fake.mean()


def interpolate(x_real, x_fake):
    # x^ = eps x + (1 - eps) x~, with eps ~ U[0, 1] drawn once PER SAMPLE (shape B x 1 x 1 x ...):
    # each x^ lies on the straight line between one real and one fake sample, where the optimal
    # critic has gradient norm exactly 1 (WGAN-GP, Proposition 1).
    eps = torch.rand(x_real.shape[0], *[1] * (x_real.dim() - 1), device=x_real.device)
    return eps * x_real + (1 - eps) * x_fake


def gradient_penalty(D, x_real, x_fake, lambda_gp):
    # lambda * E_x^[(||grad_x^ D(x^)||_2 - 1)^2], the norm taken over ALL of a sample's dimensions
    x_hat = interpolate(x_real, x_fake).requires_grad_(True)
    # create_graph=True: the penalty is itself differentiated w.r.t. the critic's weights
    grad, = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
    grad_norm = grad.flatten(1).norm(2, dim=1)
    return lambda_gp * ((grad_norm - 1) ** 2).mean()


@torch.no_grad()
def clip_weights(D, c):
    # WGAN: w <- clip(w, -c, c) for every critic parameter, after every critic update
    for p in D.parameters():
        p.clamp_(-c, c)


# The standard GAN pieces, for the w-vs-js comparison (the same as gan.py's).
def value_function(D_real, D_fake):
    # V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))]
    return (-F.softplus(-D_real)).mean() + (-F.softplus(D_fake)).mean()


def discriminator_loss(D_real, D_fake):
    # D maximises V, so it minimises -V: the binary cross-entropy with label 1 for real, 0 for fake.
    return -value_function(D_real, D_fake)


def generator_loss_minimax(D_fake):
    # G minimises E_z[log(1 - D(G(z)))], the second term of V. It SATURATES: early on D rejects fakes
    # confidently, D(G(z)) ~ 0, and d/dl log(1 - sigmoid(l)) = -sigmoid(l) ~ 0: almost no gradient.
    return (-F.softplus(D_fake)).mean()


def js_estimate(V):
    # max_D V(D, G) = 2 JS(P_data || P_G) - 2 log 2   =>   JS ~ (V + 2 log 2) / 2 for a near-optimal D
    return (V + 2 * math.log(2)) / 2


def train_discriminator(sample_real, sample_fake, steps, batch=512, width=64, lr=1e-3, seed=0):
    """Fit D to (near) optimum between two fixed samplers; returns the logit network D."""
    torch.manual_seed(seed)
    D = nn.Sequential(nn.Linear(sample_real(1).shape[1], width), nn.LeakyReLU(0.2),
                      nn.Linear(width, width), nn.LeakyReLU(0.2), nn.Linear(width, 1))
    opt = torch.optim.Adam(D.parameters(), lr=lr)
    for _ in range(steps):
        loss = discriminator_loss(D(sample_real(batch)), D(sample_fake(batch)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return D


def js_exact_gaussians(theta, n=40001):
    """JS(N(0,1) || N(theta,1)) by numerical integration (the 2-D case reduces to 1-D along theta)."""
    x = np.linspace(-12.0, 12.0 + abs(theta), n)
    p, q = np.exp(-x ** 2 / 2) / math.sqrt(2 * math.pi), np.exp(-(x - theta) ** 2 / 2) / math.sqrt(2 * math.pi)
    m = (p + q) / 2
    # JS(P || Q) = 1/2 KL(P || M) + 1/2 KL(Q || M), M = (P + Q) / 2
    kl = lambda a: np.where(a > 0, a * np.log(np.maximum(a, 1e-300) / m), 0.0)
    return float(np.trapezoid(0.5 * kl(p) + 0.5 * kl(q), x))


# ----------------------------------------------------------------------------------------------
# 5. Training: Algorithm 1 of WGAN-GP (and of WGAN for clip).
# ----------------------------------------------------------------------------------------------
def make_optimizer(cfg, params):
    if cfg.lipschitz == "clip":  # WGAN: momentum-based optimisers made clipped training unstable
        return torch.optim.RMSprop(params, lr=cfg.lr)
    return torch.optim.Adam(params, lr=cfg.lr, betas=(0.0 if cfg.dataset not in TOY_SETS else 0.5, 0.9))


def train(cfg, device):
    out = Path(cfg.out)
    toy = cfg.dataset in TOY_SETS
    if toy:
        x_data, channels = None, 2
    else:
        x_data, _ = load_images(cfg.dataset, cfg.data_dir, cfg.image_size)
        channels = x_data.shape[1]
        print(f"{cfg.dataset}: {len(x_data)} images of {channels}x{cfg.image_size}x{cfg.image_size}")
    G, D = (m.to(device) for m in build_models(cfg, channels))
    opt_G, opt_D = make_optimizer(cfg, G.parameters()), make_optimizer(cfg, D.parameters())
    print(f"G: {sum(p.numel() for p in G.parameters()):,} parameters, critic: {sum(p.numel() for p in D.parameters()):,}"
          f"; Lipschitz constraint: {cfg.lipschitz}")

    def real_batch(m):
        if toy:
            return sample_toy(cfg.dataset, m).to(device)
        return x_data[torch.randint(len(x_data), (m,))].to(device)  # drawn with replacement, no epochs

    parts = {"G": G, "D": D, "opt_G": opt_G, "opt_D": opt_D}  # what a checkpoint holds
    start, elapsed = 0, 0.0
    if cfg.resume:
        start, elapsed = load_checkpoint(out / "checkpoint.pt", cfg, parts)
        print(f"resumed from {out / 'checkpoint.pt'} at step {start}")
    start_log(out / "log.csv", start)
    write_atomic(out / "config.json", lambda f: f.write(json.dumps(vars(cfg), indent=1)), mode="w")
    z_fixed = torch.randn(64 if not toy else 1000, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))
    x_shown = sample_toy(cfg.dataset, 1000, torch.Generator().manual_seed(cfg.seed + 2)) if toy else None
    t0, t_last, last_logged = time.time() - elapsed, time.time(), start
    for step in range(start + 1, cfg.steps + 1):
        lr = cfg.lr * (1 - (step - 1) / cfg.steps if cfg.lr_decay == "linear" else 1)
        for opt in (opt_G, opt_D):
            for group in opt.param_groups:
                group["lr"] = lr
        # 1. for t = 1..n_critic: sample real x, noise z (and eps inside the penalty) and update the
        #    critic to maximise E[D(x)] - E[D(G(z))] (minus the penalty, for gp); G is fixed.
        for _ in range(cfg.n_critic):
            x_real = real_batch(cfg.batch_size)
            with torch.no_grad():
                x_fake = G(torch.randn(cfg.batch_size, cfg.z_dim, device=device))
            D_real, D_fake = D(x_real), D(x_fake)
            loss_D = critic_loss(D_real, D_fake)
            gp = gradient_penalty(D, x_real, x_fake, cfg.lambda_gp) if cfg.lipschitz == "gp" else torch.zeros((), device=device)
            opt_D.zero_grad(set_to_none=True)
            (loss_D + gp).backward()
            opt_D.step()
            if cfg.lipschitz == "clip":
                clip_weights(D, cfg.clip)
        # 2. sample z and update G to minimise -E[D(G(z))]; the critic is fixed and carries over.
        loss_G = generator_loss(D(G(torch.randn(cfg.batch_size, cfg.z_dim, device=device))))
        opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        opt_G.step()

        if not (torch.isfinite(loss_D) and torch.isfinite(loss_G) and torch.isfinite(gp)):
            raise UserError(f"a loss became NaN/inf at step {step}; the last good checkpoint is kept in "
                            f"{out / 'checkpoint.pt'}; try a lower --lr (now {cfg.lr})")
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.time()
            rate, t_last, last_logged = (step - last_logged) / max(now - t_last, 1e-9), now, step
            row = {"step": step, "loss_D": loss_D.item(), "loss_G": loss_G.item(), "gp": gp.item(),
                   "wasserstein": -loss_D.item(), "lr": lr, "seconds": now - t0}
            if toy and cfg.dataset != "swissroll":  # quality as training goes, for the curves in the README
                with torch.no_grad():
                    m = mode_metrics(G(torch.randn(2500, cfg.z_dim, generator=torch.Generator().manual_seed(7)).to(device)).cpu(), cfg.dataset)
                row.update(modes=m["modes"], high_quality=m["high_quality"])
            append_log(out / "log.csv", row)
            print(f"step {step}/{cfg.steps}  W estimate {row['wasserstein']:.4f}  gp {row['gp']:.4f}  loss_G "
                  f"{row['loss_G']:.3f}" + (f"  modes {row['modes']}  hq {100 * row['high_quality']:.1f}%" if "modes" in row else "")
                  + f"  {rate:.1f} steps/s  left {fmt_time((cfg.steps - step) / max(rate, 1e-9))}", flush=True)
        if step % cfg.sample_every == 0 or step == cfg.steps:
            save_samples_figure(out / f"samples_{step}.png", cfg, G, D, z_fixed, x_shown, device)
            save_checkpoint(out / "checkpoint.pt", cfg, parts, step, time.time() - t0)
    plot_losses(out / "log.csv", out / "losses.png")
    return G, D


# ----------------------------------------------------------------------------------------------
# 6. Experiments: Wasserstein vs JS, and per-layer gradient norms under clip and gp.
# ----------------------------------------------------------------------------------------------
def train_critic(sample_real, sample_fake, steps, lipschitz="gp", c=0.01, depth=3, width=64, batch=512,
                 lambda_gp=10.0, seed=0, record=None, lr=1e-2):
    """Fit a critic to (near) optimum between two fixed samplers. record: a list that receives, every
    10 steps, the gradient norm of the critic loss w.r.t. each Linear layer's weight (input first).
    With the penalty the optimum is not exactly W: for a critic of slope a along the shift theta the
    objective a theta - lambda (a - 1)^2 peaks at a = 1 + theta / (2 lambda), so the estimate is
    theta + theta^2 / (2 lambda), 15 % above W at theta = 3 with lambda = 10. The soft constraint lets
    the critic trade a little penalty for a larger gap."""
    torch.manual_seed(seed)
    D = mlp(sample_real(1).shape[1], width, 1, depth=depth)
    opt = torch.optim.RMSprop(D.parameters(), lr=5e-5) if lipschitz == "clip" else \
        torch.optim.Adam(D.parameters(), lr=lr, betas=(0.5, 0.9))
    for step in range(steps):
        x_real, x_fake = sample_real(batch), sample_fake(batch)
        loss = critic_loss(D(x_real), D(x_fake))
        if lipschitz == "gp":
            loss = loss + gradient_penalty(D, x_real, x_fake, lambda_gp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if record is not None and step % 10 == 0:
            record.append([m.weight.grad.norm().item() for m in D if isinstance(m, nn.Linear)])
        opt.step()
        if lipschitz == "clip":
            clip_weights(D, c)
    return D


def w_vs_js_experiment(cfg):
    """P_G = P_data shifted by theta: (a) N(0, I) vs N((theta, 0), I); (b) the WGAN paper's parallel lines
    (0, U[0,1]) vs (theta, U[0,1]). In both W = |theta| exactly (a translation moves every bit of mass by
    |theta|); JS is numerical for (a) and log 2 for every theta != 0 in (b). The critic uses the gradient
    penalty with lambda = 100 here: its optimum is |theta| + theta^2 / (2 lambda) (see train_critic),
    and lambda = 10 would overstate W by 40 % at theta = 8."""
    out, rows = Path(cfg.out), []
    cases = {"gaussians": (lambda n: torch.randn(n, 2), [0, 0.5, 1, 2, 3, 4, 6, 8]),
             "parallel lines": (lambda n: torch.stack([torch.zeros(n), torch.rand(n)], 1), [0, 0.1, 0.25, 0.5, 1, 2, 4])}
    for case, (sample_base, thetas) in cases.items():
        for theta in thetas:
            shift = torch.tensor([float(theta), 0.0])
            fake = lambda n: sample_base(n) + shift
            D_w = train_critic(sample_base, fake, cfg.exp_steps, lambda_gp=cfg.lambda_gp, seed=cfg.seed)
            D_js = train_discriminator(sample_base, fake, cfg.exp_steps, seed=cfg.seed)
            torch.manual_seed(cfg.seed + 1)
            x_real, x_base = sample_base(20000), sample_base(20000)
            th = torch.tensor(float(theta), requires_grad=True)
            x_fake = x_base + torch.stack([th, torch.tensor(0.0)])  # G's one parameter is theta
            W = wasserstein_estimate(D_w(x_real), D_w(x_fake))
            V = value_function(D_js(x_real), D_js(x_fake))
            g_w, = torch.autograd.grad(generator_loss(D_w(x_fake)), th)
            g_js, = torch.autograd.grad(generator_loss_minimax(D_js(x_fake)), th)
            js_exact = js_exact_gaussians(theta) if case == "gaussians" else (math.log(2) if theta else 0.0)
            rows.append({"case": case, "theta": theta, "w_estimate": W.item(), "w_exact": abs(theta),
                         "w_penalised_optimum": abs(theta) + theta ** 2 / (2 * cfg.lambda_gp),
                         "js_estimate": js_estimate(V.item()), "js_exact": js_exact,
                         "grad_wgan": abs(g_w.item()), "grad_gan_minimax": abs(g_js.item())})
            r = rows[-1]
            print(f"{case:15s} theta {theta:5.2f}  W {r['w_estimate']:.3f} (exact {abs(theta):.2f})  JS {r['js_estimate']:.4f} "
                  f"(exact {js_exact:.4f})  |dL/dtheta| WGAN {r['grad_wgan']:.2e}  GAN {r['grad_gan_minimax']:.2e}", flush=True)
    fits = {}
    for case in cases:  # least-squares line W_est = a |theta| + b and its R^2
        t = np.array([r["theta"] for r in rows if r["case"] == case])
        w = np.array([r["w_estimate"] for r in rows if r["case"] == case])
        a, b = np.polyfit(np.abs(t), w, 1)
        r2 = 1 - ((w - (a * np.abs(t) + b)) ** 2).sum() / ((w - w.mean()) ** 2).sum()
        fits[case] = {"slope": float(a), "intercept": float(b), "r2": float(r2)}
        print(f"{case}: W estimate = {a:.3f} |theta| + {b:.3f}, R^2 = {r2:.4f}")
    csv = ",".join(rows[0]) + "\n" + "".join(",".join(str(v) for v in r.values()) + "\n" for r in rows)
    write_atomic(out / "w_vs_js.csv", lambda f: f.write(csv), mode="w")
    write_atomic(out / "w_vs_js_fit.json", lambda f: f.write(json.dumps(fits, indent=1)), mode="w")
    plot_w_vs_js(rows, out / "w_vs_js.png")
    print(f"wrote {out / 'w_vs_js.csv'} and {out / 'w_vs_js.png'}")
    return rows, fits


def gradnorm_experiment(cfg):
    """The WGAN-GP paper's Figure 1(b): a deep (12 hidden layers) critic trained on the swiss roll against
    a fixed generator (Gaussian noise). With small clipping thresholds every layer shrinks the signal
    and the gradients vanish (1e-14 at c = 0.01, exactly 0 at c = 0.001); with c = 0.1 they explode
    (1e8 after 2,000 steps); with the penalty every layer keeps a gradient of order 1."""
    out, curves = Path(cfg.out), {}
    real = lambda n: sample_toy("swissroll", n)
    fake = lambda n: 0.5 * torch.randn(n, 2)
    for name, kw in [("clip c=0.1", dict(lipschitz="clip", c=0.1)), ("clip c=0.01", dict(lipschitz="clip", c=0.01)),
                     ("clip c=0.001", dict(lipschitz="clip", c=0.001)), ("gp lambda=10", dict(lipschitz="gp"))]:
        record = []
        train_critic(real, fake, cfg.exp_steps, depth=12, width=128, batch=256, seed=cfg.seed, record=record, lr=1e-3, **kw)
        curves[name] = np.mean(record[len(record) // 2:], axis=0)  # averaged over the second half of training
        print(f"{name:13s} gradient norm per layer (input first): " + " ".join(f"{g:.1e}" for g in curves[name]), flush=True)
    csv = "method," + ",".join(f"layer{i + 1}" for i in range(13)) + "\n" + \
        "".join(k + "," + ",".join(f"{g:.6g}" for g in v) + "\n" for k, v in curves.items())
    write_atomic(out / "gradnorm.csv", lambda f: f.write(csv), mode="w")
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for k, v in curves.items():
        ax.semilogy(range(1, len(v) + 1), np.maximum(v, 1e-30), "o-", label=k)  # exact zeros drawn at 1e-30
    ax.set(xlabel="critic layer (1 = input)", ylabel="||d loss / d W_layer||", title="deep critic on the swiss roll")
    ax.legend()
    fig.tight_layout()
    write_atomic(out / "gradnorm.png", lambda f: fig.savefig(f, format="png", dpi=100))
    print(f"wrote {out / 'gradnorm.csv'} and {out / 'gradnorm.png'}")
    return curves


# ----------------------------------------------------------------------------------------------
# 7. Figures, export.
# ----------------------------------------------------------------------------------------------
def mode_metrics(x, dataset):
    """Modes captured and high-quality %, the VEEGAN / PacGAN definition: a sample is high quality if it
    lies within 3 std of its nearest mode; a mode is captured if it is nearest to >= 1 such sample."""
    centres, std = toy_centres(dataset)
    dist, nearest = torch.cdist(torch.as_tensor(x, dtype=torch.float32), centres).min(1)
    good = dist < 3 * std
    return {"modes": int(nearest[good].unique().numel()), "of": len(centres), "high_quality": good.float().mean().item()}


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


@torch.no_grad()
def save_samples_figure(path, cfg, G, D, z_fixed, x_shown, device):
    from matplotlib.figure import Figure
    G.eval(), D.eval()
    x_fake = G(z_fixed.to(device)).float().cpu()
    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    if cfg.dataset in TOY_SETS:
        # the critic's value D(x) as a filled contour, real (black) and generated (orange) points, and the
        # push on each generated point: -grad_x of G's loss = grad_x D(x).
        g = torch.linspace(-3, 3, 150) if cfg.dataset != "swissroll" else torch.linspace(-2.5, 2.5, 150)
        xx, yy = torch.meshgrid(g, g, indexing="xy")
        D_grid = D(torch.stack([xx.flatten(), yy.flatten()], 1).to(device)).cpu().view(150, 150)
        cs = ax.contourf(xx.numpy(), yy.numpy(), D_grid.numpy(), levels=20, cmap="RdBu_r", alpha=0.8)
        fig.colorbar(cs, ax=ax, label="critic D(x)", fraction=0.046)
        ax.scatter(*x_shown.numpy().T, s=3, c="k", label="real")
        ax.scatter(*x_fake.numpy().T, s=3, c="orange", label="G(z)")
        with torch.enable_grad():
            xa = x_fake[:200].clone().to(device).requires_grad_(True)
            push = torch.autograd.grad(D(xa).sum(), xa)[0].cpu()
        ax.quiver(*xa.detach().cpu().numpy().T, *push.numpy().T, color="green", width=0.003, label="grad D (push on G)")
        ax.set(xlim=(g[0].item(), g[-1].item()), ylim=(g[0].item(), g[-1].item()), aspect="equal",
               title=f"{cfg.dataset}, {cfg.lipschitz}, step {path.stem[8:]}")
        ax.legend(loc="lower right", fontsize=7)
    else:
        ax.imshow(image_grid(x_fake, 8), cmap="gray" if x_fake.shape[1] == 1 else None)
        ax.set_axis_off()
        ax.set_title(f"{cfg.dataset}, {cfg.lipschitz}, step {path.stem[8:]}")
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
    G.train(), D.train()


def plot_losses(csv_path, png_path):
    from matplotlib.figure import Figure
    if not csv_path.exists():
        return
    cols = np.genfromtxt(csv_path, delimiter=",", names=True, ndmin=1)
    groups = [(["wasserstein"], "critic's W estimate"), (["loss_G", "gp"], "G loss and penalty")]
    if "high_quality" in cols.dtype.names:
        groups.append((["high_quality"], "high-quality fraction"))
    fig = Figure(figsize=(4 * len(groups), 3.5))
    for i, (names, title) in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), i + 1)
        for n in names:
            ax.plot(cols["seconds"], cols[n], label=n)
        ax.set(xlabel="seconds", title=title)
        ax.legend()
    fig.tight_layout()
    write_atomic(png_path, lambda f: fig.savefig(f, format="png", dpi=100))


def plot_w_vs_js(rows, path):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 7))
    for col, case in enumerate(["gaussians", "parallel lines"]):
        r = [x for x in rows if x["case"] == case]
        th = [x["theta"] for x in r]
        ax = fig.add_subplot(2, 2, 1 + col)
        ax.plot(th, [x["w_estimate"] for x in r], "o-", label="W estimate: E D(x) - E D(G(z)), trained critic")
        ax.plot(th, [x["w_exact"] for x in r], "k--", label="exact W = |theta|")
        ax.plot(th, [x["w_penalised_optimum"] for x in r], "c:", label="penalised optimum |theta| + theta^2 / (2 lambda)")
        ax.plot(th, [x["js_estimate"] for x in r], "s-", label="JS estimate, trained GAN discriminator")
        ax.plot(th, [x["js_exact"] for x in r], "k:", label="exact JS")
        ax.set(title=f"{case}: distance vs separation", xlabel="theta")
        ax.legend(fontsize=7)
        ax = fig.add_subplot(2, 2, 3 + col)
        ax.semilogy(th, [max(x["grad_wgan"], 1e-12) for x in r], "o-", label="WGAN: -E D(G(z))")
        ax.semilogy(th, [max(x["grad_gan_minimax"], 1e-12) for x in r], "s-", label="GAN: E log(1 - D(G(z)))")
        ax.set(title=f"{case}: |d loss_G / d theta|", xlabel="theta")
        ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))


# --- scaffolding: logging, checkpoints, files (identical in every script; skip on first read) ---
ARCH_KEYS = ("dataset", "image_size", "z_dim", "width", "lipschitz")  # must match for a checkpoint to fit


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
        if cfg.experiment == "w-vs-js":
            return w_vs_js_experiment(cfg)
        if cfg.experiment == "gradnorm":
            return gradnorm_experiment(cfg)
        G, D = train(cfg, device)
        G.eval()
        with torch.no_grad():
            z = torch.randn(cfg.num_samples, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 3))
            x = torch.cat([G(zb.to(device)).float().cpu() for zb in z.split(500)])
        x = x.numpy().astype(np.float32) if cfg.dataset in TOY_SETS else to_uint8(x)
        write_atomic(out / "samples.npz", lambda f: np.savez(f, x=x))
        if cfg.dataset in ("8gaussians", "25gaussians"):
            m = mode_metrics(x, cfg.dataset)
            write_atomic(out / "metrics.json", lambda f: f.write(json.dumps(m)), mode="w")
            print(f"modes captured {m['modes']}/{m['of']}, high-quality samples {100 * m['high_quality']:.1f}% "
                  f"(within 3 std of a mode, {len(x)} samples)")
        print(f"figures, samples.npz and checkpoint.pt are in {out}/")
        return G, D
    except UserError as e:
        print(f"wgan_gp.py: error: {e}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
