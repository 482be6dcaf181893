"""gan.py - the original GAN (Goodfellow et al., 2014), one file to read beside the lecture notes.

G turns noise z ~ p(z) = N(0, I) into samples with law P_G, aiming at G* = arg min_G Div(P_G,
P_data); D, a binary classifier, measures that divergence from samples of P_G and x ~ P_data.
Algorithm 1: fix G, train D for k steps; fix D, train G; repeat.

    min_G max_D V(D, G) = E_{x~P_data}[log D(x)] + E_{z~p(z)}[log(1 - D(G(z)))]

The best D is D*(x) = p_data(x) / (p_data(x) + p_G(x)) and max_D V = 2 JS(P_data || P_G) - 2 log 2,
so G lowers the Jensen-Shannon divergence. Once the supports do not overlap, JS = log 2 at any
distance (and max_D V = 0: the notes' "always log 2" is JS, not V). With a near-optimal D the
minimax loss log(1 - D(G(z))) then gives G almost no gradient; -log D(G(z)) still gives one.
Notes -> code: the notes' sample y is x here; note 004's J(theta, phi) is V, with theta = G's
parameters, phi = D's and p_theta = P_G.

Examples:
  python gan.py                          # 8 Gaussians in 2-D, about 30 s on 2 CPU cores
  python gan.py --dataset 25gaussians    # harder: watch for mode dropping and mode collapse
  python gan.py --dataset fashion-mnist  # DCGAN, 4.5 min on 2 CPU cores; mnist, cifar10, a folder
  python gan.py --experiment js          # JS saturates at log 2, the minimax gradient vanishes
  python gan.py --g-loss minimax         # the game as written, k = 1 as in the paper (--d-steps k)

Deviations from the paper: D outputs a logit l, D(x) = sigmoid(l), log D = -softplus(-l) (same
numbers, no log 0); G's default loss is the non-saturating one the paper advises in practice; images
use DCGAN nets and Adam (Radford et al., 2016), not maxout MLPs and SGD; batches with replacement.
"""
import argparse, gzip, hashlib, io, json, math, os, sys, tarfile, time, urllib.request, zlib
from pathlib import Path
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# ------------------------------------------------------------------------- 1. the concept
# D returns a logit l (logit_real on data, logit_fake on G(z)); D(x) = sigmoid(l), so
# log D(x) = -softplus(-l) and log(1 - D(x)) = -softplus(l), exact for any l.
def value_function(logit_real, logit_fake):
    # V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))]
    return -F.softplus(-logit_real).mean() - F.softplus(logit_fake).mean()

def discriminator_loss(logit_real, logit_fake):
    # D ascends V: it descends L_D = -V, the cross-entropy with label 1 for x and 0 for G(z)
    return -value_function(logit_real, logit_fake)

def generator_loss_minimax(logit_fake):
    # L_G = E_z[log(1 - D(G(z)))]; dL_G/dl = -sigmoid(l) -> 0 when D rejects fakes: it saturates
    return -F.softplus(logit_fake).mean()

def generator_loss_nonsaturating(logit_fake):
    # L_G = -E_z[log D(G(z))]; the same fixed point, but dL_G/dl = -(1 - sigmoid(l)) -> -1 there
    return F.softplus(-logit_fake).mean()

GENERATOR_LOSSES = {"nonsaturating": generator_loss_nonsaturating,
                    "minimax": generator_loss_minimax}

def optimal_discriminator(p_data, p_g):
    # D*(x) = p_data(x) / (p_data(x) + p_G(x))
    return p_data / (p_data + p_g)

def js_lower_bound(V):
    # max_D V = 2 JS - 2 log 2, so JS >= (V(D, G) + 2 log 2) / 2 for every D, with equality at D*
    return (V + 2 * math.log(2)) / 2

# ------------------------------------------------------------------------- 2. the models
def mlp(n_in, width, n_out):
    return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(), nn.Linear(width, n_out))

def dcgan_pair(z_dim, channels, size, width):
    """DCGAN's G and D for 28, 32 or 64 px (Radford et al.): stride-2 (transposed) convolutions,
    BatchNorm, ReLU in G, LeakyReLU(0.2) in D, tanh output, no pooling, weights ~ N(0, 0.02)."""
    n = 3 if size == 64 else 2                                         # resolution doublings
    s0, ch = size // 2 ** n, [width * 2 ** (n - 1 - i) for i in range(n)]  # 28 -> 7, [128, 64]
    G = [nn.Linear(z_dim, ch[0] * s0 * s0, bias=False), nn.BatchNorm1d(ch[0] * s0 * s0), nn.ReLU(),
         nn.Unflatten(1, (ch[0], s0, s0))]
    for i in range(n - 1):
        G += [nn.ConvTranspose2d(ch[i], ch[i + 1], 4, 2, 1, bias=False), nn.BatchNorm2d(ch[i + 1]),
              nn.ReLU()]
    G += [nn.ConvTranspose2d(ch[-1], channels, 4, 2, 1), nn.Tanh()]
    D = [nn.Conv2d(channels, ch[-1], 4, 2, 1), nn.LeakyReLU(0.2)]  # no BatchNorm at D's input
    for i in reversed(range(n - 1)):
        D += [nn.Conv2d(ch[i + 1], ch[i], 4, 2, 1, bias=False), nn.BatchNorm2d(ch[i]),
              nn.LeakyReLU(0.2)]
    G, D = nn.Sequential(*G), nn.Sequential(*D, nn.Flatten(), nn.Linear(ch[0] * s0 * s0, 1))
    for m in [*G.modules(), *D.modules()]:  # BatchNorm scales ~ N(1, 0.02)
        if hasattr(m, "weight"):
            nn.init.normal_(m.weight, 1.0 if "Norm" in type(m).__name__ else 0.0, 0.02)
    return G, D

# ------------------------------------------------------------------------- 3. training
def train(cfg):
    device, toy = pick_device(cfg.device), cfg.dataset in TOY_SETS
    if not toy and cfg.image_size not in (28, 32, 64):
        raise SystemExit(f"{PROG}: error: --image-size {cfg.image_size}: DCGAN takes 28, 32, 64")
    if not toy and cfg.batch_size < 2:  # BatchNorm divides by the batch's spread
        raise SystemExit(f"{PROG}: error: --batch-size 1: BatchNorm needs 2 or more images a batch")
    if not (cfg.lr > 0 and 0 <= cfg.beta1 < 1):
        raise SystemExit(f"{PROG}: error: --lr must be positive and --beta1 in [0, 1)")
    x_data = None if toy else load_data(cfg.dataset, cfg.data_dir, cfg.image_size)[0].to(device)
    G, D = (mlp(cfg.z_dim, cfg.width, 2), mlp(2, cfg.width, 1)) if toy else \
        dcgan_pair(cfg.z_dim, x_data.shape[1], cfg.image_size, cfg.width)
    G, D, m = G.to(device), D.to(device), cfg.batch_size
    opt_G = torch.optim.Adam(G.parameters(), cfg.lr, betas=(cfg.beta1, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), cfg.lr, betas=(cfg.beta1, 0.999))
    parts = {"G": G, "D": D, "opt_G": opt_G, "opt_D": opt_D}  # what a checkpoint holds
    start = start_run(cfg)
    fixed = torch.Generator().manual_seed(cfg.seed + 1)  # the figures' noise, fixed for the run
    z_fixed = torch.randn(1000 if toy else 64, cfg.z_dim, generator=fixed)
    for step in range(1, cfg.steps + 1):
        # D is not re-initialised between rounds: in theory each round trains it from scratch to
        # max_D V, which is too slow; last round's D is already near the new optimum (note 001).
        # 1. k times: sample m noises z ~ p(z) and m examples x ~ P_data; update D by ascending
        #    V(D, G), i.e. descending L_D = -V, with G fixed.
        for _ in range(cfg.d_steps):
            x = sample_toy(cfg.dataset, m).to(device) if toy else batch_of(x_data, m)
            with torch.no_grad():
                x_fake = G(torch.randn(m, cfg.z_dim, device=device))
            logit_real, logit_fake = D(x), D(x_fake)
            loss_D = discriminator_loss(logit_real, logit_fake)
            opt_D.zero_grad()
            loss_D.backward()
            opt_D.step()
        # 2. Sample m new noises; update G by descending L_G with D fixed (only opt_G steps).
        loss_G = GENERATOR_LOSSES[cfg.g_loss](D(G(torch.randn(m, cfg.z_dim, device=device))))
        opt_G.zero_grad()
        loss_G.backward()
        opt_G.step()
        # 3. Watch D(x) and D(G(z)): at the game's equilibrium both are 1/2.
        log_step(cfg, start, step, loss_D=loss_D, loss_G=loss_G,
                 D_x=torch.sigmoid(logit_real).mean(), D_G_z=torch.sigmoid(logit_fake).mean())
        if step % cfg.sample_every == 0 or step == cfg.steps:
            plot_samples(cfg, step, G, D, z_fixed.to(device))
            save_checkpoint(cfg, parts, step)
    return G.eval()

# ------------------------------------------------------------------------- 4. the JS experiment
def train_discriminator(sample_real, sample_fake, steps, batch=512, width=64, lr=1e-3, seed=0):
    """A D trained towards D* between two fixed samplers (on the CPU: it is small)."""
    torch.manual_seed(seed)
    D = mlp(sample_real(1).shape[1], width, 1)
    opt = torch.optim.Adam(D.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        discriminator_loss(D(sample_real(batch)), D(sample_fake(batch))).backward()
        opt.step()
    return D

def js_exact_gaussians(theta, n=40001):
    """JS(N(0, 1) || N(theta, 1)) by the trapezoid rule; in 2-D only the axis along theta counts."""
    x = np.linspace(-12.0, 12.0 + abs(theta), n)
    p, q = (np.exp(-(x - mu) ** 2 / 2) / math.sqrt(2 * math.pi) for mu in (0, theta))
    m = (p + q) / 2  # JS(P || Q) = KL(P || M) / 2 + KL(Q || M) / 2 with M = (P + Q) / 2
    f = p * np.log(np.maximum(p, 1e-300) / m) / 2 + q * np.log(np.maximum(q, 1e-300) / m) / 2
    return float(((f[1:] + f[:-1]) / 2 * np.diff(x)).sum())

JS_COLUMNS = ["case", "theta", "V", "js_lower_bound", "js_exact", "grad_minimax",
              "grad_nonsaturating", "mean_abs_D_minus_D_star"]

def js_experiment(cfg):
    """Why JS fails (note 001): P_data and P_G lie on low-dimensional manifolds that hardly overlap,
    and even if they overlapped, D sees finitely many samples and separates them perfectly: JS is
    log 2 at any distance. Here P_G is P_data moved by theta along the first axis, for (a) N(0, I)
    and (b) the WGAN paper's parallel lines (0, U[0, 1]), disjoint once theta != 0. At each theta:
    a trained D, its JS bound, G's gradient dL_G/dtheta for both losses, (a) mean |D - D*|."""
    gaussians, rows = (lambda n: torch.randn(n, 2)), []
    lines = lambda n: torch.stack([torch.zeros(n), torch.rand(n)], 1)
    for case, base, thetas in [("gaussians", gaussians, [0, .5, 1, 1.5, 2, 3, 4, 5, 6, 8]),
                               ("parallel lines", lines, [0, .05, .1, .25, .5, 1, 2, 4])]:
        for theta in thetas:
            shift, th = torch.tensor([theta, 0.0]), torch.tensor(float(theta), requires_grad=True)
            D = train_discriminator(base, lambda n: base(n) + shift, cfg.js_steps, seed=cfg.seed)
            x_real, x_fake = base(20000), base(20000) + torch.stack([th, 0 * th])  # G(z): z + shift
            logit_real, logit_fake = D(x_real), D(x_fake)
            V = value_function(logit_real, logit_fake).item()
            g_mm, g_ns = [torch.autograd.grad(L(logit_fake), th, retain_graph=True)[0].abs().item()
                          for L in (generator_loss_minimax, generator_loss_nonsaturating)]
            row = [case, theta, V, js_lower_bound(V), math.log(2) * (theta > 0), g_mm, g_ns, ""]
            if base is gaussians:  # the exact JS by integration, D* from the two densities
                x = torch.cat([x_real, x_fake.detach()]).double()
                D_star = optimal_discriminator(*(torch.exp(-((x - mu) ** 2).sum(1) / 2)
                                                 for mu in (0, shift.double())))
                D_x = torch.sigmoid(D(x.float())[:, 0]).double()
                row[4], row[7] = js_exact_gaussians(theta), (D_x - D_star).abs().mean().item()
            rows.append(dict(zip(JS_COLUMNS, row)))
            print(f"{case}, theta {theta}: JS >= {row[3]:.4f} (exact {row[4]:.4f}), |dL_G/dtheta| "
                  f"minimax {g_mm:.1e}, non-saturating {g_ns:.1e}", flush=True)
    write_atomic(Path(cfg.out) / "js.csv", "".join(",".join(map(str, r)) + "\n" for r in
                                                   [JS_COLUMNS] + [r.values() for r in rows]))
    plot_js(rows, Path(cfg.out) / "js.png")
    return rows

# ------------------------------------------------------------------------- 5. figures
def plot_samples(cfg, step, G, D, z):
    """2-D: D(x) as a filled contour under the data (black) and G(z) (orange); images: G(z)."""
    fig, x_fake = figure(f"{cfg.dataset}, step {step}"), G.eval()(z).detach()
    ax = fig.axes[0]
    if cfg.dataset in TOY_SETS:
        g = torch.linspace(-3, 3, 150) * (2.5 / 3 if cfg.dataset == "swissroll" else 1)
        grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).to(z.device)
        D_grid = torch.sigmoid(D(grid)[..., 0]).detach().cpu().numpy()
        fig.colorbar(ax.contourf(*grid.cpu().numpy().T, D_grid.T, levels=20, cmap="RdBu_r", vmin=0,
                                 vmax=1), ax=ax, label="D(x)")
        x_data = sample_toy(cfg.dataset, 1000, torch.Generator().manual_seed(cfg.seed + 2)).numpy()
        ax.scatter(*x_data.T, s=3, c="k", label="data")
        ax.scatter(*x_fake.cpu().numpy().T, s=3, c="orange", label="G(z)")
        ax.set(xlim=(g[0].item(), g[-1].item()), ylim=(g[0].item(), g[-1].item()), aspect="equal")
        ax.legend(loc="lower right", fontsize=7)
    else:
        ax.imshow(image_grid(x_fake, 8), cmap="gray")
        ax.set_axis_off()
    save_figure(fig, Path(cfg.out) / f"samples_{step}.png")
    G.train()

def plot_js(rows, path):
    fig = figure("JS (top) and |dL_G/dtheta| through a trained D (bottom)", 2, 2)
    for col, case in enumerate(["gaussians", "parallel lines"]):
        r = {k: np.array([row[k] for row in rows if row["case"] == case]) for k in JS_COLUMNS[1:7]}
        top, bottom = fig.axes[col], fig.axes[2 + col]
        top.plot(r["theta"], r["js_lower_bound"], "o-", label=f"{case}: (V(D, G) + 2 log 2) / 2")
        top.plot(r["theta"], r["js_exact"], "k--", label="exact JS")
        top.axhline(math.log(2), color="gray", lw=0.8, label="log 2")
        bottom.semilogy(r["theta"], np.maximum(r["grad_minimax"], 1e-12), "o-", label="minimax")
        bottom.semilogy(r["theta"], r["grad_nonsaturating"], "s-", label="non-saturating")
        top.legend(), bottom.legend(), bottom.set_xlabel("theta")
    save_figure(fig, path)

PROG = "gan.py"
OPTIONS = [  # this script's options, written as COMMON's below
    ("--experiment", ["train", "js"], "train a GAN, or js: JS and G's gradient as supports part"),
    ("--steps", 4000, "generator updates"),
    ("--batch-size", (256, 64), "minibatch size m"),
    ("--lr", 2e-4, "Adam's learning rate for G and D (DCGAN's)"),
    ("--beta1", 0.5, "Adam's beta1; DCGAN's 0.5 steadies GAN training"),
    ("--g-loss", ["nonsaturating", "minimax"], "G's loss: -log D(G(z)), or log(1 - D(G(z)))"),
    ("--d-steps", 1, "k, D updates per G update (Algorithm 1; the paper used k = 1)"),
    ("--z-dim", (2, 100), "dimension of the noise z"),
    ("--width", (256, 64), "hidden units of the MLPs (2-D) or DCGAN's base channels (images)"),
    ("--js-steps", 1000, "--experiment js: D updates at each separation")]

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
    if cfg.experiment == "js":
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        return js_experiment(cfg)
    G, out = train(cfg), Path(cfg.out)
    with torch.no_grad():  # samples.npz: G(z) for fresh noise
        z = torch.randn(cfg.num_samples, cfg.z_dim)
        x = torch.cat([G(zb.to(next(G.parameters()).device)).cpu() for zb in z.split(500)])
    x = x.numpy() if cfg.dataset in TOY_SETS else to_uint8(x)
    np.savez(buffer := io.BytesIO(), x=x)
    write_atomic(out / "samples.npz", buffer.getvalue())
    plot_log(out)
    if cfg.dataset in TOY_SETS[:2]:
        write_atomic(out / "metrics.json", json.dumps(m := mode_metrics(x, cfg.dataset)))
        print(f"modes captured {m['modes']}/{m['of']}, high quality {m['high_quality']:.1%}")
    print(f"figures, samples.npz and checkpoint.pt are in {out}/")

if __name__ == "__main__":
    main()
