"""cgan.py - a conditional GAN whose discriminator checks that x fits its condition y.

G draws x = G(z, y) for a condition y; D judges a PAIR, D(x, y). A D that only asks "is x real?" is
fooled by a sharp image of the wrong class, so G could ignore y. The notes' D therefore separates
three cases:  real x with its own y -> 1;  real x with a wrong y' -> 0;  G(z, y) with y -> 0.

    L_D = -E[log D(x, y)] - w E[log(1 - D(x, y'))] - (1 - w) E[log(1 - D(G(z, y), y))]
    L_G = -E[log D(G(z, y), y)]

w = 1/2 is Reed et al.'s matching-aware D; w = 0 the plain conditional GAN (Mirza & Osindero).
Training needs paired data (x, y). In the notes' text-to-image the condition is a sentence's
embedding; here a class label (a toy mode, a digit, a garment, a sub-folder) stands in for it.
Notes 000 and 003 call the condition x and the output y; here, as in the papers, the condition is y
and the output x. An image as the condition (pix2pix, 上色): see cyclegan.py --paired.

Examples:
  python cgan.py                          # 8 Gaussians, label = mode, about 30 s on 2 CPU cores
  python cgan.py --dataset 25gaussians    # 25 labelled modes
  python cgan.py --dataset fashion-mnist  # a row per class, the same z in each column, 7 min
  python cgan.py --mismatch-weight 0      # ablation: no (real x, wrong y') pairs

Deviations from the papers: DCGAN networks and Adam, not maxout MLPs; y joined to the input of
every block of G and D, not of the first only; D returns a logit and log D = -softplus(-l); the
fakes in D's step and in G's step are conditioned on the labels of a data batch, so y follows the
data's class frequencies; batches are drawn with replacement.
"""
import argparse, gzip, hashlib, io, json, math, os, sys, tarfile, time, urllib.request, zlib
from pathlib import Path
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# ------------------------------------------------------------------------- 1. the concept
# D returns a logit l on each kind of pair: logit_match (x, y), logit_mismatch (x, y'), logit_fake
# (G(z, y), y). D(x, y) = sigmoid(l), so log D = -softplus(-l) and log(1 - D) = -softplus(l).
def mismatched_labels(y, n_classes, generator=None):
    # y' = (y + U{1..K-1}) mod K: uniform over the K - 1 other classes, never y itself
    offset = torch.randint(1, n_classes, y.shape, generator=generator).to(y.device)
    return (y + offset) % n_classes

def conditional_discriminator_loss(logit_match, logit_mismatch, logit_fake, w):
    # L_D = -E[log D(x, y)] - w E[log(1 - D(x, y'))] - (1 - w) E[log(1 - D(G(z, y), y))]:
    # the two negative cases weigh 1 together, as the single one does in the plain GAN
    return (F.softplus(-logit_match).mean() + w * F.softplus(logit_mismatch).mean()
            + (1 - w) * F.softplus(logit_fake).mean())

def generator_loss(logit_fake):
    # L_G = -E[log D(G(z, y), y)] (non-saturating): G must look real AND fit y to score
    return F.softplus(-logit_fake).mean()

# The best D for a fixed G, pair by pair, with q(x, y) = p_data(x) (1 - p_data(y|x)) / (K - 1)
# the law of the mismatched pairs:  D*(x, y) = p_data / (p_data + w q + (1 - w) p_G), all at (x, y).
# D's negatives follow w q + (1 - w) p_G, so G's optimum is w q + (1 - w) p_G = p_data, D* = 1/2,
# when p_G = (p_data - w q) / (1 - w) is a law G can draw (>= 0, the data's class frequencies):
# with overlapping classes (shirt, T-shirt) and w > 0, G then draws pairs whose x looks more like
# other classes (q > p_data) less often than the data. With w = 0, or classes that never overlap
# (q = 0 wherever p_data > 0, as the toy modes), G's optimum is p_G = p_data, with D* = 1 / (2 - w)
# on real and generated pairs: 1/2 for the plain cGAN, 2/3 for w = 1/2.

# ------------------------------------------------------------------------- 2. the models
class Conditioned(nn.Module):
    """A net that sees y in every block: a learned embedding e(y) joined to each block's input, as
    E constant feature maps for images. e(y) stands in for text-to-image's text embedding."""
    def __init__(self, n_classes, emb_dim, blocks):
        super().__init__()
        self.embed, self.blocks = nn.Embedding(n_classes, emb_dim), nn.ModuleList(blocks)

    def forward(self, h, y):
        e = self.embed(y)
        for block in self.blocks:
            e_h = e if h.dim() == 2 else e[:, :, None, None].expand(-1, -1, *h.shape[2:])
            h = block(torch.cat([h, e_h], 1))
        return h

def mlp(n_in, width, n_out):
    return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(), nn.Linear(width, n_out))

def build_models(cfg, channels, n_classes):
    """G(z, y) and D(x, y) (a logit), y joined to the input as by Mirza & Osindero, here of every
    block: MLPs for 2-D data; for images DCGAN's nets (Radford et al.): stride-2 (transposed)
    convolutions, BatchNorm, ReLU in G, LeakyReLU(0.2) in D, tanh output, weights ~ N(0, 0.02)."""
    e, n = cfg.emb_dim, 3 if cfg.image_size == 64 else 2  # n doublings: 28 -> 7, ch [128, 64]
    s0, ch = cfg.image_size // 2 ** n, [cfg.width * 2 ** (n - 1 - i) for i in range(n)]
    if channels == 2:
        G, D = [mlp(cfg.z_dim + e, cfg.width, 2)], [mlp(2 + e, cfg.width, 1)]
    else:
        G = [nn.Sequential(nn.Linear(cfg.z_dim + e, ch[0] * s0 * s0, bias=False),
                           nn.BatchNorm1d(ch[0] * s0 * s0), nn.ReLU(),
                           nn.Unflatten(1, (ch[0], s0, s0)))]
        G += [nn.Sequential(nn.ConvTranspose2d(ch[i] + e, ch[i + 1], 4, 2, 1, bias=False),
                            nn.BatchNorm2d(ch[i + 1]), nn.ReLU()) for i in range(n - 1)]
        G += [nn.Sequential(nn.ConvTranspose2d(ch[-1] + e, channels, 4, 2, 1), nn.Tanh())]
        D = [nn.Sequential(nn.Conv2d(channels + e, ch[-1], 4, 2, 1), nn.LeakyReLU(0.2))]
        D += [nn.Sequential(nn.Conv2d(ch[i + 1] + e, ch[i], 4, 2, 1, bias=False),
                            nn.BatchNorm2d(ch[i]), nn.LeakyReLU(0.2))
              for i in reversed(range(n - 1))]
        D += [nn.Sequential(nn.Flatten(), nn.Linear((ch[0] + e) * s0 * s0, 1))]
    G, D = Conditioned(n_classes, e, G), Conditioned(n_classes, e, D)
    for m in [*G.modules(), *D.modules()] if channels != 2 else []:  # BatchNorm scales ~ N(1, 0.02)
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm1d,
                          nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0 if "Norm" in type(m).__name__ else 0.0, 0.02)
    return G, D

# ------------------------------------------------------------------------- 3. training
def train(cfg):
    device, toy = pick_device(cfg.device), cfg.dataset in TOY_SETS
    check_options(cfg)
    if toy:  # the pairs (x, y) are drawn as needed: class k is mode k
        classes = [f"mode {k}" for k in range(len(toy_centres(cfg.dataset)[0]))]
    else:  # the paired data: every image with its class
        x_data, y_data, names = load_data(cfg.dataset, cfg.data_dir, cfg.image_size)
        x_data, y_data = x_data.to(device), y_data.to(device)
        classes = CLASS_NAMES.get(cfg.dataset, names)
    if len(classes) < 2:
        raise SystemExit(f"{PROG}: error: {cfg.dataset} has 1 class; put each class's images in a "
                         "sub-folder of its own")
    K, m = len(classes), cfg.batch_size
    G, D = (net.to(device) for net in build_models(cfg, 2 if toy else x_data.shape[1], K))
    opt_G = torch.optim.Adam(G.parameters(), cfg.lr, betas=(cfg.beta1, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), cfg.lr, betas=(cfg.beta1, 0.999))
    parts = {"G": G, "D": D, "opt_G": opt_G, "opt_D": opt_D}  # what a checkpoint holds
    start = start_run(cfg)
    for step in range(1, cfg.steps + 1):
        # 1. k times: sample m pairs (x, y) ~ P_data (a cGAN needs such paired data, note 001), a
        #    wrong label y' for each and m noises z; update D on the three cases with G fixed.
        for _ in range(cfg.d_steps):
            if toy:
                x, y = (t.to(device) for t in sample_toy_labelled(cfg.dataset, m))
            else:
                i = torch.randint(len(x_data), (m,), device=device)
                x, y = x_data[i].float() / 127.5 - 1, y_data[i]  # as batch_of, with the labels
            y_wrong = mismatched_labels(y, K)
            with torch.no_grad():
                x_fake = G(torch.randn(m, cfg.z_dim, device=device), y)
            logit_match, logit_mismatch, logit_fake = D(x, y), D(x, y_wrong), D(x_fake, y)
            loss_D = conditional_discriminator_loss(logit_match, logit_mismatch, logit_fake,
                                                    cfg.mismatch_weight)
            opt_D.zero_grad()
            loss_D.backward()
            opt_D.step()
        # 2. Update G with D fixed, on m new noises and the same data labels y (one rule for both
        #    steps: y follows the data's class frequencies).
        loss_G = generator_loss(D(G(torch.randn(m, cfg.z_dim, device=device), y), y))
        opt_G.zero_grad()
        loss_G.backward()
        opt_G.step()
        # 3. Log the mean D(x, y) of the three cases, all three from the same D (step 1's last,
        #    before its update).
        D_match, D_mismatch, D_fake = (torch.sigmoid(logit).mean() for logit in
                                       (logit_match, logit_mismatch, logit_fake))
        log_step(cfg, start, step, loss_D=loss_D, loss_G=loss_G, D_match=D_match,
                 D_mismatch=D_mismatch, D_fake=D_fake)
        if step % cfg.sample_every == 0 or step == cfg.steps:
            plot_samples(cfg, step, G, D, classes)
            save_checkpoint(cfg, parts, step)
    return G

def check_options(cfg):
    if cfg.dataset == "swissroll":
        raise SystemExit(f"{PROG}: error: swissroll has no classes: use 8gaussians or 25gaussians")
    if not 0 <= cfg.mismatch_weight <= 1:
        raise SystemExit(f"{PROG}: error: --mismatch-weight takes [0, 1], not "
                         f"{cfg.mismatch_weight}")
    if cfg.dataset not in TOY_SETS and cfg.image_size not in (28, 32, 64):
        raise SystemExit(f"{PROG}: error: --image-size {cfg.image_size}: DCGAN takes 28, 32, 64")
    if cfg.dataset not in TOY_SETS and cfg.batch_size < 2:  # BatchNorm: the batch's spread
        raise SystemExit(f"{PROG}: error: --batch-size 1: BatchNorm needs 2 or more images a batch")
    if not (cfg.lr > 0 and 0 <= cfg.beta1 < 1):
        raise SystemExit(f"{PROG}: error: --lr must be positive and --beta1 in [0, 1)")

@torch.no_grad()
def generate(G, cfg, n_per_class, seed=1):
    """n_per_class samples of every class, class by class, from noise of their own; the same z for
    every class, so column j of the class grid shares z_j."""
    G.eval()
    device, K = next(G.parameters()).device, G.embed.num_embeddings
    z = torch.randn(n_per_class, cfg.z_dim,
                    generator=torch.Generator().manual_seed(cfg.seed + seed))
    x = torch.cat([G(z.to(device), torch.full((n_per_class,), k, device=device)).cpu()
                   for k in range(K)])
    G.train()
    return x, torch.arange(K).repeat_interleave(n_per_class)

# ------------------------------------------------------------------------- 4. toy sets, figures
def sample_toy_labelled(name, n, generator=None):
    """Points of a mixture and their labels: y ~ U{0..K-1}, x = centre_y + std * N(0, I)."""
    centres, std = toy_centres(name)
    y = torch.randint(len(centres), (n,), generator=generator)
    return centres[y] + std * torch.randn(n, 2, generator=generator), y

def conditional_mode_metrics(x, y, name):
    """on_target: the share of samples within 3 std of the mode they were asked for;
    nearest_is_asked: how often the nearest mode is the asked one; with mode_metrics' numbers."""
    centres, std = toy_centres(name)
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    on_target = ((x - centres[y]).norm(dim=1) < 3 * std).float().mean().item()
    nearest_is_asked = (torch.cdist(x, centres).argmin(1) == y).float().mean().item()
    return {**mode_metrics(x, name), "on_target": on_target, "nearest_is_asked": nearest_is_asked}

def plot_samples(cfg, step, G, D, classes):
    """2-D: G(z, y) coloured by the asked y over the data, and D(x, y = 0) over the plane (a
    matching-aware D accepts mode 0 only). Images: one row per class, the same z in each column."""
    K = len(classes)
    if cfg.dataset in TOY_SETS:
        fig = figure(f"{cfg.dataset}, step {step}", 1, 2)
        (x_fake, y), (x_real, y_real) = generate(G, cfg, 1200 // K), \
            sample_toy_labelled(cfg.dataset, 1000, torch.Generator().manual_seed(cfg.seed + 2))
        ax, colours = fig.axes[0], dict(c=y, cmap="turbo", vmin=-0.5, vmax=K - 0.5)  # K colours
        ax.scatter(*x_real.T.numpy(), s=30, c="lightgray", label="data")
        ax.scatter(*x_fake.T.numpy(), s=2, **colours, label="G(z, y), colour = y")
        for k, c in enumerate(toy_centres(cfg.dataset)[0]):
            ax.annotate(str(k), c.numpy(), xytext=(5, 5), textcoords="offset points", fontsize=7)
        g = torch.linspace(-2, 2, 150)
        grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
        device = next(D.parameters()).device
        with torch.no_grad():
            y0 = torch.zeros(len(grid), dtype=torch.long, device=device)
            D_grid = torch.sigmoid(D(grid.to(device), y0)).view(150, 150).cpu().numpy()
        fig.colorbar(fig.axes[1].contourf(g.numpy(), g.numpy(), D_grid, levels=20, cmap="RdBu_r",
                                          vmin=0, vmax=1), ax=fig.axes[1], label="D(x, y = 0)")
        fig.axes[1].scatter(*x_real[y_real != 0].T.numpy(), s=3, c="k", label="data, other modes")
        fig.axes[1].scatter(*x_real[y_real == 0].T.numpy(), s=3, c="yellow", label="data, mode 0")
        for ax in fig.axes[:2]:
            ax.set(xlim=(-2, 2), ylim=(-2, 2), aspect="equal")
            ax.legend(loc="lower right", fontsize=7)
    else:
        x_fake, _ = generate(G, cfg, 10)
        fig = figure(f"{cfg.dataset}, step {step}: row = class y, column = noise z")
        fig.set_size_inches(6, 0.6 * K + 1)
        fig.axes[0].imshow(image_grid(x_fake, 10), cmap="gray")
        h = x_fake.shape[2] + 2
        fig.axes[0].set(xticks=[], yticks=[h * (k + 0.5) for k in range(K)],
                        yticklabels=[name or "(top)" for name in classes])
    save_figure(fig, Path(cfg.out) / f"samples_{step}.png")

CLASS_NAMES = {"fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                 "Shirt", "Sneaker", "Bag", "Ankle boot"],
               "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                           "ship", "truck"]}

PROG = "cgan.py"
OPTIONS = [  # this script's options, written as COMMON's below
    ("--dataset", "8gaussians", "8gaussians or 25gaussians (label = mode), mnist, fashion-mnist, "
     "cifar10, or a folder of images with one sub-folder per class"),
    ("--steps", 3000, "generator updates"),
    ("--batch-size", (256, 64), "minibatch size m"),
    ("--lr", (5e-5, 2e-4), "Adam's learning rate for G and D (images: DCGAN's; in 2-D, 2e-4 "
     "leaves G's points jittering beyond 3 std of their mode)"),
    ("--beta1", 0.5, "Adam's beta1 (DCGAN's)"),
    ("--mismatch-weight", 0.5, "w in [0, 1], weight of (real x, wrong y') in L_D; 0: plain cGAN"),
    ("--d-steps", 1, "k, D updates per G update"),
    ("--z-dim", (2, 100), "dimension of the noise z"),
    ("--emb-dim", 16, "size of the label embedding e(y) in G and in D"),
    ("--width", (256, 64), "hidden units of the MLPs (2-D) or DCGAN's base channels (images)"),
    ("--num-samples", (2400, 1000), "samples written to samples.npz, as many for each class")]

# --- plumbing: the same in every script; skip on first read ---
TOY_SETS = ("8gaussians", "25gaussians", "swissroll")
COMMON = [  # flag, default, help; a default (a, b) is a for 2-D data, b for images; a list: choices
    ("--dataset", "8gaussians", "a 2-D toy set, mnist, fashion-mnist, cifar10 or an image folder"),
    ("--data-dir", "./data", "where datasets are found, or downloaded to"),
    ("--out", "", "the run's folder; empty: runs/<script>-<dataset>"),
    ("--image-size", 0, "pixels; 0: 28 for (fashion-)mnist, 32 for cifar10, 64 for a folder"),
    ("--seed", 0, "random seed; on a CPU the same seed gives the same numbers"),
    ("--device", ["auto", "cpu", "cuda"], "auto takes cuda when there is one, else cpu"),
    ("--log-every", 100, "steps between progress lines and log.csv rows"),
    ("--sample-every", 1000, "steps between sample figures and checkpoints"),
    ("--num-samples", (2500, 1000), "samples written to samples.npz at the end"),
    ("--overwrite", False, "start again even if --out holds a run")]
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

def parse_options(argv):
    p = argparse.ArgumentParser(PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, default, text in {row[0]: row for row in COMMON + OPTIONS}.values():  # OPTIONS win
        d = default[0] if type(default) in (list, tuple) else default
        shown = f"{d} for 2-D data, {default[1]} for images" if type(default) is tuple else d
        if d is False:
            p.add_argument(flag, action="store_true", help=text)
            continue
        p.add_argument(flag, default=default if type(default) is tuple else d,
                       help=text if shown == "" else f"{text} (default: {shown})",
                       choices=default if type(default) is list else None,
                       type=positive if type(d) is int and d > 0 else type(d))
    cfg = p.parse_args(argv)
    for key, value in vars(cfg).items():  # a pair of defaults: the first for 2-D data
        setattr(cfg, key, value[cfg.dataset not in TOY_SETS] if type(value) is tuple else value)
    sizes = {"mnist": 28, "fashion-mnist": 28, "cifar10": 32}
    cfg.image_size = cfg.image_size or sizes.get(cfg.dataset.split(":")[0], 64)
    run = getattr(cfg, "experiment", "train")
    cfg.out = cfg.out or f"runs/{PROG[:-3]}-{Path(cfg.dataset).name if run == 'train' else run}"
    return cfg

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

def batch_of(x, m):  # m images drawn with replacement, scaled to [-1, 1]
    return x[torch.randint(len(x), (m,), device=x.device)].float() / 127.5 - 1

def to_uint8(x):  # [-1, 1] floats N x C x H x W -> uint8 N x H x W x C, as numpy
    return ((x.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()

def pick_device(name):
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{PROG}: error: --device cuda is not available here; use auto or cpu")
    return "cuda" if name == "auto" and torch.cuda.is_available() else name.replace("auto", "cpu")

def start_run(cfg):
    """Refuse to overwrite a run; then a fresh log.csv and the options in config.json."""
    out = Path(cfg.out)
    if not cfg.overwrite and (out / "log.csv").exists():
        raise SystemExit(f"{PROG}: error: {out} holds a run: add --overwrite to start again, or "
                         "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "log.csv", "")
    write_atomic(out / "config.json", json.dumps(vars(cfg), indent=1))
    return time.time()

def save_checkpoint(cfg, parts, step):  # torch.load(path, weights_only=True) reads it back
    state = {"script": PROG, "options": vars(cfg), "step": step}
    torch.save({**state, **{k: part.state_dict() for k, part in parts.items()}}, b := io.BytesIO())
    write_atomic(Path(cfg.out) / "checkpoint.pt", b.getvalue())

def log_step(cfg, start, step, **values):
    """Stop at NaN or inf (the last checkpoint stays); every --log-every steps a row and a line."""
    values = {k: v.item() if torch.is_tensor(v) else float(v) for k, v in values.items()}
    if not all(map(math.isfinite, values.values())):
        raise SystemExit(f"{PROG}: error: a loss is NaN or inf at step {step}; {cfg.out}/checkpoint"
                         f".pt holds the last good state; start again with an --lr below {cfg.lr}")
    if step % cfg.log_every == 0 or step == cfg.steps:
        seconds = time.time() - start
        with open(Path(cfg.out) / "log.csv", "a") as f:  # the header first, then a row per call
            f.write(f"step,{','.join(values)},seconds\n" * (f.tell() == 0)
                    + ",".join(f"{v:.6g}" for v in (step, *values.values(), seconds)) + "\n")
        left = round((cfg.steps - step) * seconds / step)  # seconds, at the rate so far
        print(f"step {step}/{cfg.steps}  " + "  ".join(f"{k} {v:.4g}" for k, v in values.items())
              + f"  {step / seconds:.1f} steps/s, {left // 60}:{left % 60:02} left", flush=True)

def write_atomic(path, data):
    tmp = Path(f"{path}.tmp")
    tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)
    os.replace(tmp, path)

def plot_log(out):  # losses.png: one panel per column of log.csv
    cols = np.genfromtxt(Path(out) / "log.csv", delimiter=",", names=True, ndmin=1)
    names = [n for n in cols.dtype.names if n not in ("step", "seconds")]
    fig = figure(f"{out}/log.csv", 1, len(names))
    for ax, name in zip(fig.axes, names):
        ax.plot(cols["step"], cols[name]), ax.set(title=name, xlabel="step")
    save_figure(fig, Path(out) / "losses.png")

def figure(title, rows=1, cols=1):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(4.5 * cols + 1, 4 * rows), layout="constrained")
    fig.subplots(rows, cols), fig.suptitle(title)
    return fig

def save_figure(fig, path):
    fig.savefig(buffer := io.BytesIO(), format="png", dpi=90)
    write_atomic(path, buffer.getvalue())

def image_grid(x, ncol):  # N x C x H x W in [-1, 1] -> one uint8 picture, ncol images a row
    x = F.pad(torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2), (1, 1, 1, 1), value=255)
    (n, c, h, w), rows = x.shape, math.ceil(len(x) / ncol)
    x = torch.cat([x, torch.full((rows * ncol - n, c, h, w), 255, dtype=torch.uint8)])
    return x.view(rows, ncol, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, ncol * w, c).numpy()

def main(argv=None):
    cfg = parse_options(argv)
    torch.manual_seed(cfg.seed)
    G, out = train(cfg), Path(cfg.out)
    x, y = generate(G, cfg, max(1, cfg.num_samples // G.embed.num_embeddings), seed=3)
    x = x.numpy() if cfg.dataset in TOY_SETS else to_uint8(x)
    np.savez(buffer := io.BytesIO(), x=x, y=y.numpy())  # an equal number of samples for each class
    write_atomic(out / "samples.npz", buffer.getvalue())
    plot_log(out)
    if cfg.dataset in TOY_SETS:
        m = conditional_mode_metrics(x, y, cfg.dataset)
        write_atomic(out / "metrics.json", json.dumps(m))
        print(f"on the asked mode (within 3 std): {m['on_target']:.1%}, nearest mode the asked "
              f"one: {m['nearest_is_asked']:.1%}; modes captured {m['modes']}/{m['of']}")
    print(f"figures, samples.npz (x, y) and checkpoint.pt are in {out}/")

if __name__ == "__main__":
    main()
