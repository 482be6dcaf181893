"""cyclegan.py - unpaired image-to-image translation with cycle consistency (Zhu et al., 2017), and its
paired twin pix2pix (Isola et al., 2017), in one file.

With unpaired data - a pile of domain-A images and a pile of domain-B images, no pairs - a single GAN
G: A -> B can satisfy its discriminator while ignoring its input: any realistic B image will do. So
CycleGAN trains two generators, G: A -> B and F: B -> A, two discriminators D_B and D_A, and adds the
cycle-consistency loss
    L_cyc = E_a || F(G(a)) - a ||_1 + E_b || G(F(b)) - b ||_1 :
a translation that can be translated back must have kept the content.

Run it:
    python cyclegan.py                                    # toy 2-D pair, arrows from a to G(a) (~1 min CPU)
    python cyclegan.py --dataset fashion-mnist:colour     # grey garments -> coloured, T known: measured
    python cyclegan.py --dataset fashion-mnist:colour --lambda-cycle 0   # the notes' warning
    python cyclegan.py --dataset fashion-mnist:colour --paired           # pix2pix on the same task
    python cyclegan.py --dataset horse2zebra              # downloaded into ./data/horse2zebra/
    python cyclegan.py --dataset path/to/folder           # with trainA/ trainB/ testA/ testB/

Built-in pairs are measurable: domain A is one half of (Fashion-)MNIST's training images, domain B is
the OTHER half passed through a fixed, known transform T (so no pair is ever seen); for a test image
a, the true translation T(a) is known, so ||G(a) - T(a)||_1 and whether a classifier of B images
gives G(a) the class of T(a) (label preservation) can be reported.

Lecture notes followed: unpaired data and why a plain GAN may learn a mapping that ignores its input;
two generators and two discriminators; the cycle-consistency loss; pix2pix, the conditional GAN for
paired image-to-image translation (the discriminator sees the input as its condition).

Deliberate deviations from the papers: images default to 64 px (folders, photo sets) and 28 px
(built-in pairs), not 256, with fewer channels for the built-in pairs, so a CPU can train them;
pix2pix here uses the same ResNet generator as CycleGAN instead of its U-Net; the identity loss is
off by default on 2-D sets (there the true map moves every point); training counts steps, 2,000 by
default, not the paper's 200 epochs; minibatches are drawn with replacement (no epochs). The second
generator is called F in the text and `Fn` in code, since `F` is torch.nn.functional.
"""
import argparse
import gzip
import hashlib
import json
import math
import os
import pickle
import shutil
import sys
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SCRIPT = "cyclegan"
TOY_SETS = ("8gaussians", "25gaussians", "swissroll")
IMAGE_SETS = ("mnist", "fashion-mnist", "cifar10")
TRANSFORMS = ("colour", "invert")  # built-in pairs: <mnist|fashion-mnist>:<transform>
PHOTO_SETS = ("apple2orange", "summer2winter_yosemite", "horse2zebra", "monet2photo", "cezanne2photo",
              "ukiyoe2photo", "vangogh2photo", "maps", "cityscapes", "facades", "iphone2dslr_flower")
PHOTO_URL = "https://efrosgans.eecs.berkeley.edu/cyclegan/datasets/"


# ----------------------------------------------------------------------------------------------
# 1. Configuration: every option, its default and what it does (`python cyclegan.py --help`).
# ----------------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(
        prog="cyclegan.py", description="CycleGAN (unpaired translation with cycle consistency) and, with "
        "--paired, pix2pix; on a toy 2-D pair, built-in measurable image pairs, the CycleGAN photo sets or a folder.",
        epilog="Examples: python cyclegan.py | python cyclegan.py --dataset fashion-mnist:colour | python "
        "cyclegan.py --dataset fashion-mnist:colour --lambda-cycle 0 | python cyclegan.py --dataset horse2zebra")
    a = p.add_argument
    a("--dataset", default="8gaussians", help="a toy 2-D set (A = its points, B = a fixed affine map of "
      "them, drawn separately), a built-in pair mnist:colour, fashion-mnist:colour (grey -> coloured "
      "garment on a coloured background), mnist:invert, fashion-mnist:invert, a CycleGAN photo set "
      f"({', '.join(PHOTO_SETS[:4])}, ...), or a folder with trainA/ trainB/ (testA/ testB/) (default: %(default)s)")
    a("--data-dir", default="./data", help="where datasets live / are downloaded (default: %(default)s)")
    a("--out", default=None, help="run folder (default: runs/cyclegan-<dataset>[-paired])")
    a("--paired", action="store_true", help="pix2pix instead of CycleGAN: one generator, a conditional "
      "PatchGAN on (input, output), L1 to the target; needs pairs (built-in pairs, or a folder whose trainA/ "
      "and trainB/ hold images with the same names)")
    a("--steps", type=int, default=2000, help="training iterations (default: %(default)s; about a minute for 2-D sets on 2 CPU cores)")
    a("--batch-size", type=int, default=None, help="minibatch size (default: 1 for photo sets and folders, as "
      "in the paper; 16 for the 28 px built-in pairs; 256 for 2-D sets)")
    a("--lr", type=float, default=2e-4, help="Adam learning rate, betas (0.5, 0.999), the paper's (default: %(default)s)")
    a("--lambda-cycle", type=float, default=10.0, help="lambda, weight of the cycle loss in both directions "
      "(default: %(default)s, the paper's)")
    a("--lambda-identity", type=float, default=None, help="weight of the identity loss ||G(b) - b|| + ||F(a) - "
      "a|| (default: 0.5 * lambda-cycle, the paper's, for images; 0 for 2-D sets, where the true map moves "
      "every point and 'leave B points where they are' would fight it)")
    a("--lambda-l1", type=float, default=100.0, help="--paired: weight of the L1 loss to the target, pix2pix's "
      "(default: %(default)s)")
    a("--pool-size", type=int, default=50, help="history of generated images shown to the discriminators "
      "(default: %(default)s, the paper's; 0 turns it off)")
    a("--width", type=int, default=None, help="base channels of G and D (default: 64 for photo sets and "
      "folders, the paper's; 16 for 28 px built-in pairs; 128 hidden units for 2-D sets)")
    a("--res-blocks", type=int, default=None, help="residual blocks in G (default: 6 below 256 px, 9 from 256 px)")
    a("--image-size", type=int, default=None, help="28 to 256, a multiple of 4 (default: 28 for built-in "
      "pairs, 64 for photo sets and folders; the paper used 256)")
    a("--eval-classifier-steps", type=int, default=800, help="built-in pairs: training steps (batch 128) of "
      "the domain-B classifier that measures label preservation at the end (default: %(default)s)")
    a("--seed", type=int, default=0, help="random seed; the same seed on CPU gives the same numbers (default: %(default)s)")
    a("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="auto picks cuda > mps > cpu (default: %(default)s)")
    a("--log-every", type=int, default=100, help="progress line and log.csv row cadence (default: %(default)s)")
    a("--sample-every", type=int, default=500, help="sample figure + checkpoint cadence (default: %(default)s)")
    a("--num-samples", type=int, default=None, help="test inputs translated into samples.npz at the end "
      "(default: 2500 points for 2-D sets, 1000 images or all test images if fewer)")
    a("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    a("--overwrite", action="store_true", help="start afresh even if <out> already holds a run")
    p.set_defaults(experiment="train")  # no side experiments here; the shared prepare_out reads this field
    return p


def dataset_kind(name):
    if name in TOY_SETS:
        return "toy"
    base, _, transform = name.partition(":")
    if base in ("mnist", "fashion-mnist") and transform in TRANSFORMS:
        return "builtin"
    if name in PHOTO_SETS:
        return "photo"
    if Path(name).is_dir():
        return "folder"
    raise UserError(f"unknown dataset '{name}': choose a toy set ({', '.join(TOY_SETS)}), a built-in pair "
                    f"(mnist:colour, fashion-mnist:colour, mnist:invert, fashion-mnist:invert), a CycleGAN set "
                    f"({', '.join(PHOTO_SETS)}), or a folder with trainA/ and trainB/")


def finish_config(cfg):
    """Fill the dataset-dependent defaults (stated in --help) and validate."""
    kind = dataset_kind(cfg.dataset)
    toy = kind == "toy"
    name = Path(cfg.dataset).resolve().name if kind == "folder" else cfg.dataset.replace(":", "-")
    cfg.out = cfg.out or f"runs/{SCRIPT}-{name}{'-paired' if cfg.paired else ''}"
    cfg.batch_size = cfg.batch_size if cfg.batch_size is not None else (256 if toy else 16 if kind == "builtin" else 1)
    cfg.width = cfg.width if cfg.width is not None else (128 if toy else 16 if kind == "builtin" else 64)
    cfg.image_size = None if toy else cfg.image_size if cfg.image_size is not None else (28 if kind == "builtin" else 64)
    cfg.res_blocks = cfg.res_blocks if cfg.res_blocks is not None else (6 if toy or cfg.image_size < 256 else 9)
    cfg.lambda_identity = cfg.lambda_identity if cfg.lambda_identity is not None else (0.0 if toy else 0.5 * cfg.lambda_cycle)
    cfg.num_samples = cfg.num_samples if cfg.num_samples is not None else (2500 if toy else 1000)
    if not toy and (cfg.image_size < 28 or cfg.image_size > 256 or cfg.image_size % 4):
        raise UserError(f"--image-size {cfg.image_size} is not supported: use 28 to 256, a multiple of 4 "
                        "(two stride-2 downsamplings must divide it)")
    for flag in ("steps", "batch_size", "width", "res_blocks", "log_every", "sample_every", "num_samples", "eval_classifier_steps"):
        if getattr(cfg, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(cfg, flag)}")
    if min(cfg.lambda_cycle, cfg.lambda_identity, cfg.lambda_l1, cfg.pool_size) < 0 or cfg.lr <= 0:
        raise UserError("the --lambda-* weights and --pool-size must be non-negative and --lr positive")
    if kind == "folder":
        check_translation_folder(cfg.dataset, cfg.paired)
    if cfg.paired and kind in ("toy", "photo"):
        raise UserError("--paired needs paired data: a built-in pair (e.g. fashion-mnist:colour) or a folder "
                        "whose trainA/ and trainB/ hold images with the same file names")
    return cfg


# ----------------------------------------------------------------------------------------------
# 2. Data. Domains A and B as float tensors in [-1, 1] (N x C x H x W, or N x 2 for 2-D sets).
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


TOY_SCALE, TOY_SHIFT = torch.tensor([1.5, 0.6]), torch.tensor([0.5, 0.0])


def toy_transform(x):
    """The toy pair's B = T(A): stretch x by 1.5, squash y to 0.6 and shift right by 0.5 - no symmetry
    of the data maps it to itself, so the true translation is the only smooth one."""
    return x * TOY_SCALE + TOY_SHIFT


COLOUR_FG, COLOUR_BG = torch.tensor([1.0, 0.55, 0.0]), torch.tensor([0.05, 0.15, 0.55])  # orange on navy, in [0, 1]


def pair_transform(x, transform):
    """T for the built-in pairs, on grey images in [-1, 1] (N x 1 x H x W):
       colour: brightness m = (x + 1) / 2 mixes two fixed colours, T(x) = m * orange + (1 - m) * navy;
       invert: T(x) = -x (dark garment on a white background)."""
    if transform == "invert":
        return -x
    m = (x + 1) / 2
    rgb = m * COLOUR_FG.view(1, 3, 1, 1) + (1 - m) * COLOUR_BG.view(1, 3, 1, 1)
    return rgb * 2 - 1


def lift(x, transform):
    """Domain A in T's channel count: grey replicated to 3 channels for the colour pair."""
    return x.repeat(1, 3, 1, 1) if transform == "colour" else x


def builtin_pair(name, data_dir, image_size, split, paired=False):
    """train: A = one random half of the training images, B = T(the other half) - disjoint, so no pair is
    seen; with paired=True (pix2pix) B = T(the same half), b_i the true translation of a_i. test: A = the
    test images and B = T(the same images), the known true translations. Returns A, B, labels of A, of B."""
    base, _, transform = name.partition(":")
    x, y = load_images(base, data_dir, image_size, split)
    if split == "test":
        return lift(x, transform), pair_transform(x, transform), y, y
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    ia, ib = perm[: len(x) // 2], perm[len(x) // 2: 2 * (len(x) // 2)]
    ib = ia if paired else ib
    return lift(x[ia], transform), pair_transform(x[ib], transform), y[ia], y[ib]


def fetch_photo_set(name, data_dir):
    """A CycleGAN set from the official location, unpacked to <data-dir>/<name>/ with trainA/ trainB/
    testA/ testB/. No checksums are published, so the zip is tested (CRC of every member) and its layout
    checked before anything is moved into place."""
    root = Path(data_dir) / name
    if (root / "trainA").is_dir():
        return root
    archive = download([PHOTO_URL + name + ".zip"], Path(data_dir) / f"{name}.zip", "")
    tmp = Path(data_dir) / f".{name}.unpacking"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as z:
            bad = z.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"member {bad} fails its CRC")
            for m in z.namelist():
                if m.startswith("/") or ".." in Path(m).parts:
                    raise zipfile.BadZipFile(f"unsafe member name {m}")
            z.extractall(tmp)
        inner = tmp / name if (tmp / name).is_dir() else tmp
        if not ((inner / "trainA").is_dir() and (inner / "trainB").is_dir()):
            raise zipfile.BadZipFile("no trainA/ and trainB/ inside")
        os.replace(inner, root)
    except zipfile.BadZipFile as e:
        archive.unlink(missing_ok=True)
        raise UserError(f"{archive.name} is not a usable CycleGAN archive ({e}); it was deleted - run again "
                        f"to fetch a fresh copy, or unpack {name}/ with trainA/ trainB/ into {Path(data_dir).resolve()}/")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def folder_pair(root, image_size, split, paired):
    """trainA/ trainB/ (or testA/ testB/, falling back to the training images if a test folder is missing)."""
    root = Path(root)
    sub = {"train": ("trainA", "trainB"), "test": ("testA", "testB")}[split]
    if split == "test" and not all((root / s).is_dir() for s in sub):
        sub = ("trainA", "trainB")
    check_translation_folder(root, paired, sub)
    A, _ = load_images(str(root / sub[0]), None, image_size)
    B, _ = load_images(str(root / sub[1]), None, image_size)
    return A, B


def check_translation_folder(root, paired, sub=("trainA", "trainB")):
    for s in sub:
        if not (Path(root) / s).is_dir():
            raise UserError(f"{root} has no {s}/ folder: a translation folder needs trainA/ and trainB/ "
                            "(and optionally testA/ testB/)")
    if paired:
        names = [sorted(p.name for p in (Path(root) / s).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")) for s in sub]
        if names[0] != names[1]:
            raise UserError(f"--paired: {Path(root) / sub[0]} and {Path(root) / sub[1]} must hold images with the "
                            "same file names (image i of A is the input for image i of B)")


def load_pair(cfg, split):
    """Domains A and B for a split, plus A's and B's labels where known (built-in pairs)."""
    kind = dataset_kind(cfg.dataset)
    if kind == "builtin":
        return builtin_pair(cfg.dataset, cfg.data_dir, cfg.image_size, split, cfg.paired)
    root = fetch_photo_set(cfg.dataset, cfg.data_dir) if kind == "photo" else cfg.dataset
    return (*folder_pair(root, cfg.image_size, split, cfg.paired), None, None)


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
# 3. Models: the ResNet generator and the 70 x 70 PatchGAN of the paper (MLPs for 2-D points).
# ----------------------------------------------------------------------------------------------
class ResidualBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c), nn.ReLU(),
                                  nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


def resnet_generator(c_in, c_out, width, n_blocks):
    """c7s1-w, d2w, d4w, n x R4w, u2w, uw, c7s1-c (the paper's notation). The 7x7 stem is padded by 3
    pixels of reflection - the kernel's half width, so the size is kept - not by the channel count.
    Instance norm: each image normalised on its own, as in the paper (batch size 1)."""
    layers = [nn.ReflectionPad2d(3), nn.Conv2d(c_in, width, 7), nn.InstanceNorm2d(width), nn.ReLU()]
    for w in (width, 2 * width):  # two stride-2 downsamplings
        layers += [nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * w), nn.ReLU()]
    layers += [ResidualBlock(4 * width) for _ in range(n_blocks)]
    for w in (4 * width, 2 * width):  # two stride-2 upsamplings
        layers += [nn.ConvTranspose2d(w, w // 2, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(w // 2), nn.ReLU()]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, c_out, 7), nn.Tanh()]
    return nn.Sequential(*layers)


def patchgan(c_in, width):
    """C64-C128-C256-C512 (4x4 convolutions, stride 2, 2, 2, 1; no norm on the first) and a 4x4 convolution
    to one channel: each output pixel scores one 70 x 70 patch of the input as real or fake."""
    layers, c = [nn.Conv2d(c_in, width, 4, 2, 1), nn.LeakyReLU(0.2)], width
    for mult, stride in ((2, 2), (4, 2), (8, 1)):
        layers += [nn.Conv2d(c, width * mult, 4, stride, 1), nn.InstanceNorm2d(width * mult), nn.LeakyReLU(0.2)]
        c = width * mult
    return nn.Sequential(*layers, nn.Conv2d(c, 1, 4, 1, 1))


def receptive_field(net):
    """Receptive field of one output pixel, from the convolution stack: r <- r * stride + (kernel - stride),
    applied from the last layer back to the first."""
    r = 1
    for m in reversed([m for m in net.modules() if isinstance(m, nn.Conv2d)]):
        r = r * m.stride[0] + (m.kernel_size[0] - m.stride[0])
    return r


def mlp(n_in, width, n_out):
    return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(), nn.Linear(width, n_out))


def build_models(cfg, channels):
    """CycleGAN: G (A -> B), F (B -> A), D_A, D_B. pix2pix: G and one D on (input, output) pairs."""
    toy = cfg.dataset in TOY_SETS
    gen = (lambda: mlp(2, cfg.width, 2)) if toy else (lambda: resnet_generator(channels, channels, cfg.width, cfg.res_blocks))
    disc = (lambda c: mlp(c, cfg.width, 1)) if toy else (lambda c: patchgan(c, cfg.width))
    if cfg.paired:
        return {"G": gen(), "D": disc(2 * channels)}  # pix2pix's D sees the input as its condition
    nets = {"G": gen(), "F": gen(), "D_A": disc(channels), "D_B": disc(channels)}
    if not toy:
        for m in (m for net in nets.values() for m in net.modules()):  # the paper's init: N(0, 0.02)
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02), nn.init.zeros_(m.bias)
    return nets


# ----------------------------------------------------------------------------------------------
# 4. The concept: the losses, side by side, and the history pool.
# ----------------------------------------------------------------------------------------------
def lsgan_d_loss(D_real, D_fake):
    # least-squares GAN (the paper's choice, steadier than the log loss):
    # L_D = 1/2 E[(D(b) - 1)^2] + 1/2 E[D(G(a))^2]
    return 0.5 * ((D_real - 1) ** 2).mean() + 0.5 * (D_fake ** 2).mean()


def lsgan_g_loss(D_fake):
    # L_G = E[(D(G(a)) - 1)^2]: G wants its outputs scored as real
    return ((D_fake - 1) ** 2).mean()


def cycle_loss(x, x_cycled):
    # L_cyc = E || F(G(a)) - a ||_1 (and the same for b): mean absolute difference
    return (x_cycled - x).abs().mean()


def identity_loss(x, G_x):
    # L_id = E || G(b) - b ||_1: a B image fed to G (A -> B) should come back unchanged; keeps colours
    return (G_x - x).abs().mean()


def bce_d_loss(D_real, D_fake):
    # pix2pix: the conditional GAN log loss on logits, -log D(a, b) - log(1 - D(a, G(a)));
    # -log sigmoid(l) = softplus(-l) and -log(1 - sigmoid(l)) = softplus(l)
    return F.softplus(-D_real).mean() + F.softplus(D_fake).mean()


def bce_g_loss(D_fake):
    # pix2pix's G, the non-saturating form: -log D(a, G(a)) = softplus(-logit)
    return F.softplus(-D_fake).mean()


def lr_at(step, total, base):
    """The paper's schedule: constant for the first half of training, then linearly down to 0."""
    half = total / 2
    return base if step <= half else base * max(0.0, 1 - (step - half) / (total - half))


class ImagePool:
    """The discriminators see a history of generated images, not only the newest (Shrivastava et al.):
    until the pool holds `size` images every new one is returned and stored; after that, each new image
    is returned with probability 1/2, otherwise a random stored one is returned and replaced by it."""

    def __init__(self, size):
        self.size, self.images = size, []

    def query(self, batch):
        if self.size == 0:
            return batch.detach()  # the discriminators' loss must not reach the generators
        out = []
        for img in batch.detach():
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif torch.rand(()) < 0.5:
                i = int(torch.randint(len(self.images), ()))
                out.append(self.images[i])
                self.images[i] = img.clone()
            else:
                out.append(img)
        return torch.stack(out)

    def state_dict(self):
        return {"images": torch.stack(self.images).cpu() if self.images else torch.zeros(0)}

    def load_state_dict(self, state):
        self.images = list(state["images"]) if state["images"].numel() else []


# ----------------------------------------------------------------------------------------------
# 5. Training.
# ----------------------------------------------------------------------------------------------
def train(cfg, device):
    out, toy = Path(cfg.out), cfg.dataset in TOY_SETS
    if toy:
        A, B, channels = None, None, 2
    else:
        A, B, _, _ = load_pair(cfg, "train")
        channels = A.shape[1]
        print(f"{cfg.dataset}: {len(A)} images in A, {len(B)} in B, {channels}x{cfg.image_size}x{cfg.image_size}")
        if cfg.paired and len(A) != len(B):
            raise UserError(f"--paired needs as many A images as B images ({len(A)} vs {len(B)})")
    nets = {k: v.to(device) for k, v in build_models(cfg, channels).items()}
    gens = [nets[k] for k in ("G", "F") if k in nets]
    discs = [nets[k] for k in ("D", "D_A", "D_B") if k in nets]
    opt_G = torch.optim.Adam([p for g in gens for p in g.parameters()], lr=cfg.lr, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam([p for d in discs for p in d.parameters()], lr=cfg.lr, betas=(0.5, 0.999))
    pools = {} if cfg.paired else {"pool_A": ImagePool(cfg.pool_size), "pool_B": ImagePool(cfg.pool_size)}
    print(f"{'pix2pix' if cfg.paired else 'CycleGAN'}: " + ", ".join(
        f"{k} {sum(p.numel() for p in v.parameters()):,}" for k, v in nets.items()) + " parameters")

    def batch(m):
        if toy:  # unpaired: A and B from independent draws
            return sample_toy(cfg.dataset, m).to(device), toy_transform(sample_toy(cfg.dataset, m)).to(device)
        i = torch.randint(len(A), (m,))
        j = i if cfg.paired else torch.randint(len(B), (m,))  # paired: b_i is the target of a_i
        return A[i].to(device), B[j].to(device)

    parts = {**nets, "opt_G": opt_G, "opt_D": opt_D, **pools}  # what a checkpoint holds
    start, elapsed = 0, 0.0
    if cfg.resume:
        start, elapsed = load_checkpoint(out / "checkpoint.pt", cfg, parts)
        print(f"resumed from {out / 'checkpoint.pt'} at step {start}")
    start_log(out / "log.csv", start)
    write_atomic(out / "config.json", lambda f: f.write(json.dumps(vars(cfg), indent=1)), mode="w")
    shown = fixed_test_inputs(cfg)
    t0, t_last, last_logged = time.time() - elapsed, time.time(), start
    for step in range(start + 1, cfg.steps + 1):
        for opt in (opt_G, opt_D):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg.steps, cfg.lr)
        a, b = batch(cfg.batch_size)
        if cfg.paired:
            G, D = nets["G"], nets["D"]
            # pix2pix 1. G: fool D on the pair (a, G(a)) and stay close to the target in L1:
            #    L_G = -log D(a, G(a)) + lambda_L1 * E || b - G(a) ||_1
            fake_b = G(a)
            loss_adv = bce_g_loss(D(torch.cat([a, fake_b], 1)))
            loss_l1 = (fake_b - b).abs().mean()
            loss_G = loss_adv + cfg.lambda_l1 * loss_l1
            opt_G.zero_grad(set_to_none=True)
            loss_G.backward()
            opt_G.step()
            # pix2pix 2. D: the real pair (a, b) is real, (a, G(a)) is fake - D sees the input as its condition
            loss_D = bce_d_loss(D(torch.cat([a, b], 1)), D(torch.cat([a, fake_b.detach()], 1)))
            opt_D.zero_grad(set_to_none=True)
            loss_D.backward()
            opt_D.step()
            row = {"loss_G_adv": loss_adv.item(), "loss_l1": loss_l1.item(), "loss_D": loss_D.item()}
        else:
            G, Fn, D_A, D_B = nets["G"], nets["F"], nets["D_A"], nets["D_B"]
            # 1. The generators, with the discriminators fixed:
            #    L = L_GAN(G, D_B) + L_GAN(F, D_A) + lambda * L_cyc + lambda_id * L_id
            fake_b, fake_a = G(a), Fn(b)
            loss_gan = lsgan_g_loss(D_B(fake_b)) + lsgan_g_loss(D_A(fake_a))
            loss_cyc = cycle_loss(a, Fn(fake_b)) + cycle_loss(b, G(fake_a))  # a -> G -> F -> a, b -> F -> G -> b
            loss_id = (identity_loss(b, G(b)) + identity_loss(a, Fn(a))) if cfg.lambda_identity > 0 else torch.zeros((), device=device)
            loss_G = loss_gan + cfg.lambda_cycle * loss_cyc + cfg.lambda_identity * loss_id
            opt_G.zero_grad(set_to_none=True)
            loss_G.backward()
            opt_G.step()
            # 2. The discriminators, on real images and on generated ones drawn through the history pool
            loss_D_B = lsgan_d_loss(D_B(b), D_B(pools["pool_B"].query(fake_b)))
            loss_D_A = lsgan_d_loss(D_A(a), D_A(pools["pool_A"].query(fake_a)))
            opt_D.zero_grad(set_to_none=True)
            (loss_D_A + loss_D_B).backward()
            opt_D.step()
            loss_D = loss_D_A + loss_D_B
            row = {"loss_G_gan": loss_gan.item(), "loss_cycle": loss_cyc.item(), "loss_identity": loss_id.item(),
                   "loss_D_A": loss_D_A.item(), "loss_D_B": loss_D_B.item()}

        if not (torch.isfinite(loss_G) and torch.isfinite(loss_D)):
            raise UserError(f"a loss became NaN/inf at step {step}; the last good checkpoint is kept in "
                            f"{out / 'checkpoint.pt'}; try a lower --lr (now {cfg.lr})")
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.time()
            rate, t_last, last_logged = (step - last_logged) / max(now - t_last, 1e-9), now, step
            row = {"step": step, **row, "lr": lr_at(step, cfg.steps, cfg.lr), "seconds": now - t0}
            append_log(out / "log.csv", row)
            print(f"step {step}/{cfg.steps}  " + "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("loss"))
                  + f"  {rate:.1f} steps/s  left {fmt_time((cfg.steps - step) / max(rate, 1e-9))}", flush=True)
        if step % cfg.sample_every == 0 or step == cfg.steps:
            save_samples_figure(out / f"samples_{step}.png", cfg, nets, shown, device)
            save_checkpoint(out / "checkpoint.pt", cfg, parts, step, time.time() - t0)
    plot_losses(out / "log.csv", out / "losses.png")
    return nets


# ----------------------------------------------------------------------------------------------
# 6. Evaluation on held-out inputs, figures, export.
# ----------------------------------------------------------------------------------------------
def fixed_test_inputs(cfg):
    """Fixed TEST inputs for the figures (no augmentation): 8 from A and 8 from B, with T(a) if known."""
    if cfg.dataset in TOY_SETS:
        a = sample_toy(cfg.dataset, 300, torch.Generator().manual_seed(cfg.seed + 2))
        return {"a": a, "b": toy_transform(sample_toy(cfg.dataset, 300, torch.Generator().manual_seed(cfg.seed + 3))),
                "truth": toy_transform(a)}
    A, B, _, _ = load_pair(cfg, "test")
    idx = torch.randperm(len(A), generator=torch.Generator().manual_seed(cfg.seed + 2))[:8]
    jdx = torch.randperm(len(B), generator=torch.Generator().manual_seed(cfg.seed + 3))[:8]
    known = dataset_kind(cfg.dataset) == "builtin" or cfg.paired
    return {"a": A[idx], "b": B[jdx], "truth": B[idx] if known and len(A) == len(B) else None}


@torch.no_grad()
def translate(net, x, device, batch=100):
    was = net.training
    net.eval()
    y = torch.cat([net(x[i:i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])
    net.train(was)
    return y


class DomainClassifier(nn.Module):
    """A small CNN for label preservation, trained on labelled domain-B images T(x) (built-in pairs)."""

    def __init__(self, channels, n_classes=10):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.LazyLinear(128), nn.ReLU(), nn.Linear(128, n_classes))

    def forward(self, x):
        return self.net(x)


def train_domain_classifier(B, y_B, steps, device, seed):
    torch.manual_seed(seed)
    clf = DomainClassifier(B.shape[1]).to(device)
    clf(B[:2].to(device))  # materialise the lazy layer
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(len(B), (128,), generator=gen)
        loss = F.cross_entropy(clf(B[i].to(device)), y_B[i].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clf.eval()


@torch.no_grad()
def evaluate(cfg, nets, device):
    """Built-in pairs and the toy pair: mean |G(a) - T(a)| on held-out inputs (in [-1, 1] units: 2 is
    the whole range), and for images label preservation: a classifier trained on labelled B images
    T(x) gives G(a) the class it gives the true translation T(a)."""
    kind, G = dataset_kind(cfg.dataset), nets["G"]
    if kind == "toy":
        a = sample_toy(cfg.dataset, cfg.num_samples, torch.Generator().manual_seed(cfg.seed + 5))
        fake = translate(G, a, device, 2500)
        result = {"l1_to_truth": (fake - toy_transform(a)).abs().mean().item()}
        if cfg.dataset != "swissroll":  # mixtures: is G(a) a realistic B point, and on the mode T(a) is on?
            centres, std = toy_centres(cfg.dataset)
            back = (fake - TOY_SHIFT) / TOY_SCALE  # T^-1(G(a))
            d_back, d_a = torch.cdist(back, centres), torch.cdist(a, centres)  # both in A's coordinates
            on_mode = d_back.min(1).values < 3 * std  # within 3 std of a mode of B, measured through T
            result.update(on_B_modes=on_mode.float().mean().item(),
                          on_true_mode=(on_mode & (d_back.argmin(1) == d_a.argmin(1))).float().mean().item())
        return result, fake
    A, B, y_A, _ = load_pair(cfg, "test")
    n = min(cfg.num_samples, len(A))
    fake = translate(G, A[:n], device)
    if kind != "builtin":
        result = {"l1_to_target": (fake - B[:n]).abs().mean().item()} if cfg.paired else {}
        return result, fake
    truth = B[:n]
    result = {"l1_to_truth": (fake - truth).abs().mean().item(), "l1_identity_baseline": (A[:n] - truth).abs().mean().item()}
    with torch.enable_grad():
        _, B_train, _, y_B = load_pair(cfg, "train")
        clf = train_domain_classifier(B_train, y_B, cfg.eval_classifier_steps, device, cfg.seed + 6)
    pred = lambda x: torch.cat([clf(x[i:i + 500].to(device)).argmax(1).cpu() for i in range(0, len(x), 500)])
    p_fake, p_truth = pred(fake), pred(truth)
    result.update(label_preservation=(p_fake == p_truth).float().mean().item(),
                  classifier_accuracy_on_truth=(p_truth == y_A[:n]).float().mean().item(), evaluated=n)
    return result, fake


@torch.no_grad()
def save_samples_figure(path, cfg, nets, shown, device):
    from matplotlib.figure import Figure
    a, b, truth = shown["a"], shown["b"], shown["truth"]
    if cfg.dataset in TOY_SETS:
        fake_b = translate(nets["G"], a, device)
        fig = Figure(figsize=(7, 6))
        ax = fig.add_subplot()
        ax.scatter(*a.numpy().T, s=4, c="tab:blue", label="a (domain A)")
        ax.scatter(*b.numpy().T, s=4, c="tab:orange", label="b (domain B)")
        ax.scatter(*truth[:60].numpy().T, s=30, facecolors="none", edgecolors="k", lw=0.6, label="T(a), the true translation")
        ax.quiver(*a[:60].numpy().T, *(fake_b[:60] - a[:60]).numpy().T, angles="xy", scale_units="xy", scale=1,
                  color="tab:green", width=0.003, label="a -> G(a)")
        ax.set(aspect="equal", title=f"{cfg.dataset} pair, step {path.stem[8:]}")
        ax.legend(loc="lower left", fontsize=7)
    else:
        rows, labels = [a], ["a"]
        fake_b = translate(nets["G"], a, device)
        rows.append(fake_b), labels.append("G(a)")
        if "F" in nets:
            rows.append(translate(nets["F"], fake_b, device)), labels.append("F(G(a))")
        if truth is not None:
            rows.append(truth), labels.append("T(a), truth" if not cfg.paired else "target")
        if "F" in nets:
            fake_a = translate(nets["F"], b, device)
            rows += [b, fake_a, translate(nets["G"], fake_a, device)]
            labels += ["b", "F(b)", "G(F(b))"]
        grid = torch.cat(rows)
        fig = Figure(figsize=(6, 0.75 * len(rows) + 0.6))
        ax = fig.add_subplot()
        ax.imshow(image_grid(grid, len(a)), cmap="gray" if grid.shape[1] == 1 else None)
        h = grid.shape[2] + 2
        ax.set_yticks([h * (i + 0.5) for i in range(len(rows))], labels, fontsize=8)
        ax.set_xticks([])
        ax.set_title(f"{cfg.dataset}{' (pix2pix)' if cfg.paired else ''}, step {path.stem[8:]}, test images", fontsize=9)
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))


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
    names = [n for n in cols.dtype.names if n.startswith("loss")]
    fig = Figure(figsize=(3 * len(names), 3))
    for i, n in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        ax.plot(cols["step"], cols[n])
        ax.set(xlabel="step", title=n)
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


ARCH_KEYS = ("dataset", "image_size", "width", "res_blocks", "paired")  # must match to resume


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
        nets = train(cfg, device)
        result, fake = evaluate(cfg, nets, device)
        x = fake.numpy().astype(np.float32) if cfg.dataset in TOY_SETS else to_uint8(fake)
        write_atomic(out / "samples.npz", lambda f: np.savez(f, x=x))
        write_atomic(out / "metrics.json", lambda f: f.write(json.dumps(result, indent=1)), mode="w")
        if result:
            print("held-out inputs: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
        if "on_true_mode" in result:
            print(f"{100 * result['on_B_modes']:.1f} % of G(a) land on a mode of B, {100 * result['on_true_mode']:.1f} % on the "
                  "mode T(a) is on: unpaired data cannot tell B's modes apart, so a permutation of them is as "
                  "cycle-consistent as T (see the README)")
        print(f"figures, samples.npz (G applied to held-out A inputs) and checkpoint.pt are in {out}/")
        return nets
    except UserError as e:
        print(f"cyclegan.py: error: {e}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
