"""ddpm.py - denoising diffusion probabilistic models (Ho et al., 2020), forwards and backwards.

A fixed forward process q adds a little Gaussian noise at each of T steps until nothing of the data
is left; a learned reverse process p_theta removes it again, one step at a time. The network does
not predict images: it predicts the NOISE eps that was added (a "noise predictor" eps_theta(x_t, t)),
trained with the simple loss

    L_simple = E_{t, x_0, eps} || eps - eps_theta( sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t ) ||^2

and sampling runs the chain backwards from x_T ~ N(0, I) with the formula
    x_{t-1} = 1/sqrt(alpha_t) * ( x_t - beta_t / sqrt(1 - alpha_bar_t) * eps_theta(x_t, t) ) + sigma_t z.

TIMESTEP CONVENTION (used everywhere in this file): t = 1, ..., T as in the paper; t = 0 is clean data.
Every schedule table has T + 1 entries indexed by t, with beta_0 = 0 and alpha_bar_0 = 1.

Run it:
    python ddpm.py                                     # 25 Gaussians in 2-D, both processes drawn (~4 min CPU)
    python ddpm.py --dataset mnist                     # a small U-Net on digits
    python ddpm.py --dataset fashion-mnist             # about 20-30 min of training on 2 CPU cores
    python ddpm.py --dataset fashion-mnist --cond --guidance 2       # classifier-free guidance
    python ddpm.py --dataset fashion-mnist --resume --sampler ddim --sample-steps 50   # fast sampling
    python ddpm.py --dataset cifar10 --eval-nll        # the variational bound in bits/dim

Lecture notes followed: diffusion process q (fixed, not trained) and reverse process p_theta, both
Markov chains; beta_t growing from small to large; x_t from x_0 in closed form (the forward process
in one step); the noise predictor (note 000's "denoise module" is one reverse step built around it)
and L_simple (predict the noise, L2 loss); the sampling formula; the reverse-process decoder L_0
that gives every integer pixel value a discrete probability; the U-Net noise predictor. Note: eps
here is the TOTAL noise between x_0 and x_t (x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps),
not the one step's Noise^(k) of note 000's picture; in code `eps` is that noise and the network's
guess of it is eps_theta, returned by `model`.

Deliberate deviations from the paper: the U-Net is smaller (one residual block per resolution, width
a flag) so a CPU can train it; periodic sample figures during training use DDIM (Song et al., 2021)
with 50 steps to save time (the final samples use --sampler); at t = 1 the likelihood's decoder uses
variance beta_tilde_2 because beta_tilde_1 = 0 (as the DDPM reference code does); minibatches are
drawn with replacement (no epochs) so a resumed run replays the same batches. Training: Adam at
5e-4 for images and 1e-3 for 2-D sets (the paper: 2e-4) after a 200-step linear warm-up, decayed
linearly to 0 by default (the paper keeps it constant), EMA decay 0.999 (the paper: 0.9999 over
800k steps), batch 64 for images and 1024 for 2-D sets (the paper: 128). Sampling images clips the
predicted x_0 to [-1, 1] before the posterior mean (--clip-x0 on, the reference code's default):
that step is the posterior form of the formula above, not the formula itself; --clip-x0 off
samples by the formula as written. --eval-nll bounds the unclipped p_theta.
"""
import argparse
import copy
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

SCRIPT = "ddpm"
TOY_SETS = ("8gaussians", "25gaussians", "swissroll")
IMAGE_SETS = ("mnist", "fashion-mnist", "cifar10")


# ----------------------------------------------------------------------------------------------
# 1. Configuration: every option, its default and what it does (`python ddpm.py --help`).
# ----------------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(
        prog="ddpm.py", description="Denoising diffusion (DDPM, Ho et al. 2020) with DDIM sampling, "
        "classifier-free guidance and the variational bound in bits/dim, on toy 2-D sets or images.",
        epilog="Examples: python ddpm.py | python ddpm.py --dataset mnist | python ddpm.py --dataset "
        "fashion-mnist --resume --sampler ddim --sample-steps 50 --eta 0")
    a = p.add_argument
    a("--dataset", default="25gaussians", help="8gaussians, 25gaussians, swissroll, mnist, fashion-mnist, "
      "cifar10, or a folder of png/jpg images (sub-folders are classes for --cond) (default: %(default)s)")
    a("--data-dir", default="./data", help="where datasets live / are downloaded (default: %(default)s)")
    a("--out", default=None, help="run folder (default: runs/ddpm-<dataset>[-cond])")
    a("--steps", type=int, default=None, help="training iterations (default: 10000 for 2-D sets, about 4 "
      "minutes on 2 CPU cores with sampling; 3000 for images, about 20-30 minutes for 28 px on 2 CPU cores - "
      "on a GPU use far more, the paper trained for 800k)")
    a("--batch-size", type=int, default=None, help="minibatch size (default: 1024 for 2-D sets: a less noisy gradient "
      "makes the 2-D modes sharper; 64 for images)")
    a("--lr", type=float, default=None, help="Adam learning rate, after a 200-step linear warm-up (default: 1e-3 "
      "for 2-D sets; 5e-4 for images, above the paper's 2e-4 because a CPU run is short)")
    a("--lr-decay", default="linear", choices=["none", "linear"], help="learning rate after the warm-up: constant "
      "(the paper) or decayed linearly to 0 at the last step, which sharpens a short run's fit (default: %(default)s)")
    a("--schedule", default="linear", choices=["linear", "cosine"], help="beta schedule: linear 1e-4 -> 0.02 "
      "(the paper) or cosine (Nichol & Dhariwal 2021, beta capped at 0.999) (default: %(default)s)")
    a("--timesteps", type=int, default=1000, help="T, the number of diffusion steps; the linear schedule's "
      "betas are scaled by 1000/T so that x_T stays ~N(0, I) (default: %(default)s, the paper's)")
    a("--width", type=int, default=None, help="hidden units of the 2-D MLP, or base channels of the U-Net "
      "(default: 128 for 2-D sets; 24 for images so 2 CPU cores train it in minutes - the paper used 128)")
    a("--attn", default="on", choices=["on", "off"], help="self-attention at the U-Net's lowest resolution "
      "(default: %(default)s)")
    a("--dropout", type=float, default=0.1, help="dropout in the U-Net's residual blocks, as in the paper's "
      "CIFAR-10 model (default: %(default)s)")
    a("--ema-decay", type=float, default=0.999, help="decay of the exponential moving average of the weights "
      "used for sampling; the paper used 0.9999 over 800k steps (default: %(default)s)")
    a("--grad-clip", type=float, default=1.0, help="clip the gradient's global norm to this, as in the paper (default: %(default)s)")
    a("--sampler", default="ancestral", choices=["ancestral", "ddim"], help="final samples: ancestral "
      "(Algorithm 2, T steps) or ddim (--sample-steps steps) (default: %(default)s)")
    a("--sample-steps", type=int, default=50, help="ddim: number of steps on a strided subsequence of 1..T (default: %(default)s)")
    a("--eta", type=float, default=0.0, help="ddim: 0 is deterministic DDIM, 1 adds DDPM-like noise (default: %(default)s)")
    a("--sigma", default=None, choices=["beta", "beta_tilde"], help="ancestral: the reverse variance "
      "sigma_t^2, beta_t (best when x_0 ~ N(0, I)) or beta_tilde_t (best for a single point x_0); the paper "
      "found both give similar images (default: beta for images; beta_tilde for 2-D sets, whose tight modes "
      "are nearly single points: measured 75 %% vs 67 %% high-quality samples with the same model)")
    a("--clip-x0", default=None, choices=["on", "off"], help="clip the predicted x_0 to [-1, 1] before "
      "taking the posterior mean: images live there, and early predictions can be far outside "
      "(default: on for images, off for 2-D sets)")
    a("--cond", action="store_true", help="class-conditional training with classifier-free guidance "
      "(labels: the class for images, the mode for 2-D mixtures)")
    a("--p-uncond", type=float, default=0.1, help="--cond: probability that a training label is replaced by "
      "the 'no label' token (default: %(default)s)")
    a("--guidance", type=float, default=1.0, help="--cond: guidance weight w in eps = (1 + w) eps(x, y) - w "
      "eps(x); 0 is the plain conditional model (default: %(default)s)")
    a("--eval-nll", action="store_true", help="images: after training, the variational bound on the test "
      "set's negative log-likelihood in bits/dim (T network evaluations per image)")
    a("--nll-images", type=int, default=100, help="--eval-nll: test images to average over (default: %(default)s)")
    a("--amp", action="store_true", help="bfloat16 autocast for the network (CPU and CUDA)")
    a("--compile", action="store_true", help="torch.compile the network for training")
    a("--image-size", type=int, default=None, help="28, 32 or 64 pixels (default: 28 for (fashion-)mnist, "
      "32 for cifar10, 64 for a folder)")
    a("--seed", type=int, default=0, help="random seed; the same seed on CPU gives the same numbers (default: %(default)s)")
    a("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto picks cuda > mps > cpu (default: %(default)s)")
    a("--log-every", type=int, default=None, help="progress line and log.csv row cadence (default: 500 for "
      "2-D sets, 100 for images)")
    a("--sample-every", type=int, default=None, help="sample figure + checkpoint cadence (default: 5000 for "
      "2-D sets, 1000 for images)")
    a("--num-samples", type=int, default=None, help="samples exported to samples.npz at the end "
      "(default: 2500 points for 2-D sets, 1000 images)")
    a("--resume", action="store_true", help="continue from <out>/checkpoint.pt (a finished run only samples again)")
    a("--overwrite", action="store_true", help="start afresh even if <out> already holds a run")
    p.set_defaults(experiment="train")  # no side experiments here; the shared prepare_out reads this field
    return p


def finish_config(cfg):
    """Fill the dataset-dependent defaults (stated in --help) and validate."""
    toy = cfg.dataset in TOY_SETS
    if not toy and cfg.dataset not in IMAGE_SETS and not Path(cfg.dataset).is_dir():
        raise UserError(f"unknown dataset '{cfg.dataset}': choose one of {', '.join(TOY_SETS + IMAGE_SETS)}, "
                        "or give the path of a folder of images")
    if cfg.cond and cfg.dataset == "swissroll":
        raise UserError("--cond needs labels, and swissroll has none: use 8gaussians or 25gaussians (label = mode)")
    if cfg.eval_nll and toy:
        raise UserError("--eval-nll measures bits per pixel value, so it needs image data (e.g. --dataset mnist)")
    name = cfg.dataset if (toy or cfg.dataset in IMAGE_SETS) else Path(cfg.dataset).resolve().name
    cfg.out = cfg.out or f"runs/{SCRIPT}-{name}{'-cond' if cfg.cond else ''}"
    cfg.steps = cfg.steps if cfg.steps is not None else (10000 if toy else 3000)
    cfg.batch_size = cfg.batch_size if cfg.batch_size is not None else (1024 if toy else 64)
    cfg.lr = cfg.lr if cfg.lr is not None else (1e-3 if toy else 5e-4)
    cfg.width = cfg.width if cfg.width is not None else (128 if toy else 24)
    cfg.sigma = cfg.sigma if cfg.sigma is not None else ("beta_tilde" if toy else "beta")
    cfg.clip_x0 = cfg.clip_x0 if cfg.clip_x0 is not None else ("off" if toy else "on")
    cfg.log_every = cfg.log_every if cfg.log_every is not None else (500 if toy else 100)
    cfg.sample_every = cfg.sample_every if cfg.sample_every is not None else (5000 if toy else 1000)
    cfg.num_samples = cfg.num_samples if cfg.num_samples is not None else (2500 if toy else 1000)
    if cfg.image_size is None and not toy:
        cfg.image_size = {"mnist": 28, "fashion-mnist": 28, "cifar10": 32}.get(cfg.dataset, 64)
    if not toy and cfg.image_size not in (28, 32, 64):
        raise UserError(f"--image-size {cfg.image_size} is not supported: the U-Net here takes 28, 32 or 64 pixels")
    for flag in ("steps", "batch_size", "timesteps", "width", "sample_steps", "log_every", "sample_every",
                 "num_samples", "nll_images"):
        if getattr(cfg, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(cfg, flag)}")
    if cfg.timesteps < 2 or cfg.sample_steps > cfg.timesteps:
        raise UserError(f"need 2 <= --timesteps and --sample-steps <= --timesteps (got {cfg.timesteps}, {cfg.sample_steps})")
    if not (0 <= cfg.ema_decay < 1 and 0 <= cfg.p_uncond < 1 and 0 <= cfg.dropout < 1 and cfg.eta >= 0
            and cfg.guidance >= 0 and cfg.lr > 0 and cfg.grad_clip > 0):
        raise UserError("need 0 <= --ema-decay, --p-uncond, --dropout < 1, and --eta, --guidance >= 0, "
                        "--lr, --grad-clip > 0")
    return cfg


# ----------------------------------------------------------------------------------------------
# 2. Data. Toy 2-D samplers follow the WGAN-GP reference construction (CONVENTIONS §5).
#    Images come back as float tensors in [-1, 1], N x C x H x W, plus integer labels.
#    Diffusion needs data in [-1, 1]: x_T ~ N(0, I) must be on the same scale as the data.
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


def toy_labels(x, name):
    """For --cond on a mixture: the label of a point is its nearest mode (modes lie >= 56 std apart)."""
    return torch.cdist(x, toy_centres(name)[0]).argmin(1)


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
# 3. The forward process q and everything derived from the beta schedule, computed ONCE in float64.
# ----------------------------------------------------------------------------------------------
def beta_schedule(name, T):
    """beta_1..beta_T (with beta_0 = 0 prepended, so index = t)."""
    if name == "linear":  # the paper: linear from 1e-4 to 0.02 over T = 1000 steps; for other T both
        # ends scaled by 1000 / T (Nichol & Dhariwal), so alpha_bar_T stays ~0 and x_T ~ N(0, I)
        scale = 1000 / T
        beta = torch.linspace(1e-4 * scale, 0.02 * scale, T, dtype=torch.float64).clamp(max=0.999)
    else:  # cosine: alpha_bar(t) = f(t) / f(0), f(t) = cos^2( (t/T + s) / (1 + s) * pi/2 ), s = 0.008
        f = lambda t: torch.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
        t = torch.arange(T + 1, dtype=torch.float64)
        alpha_bar = f(t) / f(torch.zeros((), dtype=torch.float64))
        # beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, capped at 0.999 (the end of the cosine has alpha_bar -> 0)
        beta = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    return torch.cat([torch.zeros(1, dtype=torch.float64), beta])


class Diffusion:
    """The fixed schedule tables, each of length T + 1 and indexed by t (t = 0: clean data)."""

    def __init__(self, schedule, T):
        self.T = T
        self.beta = beta_schedule(schedule, T)
        # alpha_t = 1 - beta_t,  alpha_bar_t = prod_{s=1}^t alpha_s  (alpha_bar_0 = 1)
        self.alpha = 1 - self.beta
        self.alpha_bar = torch.cumprod(self.alpha, 0)
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])  # alpha_bar_{t-1}
        # posterior q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde_t I), for t >= 1:
        #   beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t
        #   mu_tilde = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
        one_minus = (1 - self.alpha_bar).clamp(min=1e-20)  # only t = 0 is 0; the t = 0 entries are unused
        self.beta_tilde = (1 - self.alpha_bar_prev) / one_minus * self.beta
        self.coef_x0 = self.alpha_bar_prev.sqrt() * self.beta / one_minus
        self.coef_xt = self.alpha.sqrt() * (1 - self.alpha_bar_prev) / one_minus
        self.beta_tilde[0] = self.coef_x0[0] = self.coef_xt[0] = 0.0

    def reverse_variance(self, kind):
        """sigma_t^2 of p_theta(x_{t-1} | x_t): beta_t or beta_tilde_t. At t = 1 both use beta_tilde_2: no
        noise is added at t = 1, so sigma_1 only matters to the likelihood's decoder, and beta_tilde_1 = 0."""
        var = (self.beta if kind == "beta" else self.beta_tilde).clone()
        var[1] = self.beta_tilde[2]
        return var


def at(table, t, x):
    """table[t] for a batch of timesteps, shaped to broadcast against x (N x 1 x 1 x 1 for images)."""
    return table.to(x.device)[t].to(x.dtype).view(-1, *[1] * (x.dim() - 1))


def q_sample(d, x0, t, eps):
    # x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,  eps ~ N(0, I): q(x_t | x_0) in one step
    return at(d.alpha_bar.sqrt(), t, x0) * x0 + at((1 - d.alpha_bar).sqrt(), t, x0) * eps


def q_step(d, x_prev, t, eps):
    # one step of the chain: x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps  (used for tests and figures)
    return at(d.alpha.sqrt(), t, x_prev) * x_prev + at(d.beta.sqrt(), t, x_prev) * eps


def q_posterior(d, x0, x_t, t):
    # q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, beta_tilde_t I)
    return at(d.coef_x0, t, x_t) * x0 + at(d.coef_xt, t, x_t) * x_t, at(d.beta_tilde, t, x_t)


def predict_x0(d, x_t, t, eps):
    # invert q_sample: x_0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_bar_t)
    return (x_t - at((1 - d.alpha_bar).sqrt(), t, x_t) * eps) / at(d.alpha_bar.sqrt(), t, x_t)


# ----------------------------------------------------------------------------------------------
# 4. The noise predictor eps_theta(x_t, t [, y]): an MLP for 2-D points, a small U-Net for images.
#    Both add a sinusoidal embedding of t in EVERY block: a network that ignored t would have to
#    predict the same noise at t = 1 (almost none of x_t is noise) and t = T (all of it is).
# ----------------------------------------------------------------------------------------------
def timestep_embedding(t, dim):
    # Transformer-style: [sin(t w_i), cos(t w_i)],  w_i = 10000^(-i / (dim/2)),  i = 0 .. dim/2 - 1
    half = dim // 2
    w = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angle = t.float()[:, None] * w[None]
    return torch.cat([torch.sin(angle), torch.cos(angle)], 1)


class ConditionEmbedding(nn.Module):
    """emb(t) [+ e(y)]: sinusoid -> MLP, plus a learned class embedding whose last row is the 'no label'
    token of classifier-free guidance."""

    def __init__(self, width, dim, n_classes):
        super().__init__()
        self.width = width
        self.mlp = nn.Sequential(nn.Linear(width, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(n_classes + 1, dim) if n_classes else None

    def forward(self, t, y):
        emb = self.mlp(timestep_embedding(t, self.width))
        return emb if self.label is None or y is None else emb + self.label(y)


class MLPNoisePredictor(nn.Module):
    """2-D: residual MLP blocks h <- h + Linear(SiLU(LayerNorm(h + emb)))."""

    def __init__(self, width, n_classes=0, depth=4):
        super().__init__()
        self.embed = ConditionEmbedding(width, width, n_classes)
        self.inp = nn.Linear(2, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, width))
                                    for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x, t, y=None):
        emb, h = self.embed(t, y), self.inp(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)


def group_norm(c):
    return nn.GroupNorm(min(8, c // 4), c)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, + the projected time (and class) embedding, GroupNorm -> SiLU ->
    dropout -> conv, plus a skip connection (1x1 conv where the channel count changes)."""

    def __init__(self, c_in, c_out, emb_dim, dropout):
        super().__init__()
        self.conv1 = nn.Sequential(group_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))
        self.conv2 = nn.Sequential(group_norm(c_out), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(c_out, c_out, 3, padding=1))
        nn.init.zeros_(self.conv2[-1].weight), nn.init.zeros_(self.conv2[-1].bias)  # each block starts as identity
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(x) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.conv2(h)


class SelfAttention(nn.Module):
    """Single-head self-attention over the H*W positions: softmax(Q K^T / sqrt(C)) V, residual."""

    def __init__(self, c):
        super().__init__()
        self.norm, self.qkv, self.proj = group_norm(c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.proj.weight), nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).unbind(1)
        attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # N x HW x HW
        return x + self.proj((v @ attn.transpose(1, 2)).reshape(n, c, h, w))


class UNet(nn.Module):
    """28/32 px: resolutions 28 -> 14 -> 7 (or 32 -> 16 -> 8), channels width x (1, 2, 2); 64 px adds a
    level. One residual block per level on the way down and up, skip connections across, attention
    at the lowest resolution (and in the middle) when attn is on."""

    def __init__(self, channels, size, width, dropout, attn, n_classes=0):
        super().__init__()
        mults = (1, 2, 2, 2) if size == 64 else (1, 2, 2)
        chs, emb_dim = [width * m for m in mults], 4 * width
        self.embed = ConditionEmbedding(width, emb_dim, n_classes)
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.down, self.down_attn, self.downsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        c = width
        for i, ch in enumerate(chs):
            last = i == len(chs) - 1
            self.down.append(ResBlock(c, ch, emb_dim, dropout))
            self.down_attn.append(SelfAttention(ch) if attn and last else nn.Identity())
            self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1) if not last else nn.Identity())
            c = ch
        self.mid1, self.mid_attn, self.mid2 = (ResBlock(c, c, emb_dim, dropout), SelfAttention(c) if attn else nn.Identity(),
                                               ResBlock(c, c, emb_dim, dropout))
        self.up, self.up_attn, self.upsample = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i, ch in reversed(list(enumerate(chs))):
            self.up.append(ResBlock(c + ch, ch, emb_dim, dropout))
            self.up_attn.append(SelfAttention(ch) if attn and i == len(chs) - 1 else nn.Identity())
            # upsample to the next level's channel count (cheaper at the larger resolution than keeping ch)
            c = chs[i - 1] if i > 0 else ch
            self.upsample.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, c, 3, padding=1))
                                 if i > 0 else nn.Identity())
        self.out = nn.Sequential(group_norm(c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight), nn.init.zeros_(self.out[-1].bias)

    def forward(self, x, t, y=None):
        emb, h, skips = self.embed(t, y), self.stem(x), []
        for block, attn, down in zip(self.down, self.down_attn, self.downsample):
            h = attn(block(h, emb))
            skips.append(h)
            h = down(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for block, attn, up in zip(self.up, self.up_attn, self.upsample):
            h = up(attn(block(torch.cat([h, skips.pop()], 1), emb)))
        return self.out(h)


def build_model(cfg, channels, n_classes):
    if cfg.dataset in TOY_SETS:
        return MLPNoisePredictor(cfg.width, n_classes)
    return UNet(channels, cfg.image_size, cfg.width, cfg.dropout, cfg.attn == "on", n_classes)


# ----------------------------------------------------------------------------------------------
# 5. The concept: the loss, the reverse step (Algorithm 2), DDIM, guidance, the likelihood.
# ----------------------------------------------------------------------------------------------
def sample_timesteps(n, T, device="cpu"):
    # t ~ Uniform({1, ..., T}): every step of the chain is trained, t = T included
    return torch.randint(1, T + 1, (n,), device=device)


def loss_simple(eps, eps_theta):
    # L_simple = E || eps - eps_theta(x_t, t) ||^2  (mean over the batch and every dimension)
    return F.mse_loss(eps_theta.float(), eps)


def guided_eps(model, x_t, t, y, w, n_classes):
    """Classifier-free guidance (Ho & Salimans 2022), in the convention
        eps_tilde = (1 + w) eps_theta(x_t, t, y) - w eps_theta(x_t, t, no label),
    so w = 0 is exactly the conditional model, and w > 0 pushes samples towards what makes y likely."""
    if y is None:  # unconditional: a conditional model is given its 'no label' token
        return model(x_t, t) if n_classes == 0 else model(x_t, t, torch.full_like(t, n_classes))
    if w == 0:
        return model(x_t, t, y)
    eps_cond, eps_uncond = model(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                 torch.cat([y, torch.full_like(y, n_classes)])).chunk(2)
    return (1 + w) * eps_cond - w * eps_uncond


def p_mean(d, eps, x_t, t, clip_x0):
    """The mean of p_theta(x_{t-1} | x_t). The paper writes it as
        mu_theta = 1/sqrt(alpha_t) * ( x_t - beta_t / sqrt(1 - alpha_bar_t) * eps_theta );
    the same value is the posterior mean mu_tilde(x_0_hat, x_t) at the predicted x_0_hat, which lets
    us clip x_0_hat to the data range [-1, 1] first (a wild early prediction cannot throw the chain off).
    Without clipping the two forms are identical (a test checks it)."""
    x0_hat = predict_x0(d, x_t, t, eps)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1, 1)
    return q_posterior(d, x0_hat, x_t, t)[0], x0_hat


@torch.no_grad()
def p_sample(d, model, x_t, t, sigma2, y=None, w=0.0, n_classes=0, clip_x0=False, generator=None):
    """One step of Algorithm 2: x_{t-1} = mu_theta(x_t, t) + sigma_t z, z ~ N(0, I) for t > 1 and
    z = 0 at t = 1 - the last step returns the mean: adding noise there would only blur the sample."""
    tt = torch.full((len(x_t),), t, device=x_t.device, dtype=torch.long)
    eps = guided_eps(model, x_t, tt, y, w, n_classes).float()
    mean, x0_hat = p_mean(d, eps, x_t, tt, clip_x0)
    if t == 1:
        return mean, x0_hat
    z = torch.randn(x_t.shape, generator=generator, device="cpu").to(x_t.device)
    return mean + math.sqrt(sigma2[t].item()) * z, x0_hat


def ddim_timesteps(T, steps):
    """A strided subsequence 0 = tau_0 < tau_1 < ... < tau_S = T of the training timesteps."""
    return torch.linspace(0, T, steps + 1).round().long().tolist()


@torch.no_grad()
def ddim_step(d, model, x_t, t, s, eta, y=None, w=0.0, n_classes=0, clip_x0=False, generator=None):
    """From x_t to x_s (s < t) with the SAME trained eps_theta (Song et al. 2021, eq. 12):
        x_s = sqrt(alpha_bar_s) x_0_hat + sqrt(1 - alpha_bar_s - sigma^2) eps_theta + sigma z,
        sigma = eta * sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) * sqrt(1 - alpha_bar_t / alpha_bar_s).
    eta = 0: deterministic. At s = 0, alpha_bar_0 = 1 and sigma = 0, so the last step returns x_0_hat."""
    tt = torch.full((len(x_t),), t, device=x_t.device, dtype=torch.long)
    eps = guided_eps(model, x_t, tt, y, w, n_classes).float()
    x0_hat = predict_x0(d, x_t, tt, eps)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1, 1)
        eps = (x_t - d.alpha_bar[t].sqrt().item() * x0_hat) / (1 - d.alpha_bar[t]).sqrt().item()  # consistent with the clipped x_0_hat
    ab_t, ab_s = d.alpha_bar[t].item(), d.alpha_bar[s].item()
    sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
    x_s = math.sqrt(ab_s) * x0_hat + math.sqrt(max(1 - ab_s - sigma ** 2, 0.0)) * eps
    if sigma > 0:
        x_s = x_s + sigma * torch.randn(x_t.shape, generator=generator, device="cpu").to(x_t.device)
    return x_s, x0_hat


@torch.no_grad()
def sample(d, model, x_T, cfg, y=None, sampler="ancestral", steps=None, generator=None, record=(), progress=False):
    """Run the reverse chain from x_T. Returns x_0 and {t: (x_t, x0_hat)} for the t in record."""
    n_classes = model_classes(model)
    clip = cfg.clip_x0 == "on"
    x, snaps, t0 = x_T, {}, time.time()
    if sampler == "ancestral":
        sigma2 = d.reverse_variance(cfg.sigma)
        pairs = [(t, t - 1) for t in range(d.T, 0, -1)]
    else:
        tau = ddim_timesteps(d.T, steps or cfg.sample_steps)
        pairs = list(zip(tau[:0:-1], tau[-2::-1]))
    for i, (t, s) in enumerate(pairs):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            if sampler == "ancestral":
                x, x0_hat = p_sample(d, model, x, t, sigma2, y, cfg.guidance, n_classes, clip, generator)
            else:
                x, x0_hat = ddim_step(d, model, x, t, s, cfg.eta, y, cfg.guidance, n_classes, clip, generator)
        x = x.float()
        if t in record:
            snaps[t] = (x.cpu(), x0_hat.float().cpu())
        if progress and (i + 1) % max(1, len(pairs) // 10) == 0:
            left = (time.time() - t0) / (i + 1) * (len(pairs) - i - 1)
            print(f"  sampling ({sampler}) step {i + 1}/{len(pairs)}  left {fmt_time(left)}", flush=True)
    return x, snaps


def model_classes(model):
    embed = getattr(model, "embed", None)
    return embed.label.num_embeddings - 1 if embed is not None and embed.label is not None else 0


@torch.no_grad()
def ema_update(ema, model, decay, step):
    """theta_ema <- d theta_ema + (1 - d) theta, with warm-up d = min(decay, (1 + step) / (10 + step)) so the
    average is not dominated by the random initial weights. PARAMETERS are averaged; buffers (e.g.
    running statistics) are copied, since an average of them means nothing."""
    d = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.mul_(d).add_(p.detach(), alpha=1 - d)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
    return d


# --- the likelihood: L_vlb = L_T + sum_{t=2}^T L_{t-1} + L_0, in bits per dimension ---
def normal_kl(mean1, var1, mean2, var2):
    # KL( N(mean1, var1) || N(mean2, var2) ) per dimension, in nats
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def standard_normal_cdf(x):
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def discretized_gaussian_log_likelihood(x0, mean, var):
    """The decoder L_0: pixel values 0..255 sit at x = k / 127.5 - 1, each owning a bin of width 2/255;
    p(x_0 | x_1) gives bin k the Gaussian mass N(mean, var) puts on it, and the outer bins reach to
    -inf / +inf so the 256 probabilities sum to exactly 1. Returns log-probabilities (nats)."""
    std = var.sqrt()
    upper = torch.where(x0 > 0.999, torch.ones_like(x0), standard_normal_cdf((x0 + 1 / 255 - mean) / std))
    lower = torch.where(x0 < -0.999, torch.zeros_like(x0), standard_normal_cdf((x0 - 1 / 255 - mean) / std))
    return torch.log((upper - lower).clamp(min=1e-12))


@torch.no_grad()
def vlb_bits_per_dim(d, model, x0, cfg, y=None, generator=None):
    """L_vlb per image in bits/dim, and its terms: prior L_T, the sum of KL terms L_{t-1} (t = 2..T)
    and the decoder L_0. Each term uses its own x_t ~ q(x_t | x_0) (one Monte Carlo sample)."""
    n, dims = len(x0), x0[0].numel()
    sigma2 = d.reverse_variance(cfg.sigma)
    flat_sum = lambda v: v.flatten(1).sum(1)
    T, dev = d.T, x0.device
    # L_T = KL( q(x_T | x_0) || N(0, I) ): nothing to learn, small when alpha_bar_T ~ 0
    tT = torch.full((n,), T, device=dev, dtype=torch.long)
    prior = flat_sum(normal_kl(at(d.alpha_bar.sqrt(), tT, x0) * x0, at(1 - d.alpha_bar, tT, x0), torch.zeros_like(x0), torch.ones_like(x0)))
    kl_sum = torch.zeros(n, device=dev)
    decoder = None
    for t in range(T, 0, -1):
        tt = torch.full((n,), t, device=dev, dtype=torch.long)
        eps = torch.randn(x0.shape, generator=generator).to(dev)
        x_t = q_sample(d, x0, tt, eps)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.amp):
            eps_theta = guided_eps(model, x_t, tt, y, 0.0, model_classes(model)).float()
        mean, _ = p_mean(d, eps_theta, x_t, tt, clip_x0=False)
        var = at(sigma2, tt, x0)
        if t > 1:  # L_{t-1} = KL( q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t) )
            q_mean, q_var = q_posterior(d, x0, x_t, tt)
            kl_sum += flat_sum(normal_kl(q_mean, q_var, mean, var))
        else:      # L_0 = -log p_theta(x_0 | x_1), the discretised decoder
            decoder = -flat_sum(discretized_gaussian_log_likelihood(x0, mean, var))
    to_bits = 1 / (dims * math.log(2))
    terms = {"prior": prior * to_bits, "kl_sum": kl_sum * to_bits, "decoder": decoder * to_bits}
    return terms["prior"] + terms["kl_sum"] + terms["decoder"], terms


# ----------------------------------------------------------------------------------------------
# 6. Training: Algorithm 1 of the paper.
# ----------------------------------------------------------------------------------------------
def load_training_data(cfg):
    """x (2-D points are drawn fresh each step, so None here), labels, channels, number of classes."""
    if cfg.dataset in TOY_SETS:
        return None, None, 2, (len(toy_centres(cfg.dataset)[0]) if cfg.cond else 0)
    x, y = load_images(cfg.dataset, cfg.data_dir, cfg.image_size)
    print(f"{cfg.dataset}: {len(x)} images of {x.shape[1]}x{cfg.image_size}x{cfg.image_size}, "
          f"range [{x.min():.0f}, {x.max():.0f}]")
    n_classes = int(y.max()) + 1 if cfg.cond else 0
    if cfg.cond and n_classes < 2:
        raise UserError(f"--cond needs at least two classes; {cfg.dataset} has one (put each class in its own sub-folder)")
    return x, y, x.shape[1], n_classes


def train(cfg, device):
    out, toy = Path(cfg.out), cfg.dataset in TOY_SETS
    d = Diffusion(cfg.schedule, cfg.timesteps)
    print(f"{cfg.schedule} schedule, T = {d.T}: alpha_bar_T = {d.alpha_bar[-1].item():.2e}, so x_T = "
          f"sqrt(alpha_bar_T) x_0 + sqrt(1 - alpha_bar_T) eps keeps {100 * d.alpha_bar[-1].sqrt().item():.2f}% "
          f"of x_0: {'x_T is N(0, I) for all practical purposes' if d.alpha_bar[-1] < 1e-3 else 'x_T is NOT close to N(0, I); use more timesteps'}")
    x_data, y_data, channels, n_classes = load_training_data(cfg)
    cfg.n_classes = n_classes
    model = build_model(cfg, channels, n_classes).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    net = torch.compile(model) if cfg.compile else model
    print(f"noise predictor: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters"
          + (f", conditional on {n_classes} classes (p_uncond {cfg.p_uncond})" if n_classes else ""))

    def real_batch(m):
        if toy:
            x = sample_toy(cfg.dataset, m)
            return x.to(device), (toy_labels(x, cfg.dataset).to(device) if n_classes else None)
        i = torch.randint(len(x_data), (m,))  # drawn with replacement, no epochs
        return x_data[i].to(device), (y_data[i].to(device) if n_classes else None)

    parts = {"model": model, "ema": ema, "opt": opt}  # what a checkpoint holds
    start, elapsed = 0, 0.0
    if cfg.resume:
        start, elapsed = load_checkpoint(out / "checkpoint.pt", cfg, parts)
        print(f"resumed from {out / 'checkpoint.pt'} at step {start}")
    start_log(out / "log.csv", start)
    write_atomic(out / "config.json", lambda f: f.write(json.dumps(vars(cfg), indent=1)), mode="w")
    shape = (2,) if toy else (channels, cfg.image_size, cfg.image_size)
    x_T_fixed = torch.randn(1000 if toy else 64, *shape, generator=torch.Generator().manual_seed(cfg.seed + 1))
    t0, t_last, last_logged, losses = time.time() - elapsed, time.time(), start, []
    for step in range(start + 1, cfg.steps + 1):
        for group in opt.param_groups:  # linear warm-up over the first 200 steps (the paper: 5000 of 800k), then
            group["lr"] = cfg.lr * min(1.0, step / 200) * (1 - (step - 1) / cfg.steps if cfg.lr_decay == "linear" else 1)
        # Algorithm 1 (Training), repeated until converged:
        # 1. x_0 ~ q(x_0)                (a minibatch of data in [-1, 1]; with --cond also its labels y)
        x0, y = real_batch(cfg.batch_size)
        if y is not None:  # classifier-free guidance: drop each label with probability p_uncond
            y = torch.where(torch.rand(len(y), device=device) < cfg.p_uncond, torch.full_like(y, n_classes), y)
        # 2. t ~ Uniform({1, ..., T})
        t = sample_timesteps(len(x0), d.T, device)
        # 3. eps ~ N(0, I)
        eps = torch.randn_like(x0)
        # 4. gradient step on || eps - eps_theta( sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t ) ||^2
        x_t = q_sample(d, x0, t, eps)
        with torch.autocast(device if isinstance(device, str) else device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            eps_theta = net(x_t, t, y) if n_classes else net(x_t, t)
        loss = loss_simple(eps, eps_theta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema_update(ema, model, cfg.ema_decay, step)
        losses.append(loss.item())

        if not math.isfinite(losses[-1]):
            raise UserError(f"the loss became NaN/inf at step {step}; the last good checkpoint is kept in "
                            f"{out / 'checkpoint.pt'}; try a lower --lr (now {cfg.lr})")
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.time()
            rate, t_last, last_logged = (step - last_logged) / max(now - t_last, 1e-9), now, step
            row = {"step": step, "loss": float(np.mean(losses)), "grad_norm": grad_norm.item(), "seconds": now - t0}
            losses = []
            append_log(out / "log.csv", row)
            print(f"step {step}/{cfg.steps}  loss {row['loss']:.4f}  grad norm {row['grad_norm']:.3f}  "
                  f"{rate:.1f} steps/s  left {fmt_time((cfg.steps - step) / max(rate, 1e-9))}", flush=True)
        if step % cfg.sample_every == 0 or step == cfg.steps:
            save_samples_figure(out / f"samples_{step}.png", cfg, d, ema, x_T_fixed, device)
            save_checkpoint(out / "checkpoint.pt", cfg, parts, step, time.time() - t0)
    plot_losses(out / "log.csv", out / "losses.png")
    return d, ema, n_classes


# ----------------------------------------------------------------------------------------------
# 7. Figures and export.
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


def fixed_labels(n, n_classes):
    """An equal number of samples per class, in class order (None for an unconditional model)."""
    return torch.arange(n_classes).repeat_interleave(max(1, n // n_classes)) if n_classes else None


@torch.no_grad()
def save_samples_figure(path, cfg, d, ema, x_T, device):
    """Samples of the EMA model from fixed noise, by DDIM with 50 steps (cheap enough to draw during
    training). 2-D: the real data, the samples, and -eps_theta(x, t=20) as arrows: the direction in
    which one denoising step moves a point (the learned noise field, proportional to the score)."""
    from matplotlib.figure import Figure
    n_classes, toy = model_classes(ema), cfg.dataset in TOY_SETS
    y = fixed_labels(len(x_T), n_classes)
    x_T = x_T[:len(y)] if y is not None else x_T
    x0, _ = sample(d, ema, x_T.to(device), cfg, None if y is None else y.to(device), "ddim", min(50, d.T))
    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    title = f"{cfg.dataset}, step {path.stem[8:]} (EMA model, DDIM-{min(50, d.T)})"
    if toy:
        draw_toy(ax, cfg, d, ema, x0.cpu(), device)
        ax.set_title(title, fontsize=9)
    else:
        ncol = len(x0) // n_classes if n_classes else 8  # conditional: one row per class
        ax.imshow(image_grid(x0.cpu(), ncol), cmap="gray" if x0.shape[1] == 1 else None)
        ax.set_axis_off()
        ax.set_title(title + ("\nrow = class" if n_classes else ""), fontsize=9)
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))


def draw_toy(ax, cfg, d, ema, x_gen, device, t_field=20):
    lim = 2.0 if cfg.dataset != "swissroll" else 2.5
    real = sample_toy(cfg.dataset, 1000, torch.Generator().manual_seed(cfg.seed + 2))
    ax.scatter(*real.numpy().T, s=3, c="k", label="real")
    ax.scatter(*x_gen.numpy().T, s=3, c="orange", label="samples")
    g = torch.linspace(-lim, lim, 21)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    grid = torch.stack([xx.flatten(), yy.flatten()], 1).to(device)
    t = torch.full((len(grid),), min(t_field, d.T), device=device, dtype=torch.long)
    with torch.no_grad():
        field = -guided_eps(ema, grid, t, None, 0.0, model_classes(ema)).float().cpu()
    ax.quiver(*grid.cpu().numpy().T, *field.numpy().T, color="tab:blue", alpha=0.6, width=0.003,
              label=f"-eps_theta(x, t={min(t_field, d.T)})")
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    ax.legend(loc="lower right", fontsize=7)


@torch.no_grad()
def save_process_figures(out, cfg, d, ema, device):
    """forward_process.png: q(x_t | x_0) at several t. reverse_process.png: the chain from fixed noise,
    x_t beside the model's current guess x_0_hat. samplers.png: ancestral (T steps) vs DDIM (50, 20, 10),
    with the time each took."""
    from matplotlib.figure import Figure
    toy, n_classes, T = cfg.dataset in TOY_SETS, model_classes(ema), d.T
    ts = sorted({0, T // 20, T // 10, T // 5, 2 * T // 5, 3 * T // 5, 4 * T // 5, T})
    gen = torch.Generator().manual_seed(cfg.seed + 4)
    if toy:
        x0 = sample_toy(cfg.dataset, 1000, gen)
    else:
        x_all = load_images(cfg.dataset, cfg.data_dir, cfg.image_size)[0]
        x0 = x_all[torch.randperm(len(x_all), generator=gen)[:6]]
    eps = torch.randn(x0.shape, generator=gen)
    xs = [x0 if t == 0 else q_sample(d, x0, torch.full((len(x0),), t, dtype=torch.long), eps) for t in ts]
    title = "forward process q(x_t | x_0): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps"
    labels = [f"t = {t}\nsqrt(abar) = {d.alpha_bar[t].sqrt().item():.3f}" for t in ts]
    if toy:
        fig = Figure(figsize=(2 * len(ts), 2.3))
        for i, (x, label) in enumerate(zip(xs, labels)):
            ax = fig.add_subplot(1, len(ts), i + 1)
            ax.scatter(*x.numpy().T, s=1, c="k")
            ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xticks=[], yticks=[])
            ax.set_title(label, fontsize=8)
    else:  # one row per image, one column per t
        fig = image_table(torch.stack(xs, 1), labels, None)
    fig.suptitle(title, fontsize=9)
    write_atomic(out / "forward_process.png", lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))

    shape = (2,) if toy else x0.shape[1:]
    n = 1000 if toy else 4
    y = fixed_labels(n, n_classes)
    n = len(y) if y is not None else n
    x_T = torch.randn(n, *shape, generator=torch.Generator().manual_seed(cfg.seed + 5)).to(device)
    y = None if y is None else y.to(device)
    _, snaps = sample(d, ema, x_T, cfg, y, "ancestral", record=set(ts) | {1}, generator=torch.Generator().manual_seed(cfg.seed + 6))
    rts = list(dict.fromkeys([t for t in sorted(ts, reverse=True) if t > 0] + [1]))
    title = "reverse process p_theta from fixed noise: x_{t-1} after the step at t, and the predicted x_0_hat"
    if toy:
        fig = Figure(figsize=(2 * len(rts), 4.8))
        for i, t in enumerate(rts):
            for row, x in enumerate(snaps[t]):
                ax = fig.add_subplot(2, len(rts), row * len(rts) + i + 1)
                ax.scatter(*x.numpy().T, s=1, c="k" if row == 0 else "tab:green")
                ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xticks=[], yticks=[])
                ax.set_title(f"{'x_' + str(t - 1) if row == 0 else 'x0_hat'} (step t={t})", fontsize=8)
    else:  # per image two rows: x_{t-1}, then x_0_hat; one column per step t
        rows = torch.stack([torch.stack([snaps[t][k] for t in rts], 1) for k in range(2)], 1)  # N x 2 x len(rts) x C x H x W
        fig = image_table(rows.flatten(0, 1), [f"t = {t}" for t in rts], ["x_{t-1}", "x0_hat"] * len(x_T))
    fig.suptitle(title, fontsize=9)
    write_atomic(out / "reverse_process.png", lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))

    runs = [("ancestral", T)] + [("ddim", s) for s in (50, 20, 10) if s < T]
    fig = Figure(figsize=(3 * len(runs), 3.3))
    n = 1000 if toy else 16
    y = fixed_labels(n, n_classes)
    n = len(y) if y is not None else n
    x_T = torch.randn(n, *shape, generator=torch.Generator().manual_seed(cfg.seed + 5)).to(device)
    for i, (sampler, steps) in enumerate(runs):
        t_start = time.time()
        x, _ = sample(d, ema, x_T, cfg, None if y is None else y.to(device), sampler, steps,
                      generator=torch.Generator().manual_seed(cfg.seed + 6))
        seconds = time.time() - t_start
        ax = fig.add_subplot(1, len(runs), i + 1)
        if toy:
            ax.scatter(*x.cpu().numpy().T, s=1, c="orange")
            ax.set(xlim=(-2, 2), ylim=(-2, 2), aspect="equal", xticks=[], yticks=[])
        else:
            ax.imshow(image_grid(x.cpu(), 4), cmap="gray" if x.shape[1] == 1 else None)
            ax.set_axis_off()
        label = "DDPM (ancestral)" if sampler == "ancestral" else f"DDIM eta={cfg.eta}"
        ax.set_title(f"{label}, {steps} steps\n{seconds:.2f} s for {n} samples", fontsize=8)
    fig.tight_layout()
    write_atomic(out / "samplers.png", lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))


def image_table(x, col_labels, row_labels):
    """x: R x K x C x H x W images in [-1, 1] -> a figure with R rows and K labelled columns."""
    from matplotlib.figure import Figure
    R, K = x.shape[:2]
    fig = Figure(figsize=(1.1 * K + 1, 1.1 * R + 0.6))
    ax = fig.add_subplot()
    ax.imshow(image_grid(x.flatten(0, 1).clamp(-1, 1), K), cmap="gray" if x.shape[2] == 1 else None)
    h, w = x.shape[3] + 2, x.shape[4] + 2
    ax.set_xticks([w * (k + 0.5) for k in range(K)], col_labels, fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([h * (r + 0.5) for r in range(R)], row_labels or [""] * R, fontsize=7)
    return fig


def plot_losses(csv_path, png_path):
    from matplotlib.figure import Figure
    if not csv_path.exists():
        return
    cols = np.genfromtxt(csv_path, delimiter=",", names=True, ndmin=1)
    fig = Figure(figsize=(8, 3.5))
    for i, (name, title) in enumerate([("loss", "L_simple (mean since the last row)"), ("grad_norm", "gradient norm")]):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.semilogy(cols["step"], cols[name])
        ax.set(xlabel="step", title=title)
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


ARCH_KEYS = ("dataset", "image_size", "width", "attn", "schedule", "timesteps", "cond")  # must match to resume


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
        d, ema, n_classes = train(cfg, device)
        toy = cfg.dataset in TOY_SETS
        # Export: samples.npz from the chosen sampler, from their own noise (no training state used).
        y = fixed_labels(cfg.num_samples, n_classes)
        n = len(y) if y is not None else cfg.num_samples
        shape = (2,) if toy else (ema.stem.in_channels, cfg.image_size, cfg.image_size)
        x_T = torch.randn(n, *shape, generator=torch.Generator().manual_seed(cfg.seed + 3))
        gen, t_start, xs = torch.Generator().manual_seed(cfg.seed + 7), time.time(), []
        print(f"sampling {n} {'points' if toy else 'images'} with {cfg.sampler}"
              f" ({d.T if cfg.sampler == 'ancestral' else cfg.sample_steps} steps)", flush=True)
        for i in range(0, n, 2500 if toy else 250):
            yb = None if y is None else y[i:i + 250 if not toy else i + 2500].to(device)
            xs.append(sample(d, ema, x_T[i:i + (2500 if toy else 250)].to(device), cfg, yb, cfg.sampler,
                             generator=gen, progress=not toy)[0].cpu())
        x = torch.cat(xs)
        seconds = time.time() - t_start
        x_np = x.numpy().astype(np.float32) if toy else to_uint8(x)
        write_atomic(out / "samples.npz", lambda f: np.savez(f, x=x_np, **({"y": y.numpy()} if y is not None else {})))
        result = {"sampler": cfg.sampler, "sample_steps": d.T if cfg.sampler == "ancestral" else cfg.sample_steps,
                  "sampling_seconds": seconds, "samples": n}
        print(f"{n} samples in {seconds:.1f} s")
        if cfg.dataset in ("8gaussians", "25gaussians"):
            result.update(mode_metrics(x_np, cfg.dataset))
            print(f"modes captured {result['modes']}/{result['of']}, high-quality samples "
                  f"{100 * result['high_quality']:.1f}% (within 3 std of a mode, {n} samples)")
        if cfg.eval_nll:
            x_test, y_test = load_images(cfg.dataset, cfg.data_dir, cfg.image_size, split="test") \
                if cfg.dataset in IMAGE_SETS else load_images(cfg.dataset, cfg.data_dir, cfg.image_size)
            idx = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(cfg.seed + 8))[:cfg.nll_images]
            # pixels must be exactly the 256 levels the decoder assigns probabilities to
            x_test = ((x_test[idx] + 1) * 127.5).round() / 127.5 - 1
            y_test = y_test[idx] if n_classes else None
            t_start, parts = time.time(), []
            for i in range(0, len(x_test), 50):
                yb = None if y_test is None else y_test[i:i + 50].to(device)
                parts.append(vlb_bits_per_dim(d, ema, x_test[i:i + 50].to(device), cfg, yb,
                                              torch.Generator().manual_seed(cfg.seed + 9 + i)))
            bpd = torch.cat([p[0] for p in parts]).cpu()
            terms = {k: torch.cat([p[1][k] for p in parts]).mean().item() for k in parts[0][1]}
            result.update(nll_bits_per_dim=bpd.mean().item(), nll_stderr=(bpd.std() / math.sqrt(len(bpd))).item(),
                          nll_images=len(bpd), nll_terms=terms, nll_seconds=time.time() - t_start)
            # what was measured: test images for the data sets, the training images for a folder;
            # with --cond the bound is on -log p(x | y); the means are unclipped (--clip-x0 only
            # changes sampling), so it bounds the model p_theta without clipping
            result["nll_of"] = ("test" if cfg.dataset in IMAGE_SETS else "TRAINING") + " images" + \
                (", -log p(x | y) given their labels" if n_classes else "")
            print(f"variational bound: {result['nll_bits_per_dim']:.3f} +- {result['nll_stderr']:.3f} bits/dim over "
                  f"{len(bpd)} {result['nll_of']} (prior {terms['prior']:.4f}, KL terms {terms['kl_sum']:.3f}, "
                  f"decoder {terms['decoder']:.3f}; unclipped means)")
        write_atomic(out / "metrics.json", lambda f: f.write(json.dumps(result, indent=1)), mode="w")
        save_process_figures(out, cfg, d, ema, device)
        print(f"figures (samples_*, forward_process, reverse_process, samplers, losses), samples.npz and "
              f"checkpoint.pt are in {out}/")
        return d, ema
    except UserError as e:
        print(f"ddpm.py: error: {e}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
