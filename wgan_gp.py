"""wgan_gp.py - the Wasserstein GAN and three ways to keep its critic 1-Lipschitz, side by side.

JS is log 2 for any two distributions that do not overlap, so G gets no gradient from it (gan.py
--experiment js). The notes' answer is the earth mover's (Wasserstein-1) distance, the average
distance moved by the cheapest plan gamma for moving P_data's mass onto P_G's; by Kantorovich-
Rubinstein duality it is a max over critics D (a score, no sigmoid) that are 1-Lipschitz:
    W(P_data, P_G) = min_gamma E_(x,y)~gamma ||x - y|| = max_D E_x[D(x)] - E_z[D(G(z))].
Without that "smooth enough" constraint the max is infinite: on supports that do not overlap, D
can rise without bound on the data and fall without bound on G(z). --lipschitz says how:
  clip  clamp every weight to [-c, c] after each critic step      (WGAN, Arjovsky et al. 2017)
  gp    add lambda E[(||grad D(x^)|| - 1)^2] at x^ between real and fake samples
                                             (Improved WGAN, i.e. WGAN-GP, Gulrajani et al. 2017)
  sn    divide each layer's weight by its top singular value (Spectral Normalization, Miyato 2018)
The logged critic_objective is W only for the best 1-Lipschitz D: clipping gives a K-Lipschitz D,
K set by c, and K W; the penalty, for a shift theta, theta + theta^2 / (2 lambda).

Examples:
  python wgan_gp.py                          # 25 Gaussians with the penalty, ~4 min on 2 CPU cores
  python wgan_gp.py --lipschitz clip --out runs/clip  # the original WGAN; compare the figures
  python wgan_gp.py --dataset fashion-mnist  # 12 min on 2 CPU cores (paper: --n-critic 5 --lr 1e-4)
  python wgan_gp.py --experiment w-vs-js     # W grows with the separation, JS is stuck at log 2

Deviations: 2-D runs follow the WGAN-GP toy code (lambda = 0.1, batch 256, Adam betas (0.5, 0.9),
n_critic = 5) but with width 256, not 512, and lr 5e-4, not 1e-4, to converge in CPU minutes;
images take the paper's lambda = 10 and Adam betas (0, 0.9) with n_critic = 2 and lr 2e-4, not 5
and 1e-4, DCGAN-like nets and layer norm (GroupNorm, one group) in the gp critic. sn keeps WGAN-GP's
loss and Adam and, like Miyato et al., divides a conv kernel reshaped to C_out x (C_in k k): a pixel
lies in at most ceil(k/s)^2 k x k windows, so a stride-s convolution is at most ceil(k/s)-Lipschitz
(2 here) and the sn image critic at most 4-Lipschitz (8 at 64 px), not 1.
"""
import argparse, gzip, hashlib, io, json, math, os, sys, tarfile, time, urllib.request, zlib
from pathlib import Path
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# ------------------------------------------------------------------------- 1. the concept
def critic_objective(critic_real, critic_fake):
    # E_x[D(x)] - E_z[D(G(z))] on the critic's scores (no sigmoid); = W for the best 1-Lipschitz D
    return critic_real.mean() - critic_fake.mean()

def critic_loss(critic_real, critic_fake):
    # the critic ascends the objective: L_D = E[D(G(z))] - E[D(x)] (+ the penalty for gp)
    return -critic_objective(critic_real, critic_fake)

def generator_loss(critic_fake):
    # G lowers the objective; only its second term depends on G: L_G = -E_z[D(G(z))]
    return -critic_fake.mean()

def interpolate(x_real, x_fake):
    # x^ = eps x + (1 - eps) x~, eps ~ U[0, 1] once PER SAMPLE. The best critic has gradient norm 1
    # on lines joining points of the optimal coupling; independent pairs relax that (Proposition 1).
    eps = torch.rand(x_real.shape[0], *[1] * (x_real.dim() - 1), device=x_real.device)
    return eps * x_real + (1 - eps) * x_fake

def gradient_penalty(D, x_real, x_fake, lambda_gp):
    # lambda E_x^[(||grad_x^ D(x^)||_2 - 1)^2], the norm over ALL of a sample's dimensions;
    # create_graph=True because the penalty is itself differentiated w.r.t. the critic's weights
    x_hat = interpolate(x_real, x_fake).requires_grad_(True)
    grad, = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
    return lambda_gp * ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()

@torch.no_grad()
def clip_weights(D, c):
    # WGAN: w <- clip(w, -c, c) for every critic parameter, after every critic update
    for p in D.parameters():
        p.clamp_(-c, c)

class SpectralNorm(nn.Module):
    """A Linear or Conv2d layer used with W / sigma(W), sigma the largest singular value of W (a
    kernel reshaped to C_out x C_in k k). Power iteration: v <- W^T u / |W^T u|, u <- W v / |W v|
    makes u, v the top singular vectors and u^T W v -> sigma. One iteration per forward call in
    training mode, u kept: twice per critic step (D(x), D(G(z))), once per G step."""
    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.register_buffer("u", F.normalize(torch.randn(layer.weight.shape[0]), dim=0))

    def sigma(self):
        W = self.layer.weight.flatten(1)
        with torch.no_grad():
            v = F.normalize(W.t() @ self.u, dim=0)
            u = F.normalize(W @ v, dim=0)
            if self.training:
                self.u.copy_(u)
        return u @ W @ v  # differentiable in W; u and v are this call's constants

    def forward(self, x):  # the layer's own computation with W / sigma(W) in place of W
        W = self.layer.weight / self.sigma()
        return torch.func.functional_call(self.layer, {"weight": W}, x)

# ------------------------------------------------------------------------- 2. the models
def mlp(n_in, width, n_out, sn=False):
    wrap, layers = SpectralNorm if sn else (lambda m: m), []
    for i in range(3):
        layers += [wrap(nn.Linear(n_in if i == 0 else width, width)), nn.ReLU()]
    return nn.Sequential(*layers, wrap(nn.Linear(width, n_out)))

def dcgan_pair(z_dim, channels, size, width, lipschitz):
    """G: transposed convolutions doubling the resolution. The critic: strided convolutions, no
    batch norm (a score would hang on the batch; the penalty is per sample); gp: layer norm."""
    n = 3 if size == 64 else 2
    s0, ch = size // 2 ** n, [width * 2 ** (n - 1 - i) for i in range(n)]  # 28 -> 7, [128, 64]
    G = [nn.Linear(z_dim, ch[0] * s0 * s0), nn.BatchNorm1d(ch[0] * s0 * s0), nn.ReLU(),
         nn.Unflatten(1, (ch[0], s0, s0))]
    for i in range(n - 1):
        G += [nn.ConvTranspose2d(ch[i], ch[i + 1], 4, 2, 1), nn.BatchNorm2d(ch[i + 1]), nn.ReLU()]
    G = nn.Sequential(*G, nn.ConvTranspose2d(ch[-1], channels, 4, 2, 1), nn.Tanh())
    wrap = SpectralNorm if lipschitz == "sn" else (lambda m: m)
    norm = (lambda c: nn.GroupNorm(1, c)) if lipschitz == "gp" else (lambda c: nn.Identity())
    D = [wrap(nn.Conv2d(channels, ch[-1], 4, 2, 1)), nn.LeakyReLU(0.2)]
    for i in reversed(range(n - 1)):
        D += [wrap(nn.Conv2d(ch[i + 1], ch[i], 4, 2, 1)), norm(ch[i]), nn.LeakyReLU(0.2)]
    return G, nn.Sequential(*D, nn.Flatten(), wrap(nn.Linear(ch[0] * s0 * s0, 1)))

def optimizer(cfg, params):
    # WGAN used RMSProp: with a momentum-based optimiser (Adam) its training became unstable at
    # times, which the paper puts down to the critic's loss being non-stationary. WGAN-GP: Adam.
    if cfg.lipschitz == "clip":
        return torch.optim.RMSprop(params, lr=cfg.lr)
    return torch.optim.Adam(params, lr=cfg.lr, betas=(0.5 if cfg.dataset in TOY_SETS else 0.0, 0.9))

# ------------------------------------------------------------------------- 3. training
def train(cfg):
    device, toy = pick_device(cfg.device), cfg.dataset in TOY_SETS
    cfg.lr = cfg.lr or (5e-5 if cfg.lipschitz == "clip" else 5e-4 if toy else 2e-4)  # --lr 0
    if min(cfg.lr, cfg.lambda_gp, cfg.clip) <= 0:
        raise SystemExit(f"{PROG}: error: --lr, --lambda-gp and --clip must be positive")
    if not toy and cfg.image_size not in (28, 32, 64):
        raise SystemExit(f"{PROG}: error: --image-size {cfg.image_size}: the nets take 28, 32, 64")
    if not toy and cfg.batch_size < 2:  # G's BatchNorm divides by the batch's spread
        raise SystemExit(f"{PROG}: error: --batch-size 1: BatchNorm needs 2 or more images a batch")
    x_data = None if toy else load_data(cfg.dataset, cfg.data_dir, cfg.image_size)[0].to(device)
    G, D = (mlp(cfg.z_dim, cfg.width, 2), mlp(2, cfg.width, 1, sn=cfg.lipschitz == "sn")) if toy \
        else dcgan_pair(cfg.z_dim, x_data.shape[1], cfg.image_size, cfg.width, cfg.lipschitz)
    G, D, m = G.to(device), D.to(device), cfg.batch_size
    opt_G, opt_D = optimizer(cfg, G.parameters()), optimizer(cfg, D.parameters())
    parts = {"G": G, "D": D, "opt_G": opt_G, "opt_D": opt_D}  # what a checkpoint holds
    start = start_run(cfg)
    fixed = torch.Generator().manual_seed(cfg.seed + 1)  # the figures' noise, fixed for the run
    z_fixed = torch.randn(1000 if toy else 64, cfg.z_dim, generator=fixed)
    for step in range(1, cfg.steps + 1):
        # 1. n_critic times: sample real x, noise z (and eps inside the penalty); update the critic
        #    by ascending E[D(x)] - E[D(G(z))] (minus the penalty, gp) with G fixed; clip (clip).
        for _ in range(cfg.n_critic):
            x = sample_toy(cfg.dataset, m).to(device) if toy else batch_of(x_data, m)
            with torch.no_grad():
                x_fake = G(torch.randn(m, cfg.z_dim, device=device))
            loss_D = critic_loss(D(x), D(x_fake))
            gp = gradient_penalty(D, x, x_fake, cfg.lambda_gp) if cfg.lipschitz == "gp" else 0.0
            opt_D.zero_grad()
            (loss_D + gp).backward()
            opt_D.step()
            if cfg.lipschitz == "clip":
                clip_weights(D, cfg.clip)
        # 2. Sample z; update G by descending -E[D(G(z))] with the critic fixed (it carries over).
        loss_G = generator_loss(D(G(torch.randn(m, cfg.z_dim, device=device))))
        opt_G.zero_grad()
        loss_G.backward()
        opt_G.step()
        # 3. Log the critic's objective (see the docstring for what it estimates).
        log_step(cfg, start, step, critic_objective=-loss_D, gp=gp, loss_G=loss_G)
        if step % cfg.sample_every == 0 or step == cfg.steps:
            plot_samples(cfg, step, G, D, z_fixed.to(device))
            save_checkpoint(cfg, parts, step)
    return G.eval()

# ------------------------------------------------------------------------- 4. W against JS
def gan_discriminator_loss(logit_real, logit_fake):
    # gan.py's L_D = -V(D, G) on logits; max_D V = 2 JS - 2 log 2, so JS >= (V + 2 log 2) / 2
    return F.softplus(-logit_real).mean() + F.softplus(logit_fake).mean()

def train_critic(sample_real, sample_fake, steps, loss="wgan", lambda_gp=10.0, seed=0):
    """Between two fixed samplers, on the CPU (it is small): a critic with the penalty and Adam
    1e-2, betas (0.5, 0.9), or for loss="gan" gan.py's discriminator (its MLP, L_D, Adam 1e-3)."""
    torch.manual_seed(seed)
    D = mlp(sample_real(1).shape[1], 64, 1)
    opt = torch.optim.Adam(D.parameters(), lr=1e-2, betas=(0.5, 0.9)) if loss == "wgan" else \
        torch.optim.Adam(D.parameters(), lr=1e-3)
    for _ in range(steps):
        x_real, x_fake = sample_real(512), sample_fake(512)
        L = gan_discriminator_loss(D(x_real), D(x_fake)) if loss == "gan" else \
            critic_loss(D(x_real), D(x_fake)) + gradient_penalty(D, x_real, x_fake, lambda_gp)
        opt.zero_grad()
        L.backward()
        opt.step()
    return D

W_COLUMNS = ["case", "theta", "critic_objective", "w_exact", "w_penalised_optimum",
             "js_lower_bound", "grad_wgan", "grad_gan_minimax"]

def w_vs_js_experiment(cfg, lam=100.0):
    """gan.py --experiment js (which also integrates the exact JS) with a critic beside its D. P_G
    is P_data moved by theta: (a) N(0, I) against N((theta, 0), I); (b) the WGAN paper's parallel
    lines (0, U[0, 1]) against (theta, U[0, 1]), JS = log 2 for all theta != 0. W = |theta| in both
    (all mass moves by |theta|); lambda = 100 keeps the penalty's bias theta^2 / (2 lambda) low."""
    rows = []
    gaussians = lambda n: torch.randn(n, 2)
    lines = lambda n: torch.stack([torch.zeros(n), torch.rand(n)], 1)
    for case, base, thetas in [("gaussians", gaussians, [0, 0.5, 1, 2, 3, 4, 6, 8]),
                               ("parallel lines", lines, [0, 0.1, 0.25, 0.5, 1, 2, 4])]:
        for theta in thetas:
            shift = torch.tensor([float(theta), 0.0])
            critic, D = (train_critic(base, lambda n: base(n) + shift, cfg.exp_steps, loss=loss,
                                      lambda_gp=lam, seed=cfg.seed)
                         for loss in ("wgan", "gan"))
            torch.manual_seed(cfg.seed + 1)
            th = torch.tensor(float(theta), requires_grad=True)  # G(z) = z + (th, 0)
            x_real, x_fake = base(20000), base(20000) + torch.stack([th, torch.zeros_like(th)])
            W = critic_objective(critic(x_real), critic(x_fake)).item()
            V = -gan_discriminator_loss(D(x_real), D(x_fake)).item()
            g_w = torch.autograd.grad(generator_loss(critic(x_fake)), th)[0].abs().item()
            g_js = torch.autograd.grad(-F.softplus(D(x_fake)).mean(), th)[0].abs().item()  # minimax
            rows.append(dict(zip(W_COLUMNS, [case, theta, W, abs(theta), abs(theta) + theta ** 2 /
                                             (2 * lam), (V + 2 * math.log(2)) / 2, g_w, g_js])))
            print(f"{case}, theta {theta}: critic {W:.3f}, JS >= {(V + math.log(4)) / 2:.3f}")
    write_atomic(Path(cfg.out) / "w_vs_js.csv", "".join(",".join(map(str, r)) + "\n" for r in
                                                       [W_COLUMNS] + [r.values() for r in rows]))
    plot_w_vs_js(rows, Path(cfg.out) / "w_vs_js.png")
    return rows

# ------------------------------------------------------------------------- 5. figures
def plot_samples(cfg, step, G, D, z):
    """2-D: the critic D(x) as a filled contour, data (black), G(z) (orange) and on each fake the
    push grad_x D(x) = -grad_x L_G (green). Images: a grid of G(z)."""
    fig, x_fake = figure(f"{cfg.dataset}, {cfg.lipschitz}, step {step}"), G.eval()(z).detach()
    ax = fig.axes[0]
    if cfg.dataset in TOY_SETS:
        g = torch.linspace(-3, 3, 150) * (2.5 / 3 if cfg.dataset == "swissroll" else 1)
        grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).to(z.device)
        critic = D.eval()(grid)[..., 0].detach().cpu().numpy()
        fig.colorbar(ax.contourf(*grid.cpu().numpy().T, critic.T, levels=20, cmap="RdBu_r"), ax=ax,
                     label="critic D(x)")
        x_data = sample_toy(cfg.dataset, 1000, torch.Generator().manual_seed(cfg.seed + 2)).numpy()
        x_arrow = x_fake[:200].requires_grad_(True)
        push = torch.autograd.grad(D(x_arrow).sum(), x_arrow)[0]
        ax.scatter(*x_data.T, s=3, c="k", label="data")
        ax.scatter(*x_fake.cpu().numpy().T, s=3, c="orange", label="G(z)")
        ax.quiver(*x_arrow.detach().cpu().numpy().T, *push.cpu().numpy().T, color="green",
                  width=0.003, label="grad D (the push on G)")
        ax.set(xlim=(g[0].item(), g[-1].item()), ylim=(g[0].item(), g[-1].item()), aspect="equal")
        ax.legend(loc="lower right", fontsize=7)
    else:
        ax.imshow(image_grid(x_fake, 8), cmap="gray")
        ax.set_axis_off()
    save_figure(fig, Path(cfg.out) / f"samples_{step}.png")
    G.train(), D.train()

def plot_w_vs_js(rows, path):
    fig = figure("distance (top) and |dL_G/dtheta| (bottom) against the separation theta", 2, 2)
    for col, case in enumerate(["gaussians", "parallel lines"]):
        r = {k: np.array([row[k] for row in rows if row["case"] == case]) for k in W_COLUMNS[1:]}
        top, bottom = fig.axes[col], fig.axes[2 + col]
        top.plot(r["theta"], r["critic_objective"], "o-", label=f"{case}: critic objective")
        top.plot(r["theta"], r["w_exact"], "k--", label="W = |theta|")
        top.plot(r["theta"], r["w_penalised_optimum"], "c:", label="penalised optimum")
        top.plot(r["theta"], r["js_lower_bound"], "s-", label="JS bound, GAN discriminator")
        top.axhline(math.log(2), color="gray", lw=0.8, label="log 2")
        bottom.semilogy(r["theta"], np.maximum(r["grad_wgan"], 1e-12), "o-", label="WGAN")
        bottom.semilogy(r["theta"], np.maximum(r["grad_gan_minimax"], 1e-12), "s-", label="GAN")
        top.legend(fontsize=7), bottom.legend(fontsize=7), bottom.set_xlabel("theta")
    save_figure(fig, path)

PROG = "wgan_gp.py"
OPTIONS = [  # this script's options, written as COMMON's below; a default of 0 is explained
    ("--dataset", "25gaussians", "a 2-D toy set, mnist, fashion-mnist, cifar10 or an image folder"),
    ("--experiment", ["train", "w-vs-js"], "train, or w-vs-js (its own nets and Adam: no --lr)"),
    ("--lipschitz", ["gp", "clip", "sn"], "how the critic is kept 1-Lipschitz"),
    ("--steps", (6000, 4000), "generator updates"),
    ("--batch-size", (256, 64), "minibatch size m"),
    ("--lr", 0.0, "training's rate; 0: Adam 5e-4 (2-D) or 2e-4 (images), RMSProp 5e-5 (clip)"),
    ("--n-critic", (5, 2), "critic updates per G update; the papers use 5 (2: images on a CPU)"),
    ("--lambda-gp", (0.1, 10.0), "penalty weight lambda (toy code's, paper's); w-vs-js: 100"),
    ("--clip", 0.01, "clip: weights are clamped to [-c, c] (the WGAN paper's c)"),
    ("--z-dim", (2, 100), "dimension of the noise z"),
    ("--width", (256, 64), "hidden units of the MLPs (2-D) or base channels (images)"),
    ("--exp-steps", 1000, "w-vs-js: critic (and D) updates at each separation")]

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
    if cfg.experiment == "w-vs-js":
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        return w_vs_js_experiment(cfg)
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
