"""gan.py - the original GAN (Goodfellow et al., 2014) in one file.

A generator G turns noise z ~ N(0, I) into samples; a discriminator D is a binary classifier that
tells real samples from generated ones. They play the minimax game

    min_G max_D V(D, G) = E_{x~P_data}[log D(x)] + E_{z~p(z)}[log(1 - D(G(z)))].

For the optimal D*(x) = p_data(x) / (p_data(x) + p_G(x)) the value is V(D*, G) = 2 JS(P_data || P_G)
- 2 log 2, so training G minimises the Jensen-Shannon divergence - and when the two supports do not
overlap JS is stuck at log 2 and G gets no gradient. `--experiment js` makes that visible.

Run it:
    python gan.py                                  # 8 Gaussians in 2-D, about a minute on a CPU
    python gan.py --dataset 25gaussians            # harder toy set: watch for dropped modes
    python gan.py --dataset fashion-mnist          # DCGAN-style images (about 12 min on 2 CPU cores)
    python gan.py --dataset mnist | cifar10 | path/to/images
    python gan.py --experiment js                  # JS saturates at log 2, the gradient vanishes
    python gan.py --g-loss minimax --d-steps 5     # the paper's loss, k = 5 D steps per G step

Lecture notes followed: generator as a distribution; the GAN algorithm (fix G train D, fix D train
G; D is not re-initialised); V(D, G) as binary cross entropy; D* = p_data / (p_data + p_G) and
max_D V = 2 JS - 2 log 2; why JS fails (supports on low-dimensional manifolds, log 2 always);
the non-saturating generator loss used in practice; mode collapse / mode dropping.

Deliberate deviations from the paper: D outputs a logit and every log D is computed from it with
softplus (numerically stable, mathematically identical); the generator loss defaults to the
non-saturating -log D(G(z)), which the paper itself recommends in practice; images use a DCGAN-style
architecture (Radford et al., 2016) with Adam, not the paper's maxout MLP with SGD + momentum;
minibatches are drawn with replacement (no epochs) so a resumed run replays the same batches.
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

SCRIPT = "gan"
TOY_SETS = ("8gaussians", "25gaussians", "swissroll")
IMAGE_SETS = ("mnist", "fashion-mnist", "cifar10")


# ----------------------------------------------------------------------------------------------
# 1. Configuration: every option, its default and what it does (`python gan.py --help`).
# ----------------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(
        prog="gan.py", description="The original GAN (Goodfellow et al. 2014) on toy 2-D sets or images.",
        epilog="Examples: python gan.py | python gan.py --dataset fashion-mnist | python gan.py --experiment js")
    a = p.add_argument
    a("--dataset", default="8gaussians", help="8gaussians, 25gaussians, swissroll, mnist, fashion-mnist, "
      "cifar10, or a folder of png/jpg images (default: %(default)s)")
    a("--data-dir", default="./data", help="where datasets live / are downloaded (default: %(default)s)")
    a("--out", default=None, help="run folder (default: runs/gan-<dataset>, or runs/gan-js for --experiment js)")
    a("--experiment", default="train", choices=["train", "js"], help="train: train a GAN; js: sweep the "
      "separation of two distributions and measure the JS estimate and G's gradient (default: %(default)s)")
    a("--steps", type=int, default=4000, help="generator updates (default: %(default)s; about a minute for "
      "2-D sets, about 12 minutes for 28 px images on 2 CPU cores)")
    a("--batch-size", type=int, default=None, help="minibatch size m (default: 256 for 2-D sets, 64 for images "
      "as in common DCGAN setups)")
    a("--lr", type=float, default=2e-4, help="Adam learning rate for G and D, DCGAN paper (default: %(default)s)")
    a("--beta1", type=float, default=0.5, help="Adam beta1; 0.5 as in DCGAN steadies GAN training (default: %(default)s)")
    a("--g-loss", default="nonsaturating", choices=["nonsaturating", "minimax"], help="generator loss: "
      "-log D(G(z)) (non-saturating) or log(1 - D(G(z))) (the minimax game itself) (default: %(default)s)")
    a("--d-steps", type=int, default=1, help="k, discriminator updates per generator update (Algorithm 1; "
      "the paper used k = 1) (default: %(default)s)")
    a("--z-dim", type=int, default=None, help="noise dimension (default: 2 for 2-D sets, 100 for images)")
    a("--width", type=int, default=None, help="hidden units of the MLPs (2-D) or base channels of the "
      "DCGAN (images) (default: 256 for 2-D sets, 64 for images)")
    a("--image-size", type=int, default=None, help="28, 32 or 64 pixels (default: 28 for (fashion-)mnist, "
      "32 for cifar10, 64 for a folder)")
    a("--seed", type=int, default=0, help="random seed; the same seed on CPU gives the same numbers (default: %(default)s)")
    a("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto picks cuda > mps > cpu (default: %(default)s)")
    a("--log-every", type=int, default=100, help="progress line and log.csv row cadence (default: %(default)s)")
    a("--sample-every", type=int, default=1000, help="sample figure + checkpoint cadence (default: %(default)s)")
    a("--num-samples", type=int, default=None, help="samples exported to samples.npz at the end "
      "(default: 2500 points for 2-D sets, 1000 images)")
    a("--js-steps", type=int, default=1000, help="--experiment js: discriminator updates at each separation "
      "(default: %(default)s)")
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
    cfg.out = cfg.out or f"runs/{SCRIPT}-{'js' if cfg.experiment == 'js' else name}"
    cfg.batch_size = cfg.batch_size if cfg.batch_size is not None else (256 if toy else 64)
    cfg.z_dim = cfg.z_dim if cfg.z_dim is not None else (2 if toy else 100)
    cfg.width = cfg.width if cfg.width is not None else (256 if toy else 64)
    cfg.num_samples = cfg.num_samples if cfg.num_samples is not None else (2500 if toy else 1000)
    if cfg.image_size is None and not toy:
        cfg.image_size = {"mnist": 28, "fashion-mnist": 28, "cifar10": 32}.get(cfg.dataset, 64)
    if not toy and cfg.image_size not in (28, 32, 64):
        raise UserError(f"--image-size {cfg.image_size} is not supported: the DCGAN here takes 28, 32 or 64 pixels")
    for flag in ("steps", "batch_size", "d_steps", "z_dim", "width", "log_every", "sample_every", "num_samples"):
        if getattr(cfg, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(cfg, flag)}")
    return cfg


# ----------------------------------------------------------------------------------------------
# 2. Data. Toy 2-D samplers follow the WGAN-GP reference construction (CONVENTIONS §5).
#    Images come back as float tensors in [-1, 1], N x C x H x W, plus integer labels.
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
# 3. Models. D returns a logit l; D(x) = sigmoid(l) is the probability that x is real.
# ----------------------------------------------------------------------------------------------
def mlp(n_in, width, n_out):
    return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(), nn.Linear(width, n_out))


def dcgan_pair(z_dim, channels, size, width):
    """DCGAN-style G and D for 28, 32 or 64 px: strided (transposed) convolutions doubling/halving the
    resolution, BatchNorm, ReLU in G, LeakyReLU(0.2) in D, tanh output, no pooling (Radford et al.)."""
    n_up = 3 if size == 64 else 2
    s0 = size // 2 ** n_up                                   # 28 -> 7, 32 -> 8, 64 -> 8
    ch = [width * 2 ** (n_up - 1 - i) for i in range(n_up)]  # e.g. [128, 64]: channels shrink as G grows
    G = [nn.Linear(z_dim, ch[0] * s0 * s0, bias=False), nn.BatchNorm1d(ch[0] * s0 * s0), nn.ReLU(),
         nn.Unflatten(1, (ch[0], s0, s0))]
    for i in range(n_up - 1):
        G += [nn.ConvTranspose2d(ch[i], ch[i + 1], 4, 2, 1, bias=False), nn.BatchNorm2d(ch[i + 1]), nn.ReLU()]
    G += [nn.ConvTranspose2d(ch[-1], channels, 4, 2, 1), nn.Tanh()]
    D = [nn.Conv2d(channels, ch[-1], 4, 2, 1), nn.LeakyReLU(0.2)]  # no BatchNorm on D's input layer
    for i in reversed(range(n_up - 1)):
        D += [nn.Conv2d(ch[i + 1], ch[i], 4, 2, 1, bias=False), nn.BatchNorm2d(ch[i]), nn.LeakyReLU(0.2)]
    D += [nn.Flatten(), nn.Linear(ch[0] * s0 * s0, 1)]
    G, D = nn.Sequential(*G), nn.Sequential(*D)
    for m in list(G.modules()) + list(D.modules()):  # DCGAN init: weights ~ N(0, 0.02), BN scale ~ N(1, 0.02)
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02), nn.init.zeros_(m.bias)
    return G, D


def build_models(cfg, channels):
    if cfg.dataset in TOY_SETS:
        return mlp(cfg.z_dim, cfg.width, 2), mlp(2, cfg.width, 1)
    return dcgan_pair(cfg.z_dim, channels, cfg.image_size, cfg.width)


# ----------------------------------------------------------------------------------------------
# 4. The concept. D_real / D_fake below are D's LOGITS on real and generated samples; with
#    D(x) = sigmoid(l):  log D(x) = log sigmoid(l) = -softplus(-l),  log(1 - D(x)) = -softplus(l).
#    softplus never overflows or takes log(0), unlike sigmoid-then-log.
# ----------------------------------------------------------------------------------------------
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


def generator_loss_nonsaturating(D_fake):
    # G minimises -E_z[log D(G(z))]: the same fixed point (D(G(z)) -> 1/2), but the gradient
    # d/dl -log sigmoid(l) = -(1 - sigmoid(l)) ~ -1 is largest exactly when D rejects the fakes.
    return F.softplus(-D_fake).mean()


GENERATOR_LOSSES = {"minimax": generator_loss_minimax, "nonsaturating": generator_loss_nonsaturating}


def js_estimate(V):
    # max_D V(D, G) = 2 JS(P_data || P_G) - 2 log 2   =>   JS ~ (V + 2 log 2) / 2 for a near-optimal D
    return (V + 2 * math.log(2)) / 2


def optimal_discriminator(p_data, p_g):
    # D*(x) = p_data(x) / (p_data(x) + p_G(x)): what D converges to with unlimited capacity
    return p_data / (p_data + p_g)


# ----------------------------------------------------------------------------------------------
# 5. Training: Algorithm 1 of the paper, minibatch SGD (here Adam) on the minimax game.
# ----------------------------------------------------------------------------------------------
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
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    g_loss_fn = GENERATOR_LOSSES[cfg.g_loss]
    print(f"G: {sum(p.numel() for p in G.parameters()):,} parameters, D: {sum(p.numel() for p in D.parameters()):,}")

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
    # Fixed noise (its own generator, so figures compare across steps and resuming changes nothing).
    z_fixed = torch.randn(64 if not toy else 1000, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))
    x_shown = sample_toy(cfg.dataset, 1000, torch.Generator().manual_seed(cfg.seed + 2)) if toy else None
    t0, t_last, log_rows = time.time() - elapsed, time.time(), []
    for step in range(start + 1, cfg.steps + 1):
        # 1. For k steps: sample m noise vectors z ~ p(z) and m examples x ~ P_data, and update D by
        #    ascending its stochastic gradient of V(D, G) (here: descending -V). G is held fixed.
        for _ in range(cfg.d_steps):
            x_real = real_batch(cfg.batch_size)
            with torch.no_grad():
                x_fake = G(torch.randn(cfg.batch_size, cfg.z_dim, device=device))
            D_real, D_fake = D(x_real), D(x_fake)
            loss_D = discriminator_loss(D_real, D_fake)
            opt_D.zero_grad(set_to_none=True)
            loss_D.backward()
            opt_D.step()
        # 2. Sample m noise vectors and update G by descending the generator loss. D is held fixed
        #    (only opt_G steps), and D is NOT re-initialised: it carries over to the next round.
        D_fake_G = D(G(torch.randn(cfg.batch_size, cfg.z_dim, device=device)))
        loss_G = g_loss_fn(D_fake_G)
        opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        opt_G.step()

        if not (torch.isfinite(loss_D) and torch.isfinite(loss_G)):
            raise UserError(f"a loss became NaN/inf at step {step}; the last good checkpoint is kept in "
                            f"{out / 'checkpoint.pt'}; try a lower --lr (now {cfg.lr})")
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.time()
            rate = (step - (log_rows[-1]["step"] if log_rows else start)) / max(now - t_last, 1e-9)
            t_last = now
            row = {"step": step, "loss_D": loss_D.item(), "loss_G": loss_G.item(),
                   "D_x": torch.sigmoid(D_real).mean().item(), "D_G_z": torch.sigmoid(D_fake).mean().item(),
                   "js_estimate": js_estimate(-loss_D.item()), "seconds": now - t0}
            log_rows.append(row)
            append_log(out / "log.csv", row)
            print(f"step {step}/{cfg.steps}  loss_D {row['loss_D']:.3f}  loss_G {row['loss_G']:.3f}  "
                  f"D(x) {row['D_x']:.2f}  D(G(z)) {row['D_G_z']:.2f}  {rate:.1f} steps/s  "
                  f"left {fmt_time((cfg.steps - step) / max(rate, 1e-9))}", flush=True)
        if step % cfg.sample_every == 0 or step == cfg.steps:
            save_samples_figure(out / f"samples_{step}.png", cfg, G, D, z_fixed, x_shown, device)
            save_checkpoint(out / "checkpoint.pt", cfg, parts, step, time.time() - t0)
    plot_losses(out / "log.csv", out / "losses.png")
    return G, D


# ----------------------------------------------------------------------------------------------
# 6. The JS experiment: a near-optimal D at each separation theta of two distributions.
# ----------------------------------------------------------------------------------------------
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


def js_experiment(cfg):
    """P_data fixed, P_G = P_data shifted by theta along the first axis: (a) N(0, I) vs N((theta, 0), I);
    (b) the WGAN paper's parallel lines, (0, U[0,1]) vs (theta, U[0,1]), where JS = log 2 for theta != 0."""
    out, rows = Path(cfg.out), []
    cases = {"gaussians": (lambda n: torch.randn(n, 2), [0, 0.5, 1, 1.5, 2, 3, 4, 5, 6, 8]),
             "parallel lines": (lambda n: torch.stack([torch.zeros(n), torch.rand(n)], 1),
                                [0, 0.05, 0.1, 0.25, 0.5, 1, 2, 4])}
    for case, (sample_base, thetas) in cases.items():
        for theta in thetas:
            shift = torch.tensor([float(theta), 0.0])
            D = train_discriminator(sample_base, lambda n: sample_base(n) + shift, cfg.js_steps, seed=cfg.seed)
            torch.manual_seed(cfg.seed + 1)
            x_real, x_base = sample_base(20000), sample_base(20000)
            # G here is x = base + (theta, 0): differentiate G's loss w.r.t. its one parameter, theta.
            th = torch.tensor(float(theta), requires_grad=True)
            x_fake = x_base + torch.stack([th, torch.tensor(0.0)])
            D_real, D_fake = D(x_real), D(x_fake)
            V = value_function(D_real, D_fake)
            grad_mm, = torch.autograd.grad(generator_loss_minimax(D_fake), th, retain_graph=True)
            grad_ns, = torch.autograd.grad(generator_loss_nonsaturating(D_fake), th)
            exact = js_exact_gaussians(theta) if case == "gaussians" else (math.log(2) if theta else 0.0)
            rows.append({"case": case, "theta": theta, "V": V.item(), "js_estimate": js_estimate(V.item()),
                         "js_exact": exact, "grad_minimax": abs(grad_mm.item()), "grad_nonsaturating": abs(grad_ns.item())})
            r = rows[-1]
            print(f"{case:15s} theta {theta:5.2f}  JS estimate {r['js_estimate']:.4f}  exact {exact:.4f}  "
                  f"|dL/dtheta| minimax {r['grad_minimax']:.2e}  non-saturating {r['grad_nonsaturating']:.2e}", flush=True)
    csv = ",".join(rows[0]) + "\n" + "".join(",".join(str(v) for v in r.values()) + "\n" for r in rows)
    write_atomic(out / "js.csv", lambda f: f.write(csv), mode="w")
    plot_js(rows, out / "js.png")
    print(f"wrote {out / 'js.csv'} and {out / 'js.png'}")
    return rows


# ----------------------------------------------------------------------------------------------
# 7. Evaluation, figures, export.
# ----------------------------------------------------------------------------------------------
def mode_metrics(x, dataset):
    """Modes captured and high-quality %, the VEEGAN / PacGAN definition: a sample is high quality if it
    lies within 3 std of its nearest mode; a mode is captured if it is nearest to >= 1 such sample."""
    centres, std = toy_centres(dataset)
    dist, nearest = torch.cdist(torch.as_tensor(x, dtype=torch.float32), centres).min(1)
    good = dist < 3 * std
    return {"modes": int(nearest[good].unique().numel()), "of": len(centres), "high_quality": good.float().mean().item()}


@torch.no_grad()
def save_samples_figure(path, cfg, G, D, z_fixed, x_shown, device):
    from matplotlib.figure import Figure
    G.eval(), D.eval()
    x_fake = G(z_fixed.to(device)).float().cpu()
    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    if cfg.dataset in TOY_SETS:
        # D(x) as a filled contour over the plane, real (black) and generated (orange) points, and the
        # direction each generated point is pushed: -grad_x of G's loss (computed with autograd below).
        g = torch.linspace(-3, 3, 150) if cfg.dataset != "swissroll" else torch.linspace(-2.5, 2.5, 150)
        xx, yy = torch.meshgrid(g, g, indexing="xy")
        D_grid = torch.sigmoid(D(torch.stack([xx.flatten(), yy.flatten()], 1).to(device))).cpu().view(150, 150)
        cs = ax.contourf(xx.numpy(), yy.numpy(), D_grid.numpy(), levels=20, cmap="RdBu_r", vmin=0, vmax=1, alpha=0.8)
        fig.colorbar(cs, ax=ax, label="D(x)", fraction=0.046)
        ax.scatter(*x_shown.numpy().T, s=3, c="k", label="real")
        ax.scatter(*x_fake.numpy().T, s=3, c="orange", label="G(z)")
        with torch.enable_grad():
            xa = x_fake[:200].clone().to(device).requires_grad_(True)
            push = -torch.autograd.grad(GENERATOR_LOSSES[cfg.g_loss](D(xa)) * len(xa), xa)[0].cpu()
        ax.quiver(*xa.detach().cpu().numpy().T, *push.numpy().T, color="green", width=0.003, label="-grad loss_G")
        ax.set(xlim=(g[0].item(), g[-1].item()), ylim=(g[0].item(), g[-1].item()), aspect="equal", title=f"{cfg.dataset}, step {path.stem[8:]}")
        ax.legend(loc="lower right", fontsize=7)
    else:
        ax.imshow(image_grid(x_fake, 8), cmap="gray" if x_fake.shape[1] == 1 else None)
        ax.set_axis_off()
        ax.set_title(f"{cfg.dataset}, step {path.stem[8:]}")
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


def plot_js(rows, path):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 7))
    for col, case in enumerate(["gaussians", "parallel lines"]):
        r = [x for x in rows if x["case"] == case]
        th = [x["theta"] for x in r]
        ax = fig.add_subplot(2, 2, 1 + col)
        ax.plot(th, [x["js_estimate"] for x in r], "o-", label="(max_D V + 2 log 2) / 2, trained D")
        ax.plot(th, [x["js_exact"] for x in r], "k--", label="exact JS")
        ax.axhline(math.log(2), color="gray", lw=0.8)
        ax.text(th[-1], math.log(2), "log 2", va="bottom", ha="right", color="gray")
        ax.set(title=f"{case}: JS divergence", xlabel="theta (separation)", ylim=(-0.03, 0.75))
        ax.legend(fontsize=8)
        ax = fig.add_subplot(2, 2, 3 + col)
        ax.semilogy(th, [max(x["grad_minimax"], 1e-12) for x in r], "o-", label="minimax: log(1 - D(G(z)))")
        ax.semilogy(th, [max(x["grad_nonsaturating"], 1e-12) for x in r], "s-", label="non-saturating: -log D(G(z))")
        ax.set(title=f"{case}: |d loss_G / d theta| with a trained D", xlabel="theta (separation)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))


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


def plot_losses(csv_path, png_path):
    from matplotlib.figure import Figure
    if not csv_path.exists():
        return
    cols = np.genfromtxt(csv_path, delimiter=",", names=True, ndmin=1)
    fig = Figure(figsize=(10, 3.5))
    groups = [(["loss_D", "loss_G"], "loss"), (["D_x", "D_G_z"], "mean D output"), (["js_estimate"], "JS estimate")]
    for i, (names, title) in enumerate(groups):
        ax = fig.add_subplot(1, 3, i + 1)
        for n in names:
            ax.plot(cols["step"], cols[n], label={"D_x": "D(x)", "D_G_z": "D(G(z))"}.get(n, n))
        ax.set(xlabel="step", title=title)
        ax.legend()
    fig.tight_layout()
    write_atomic(png_path, lambda f: fig.savefig(f, format="png", dpi=100))


ARCH_KEYS = ("dataset", "image_size", "z_dim", "width")  # must match for a checkpoint to fit


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
        if cfg.experiment == "js":
            return js_experiment(cfg)
        G, D = train(cfg, device)
        # Export: samples from their own generator, so exporting changes no training state.
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
        print(f"gan.py: error: {e}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
