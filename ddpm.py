"""ddpm.py - denoising diffusion probabilistic models (Ho et al., 2020), forwards and backwards.

The diffusion process q, a fixed Markov chain, adds Gaussian noise of variance beta_t at each of T
steps until x_T ~ N(0, I); the reverse process p_theta, also a Markov chain, removes it one step at
a time. Any x_t follows from x_0 in one step, with ONE eps ~ N(0, I) for all t steps' noise:
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,  alpha_bar_t = prod_{s<=t} (1 - beta_s)
A noise predictor learns it, L_simple = E || eps - eps_theta(x_t, t) ||^2 (Algorithm 1), and
Algorithm 2 samples from x_T ~ N(0, I) down to x_0, with z ~ N(0, I) (z = 0 at t = 1):
    x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_t) + sigma_t z.
Notes -> code: note 000 trains on one step's noise, Picture^(k-1) + Noise^(k) = Picture^(k); eps
is the t steps' noises in one. Its denoise module is `p_sample`; a class label y is its text.

Examples:
  python ddpm.py                          # 25 Gaussians in 2-D, both processes drawn, ~2 min
  python ddpm.py --dataset mnist          # or fashion-mnist: 3,000 steps + 1,000 DDIM-50, 11.5 min
  python ddpm.py --dataset fashion-mnist --cond --guidance 3 --out runs/guided   # classifier-free
  python ddpm.py --dataset mnist --sampler ancestral --num-samples 100   # Algorithm 2: T steps

Deviations from the paper: beta_t runs linearly from 0.1 / T to 20 / T (the paper's 1e-4 to 0.02
at T = 1000; Nichol & Dhariwal's rescaling); sigma_t^2 = beta_tilde_t, one of the paper's two; a
small U-Net (a residual block per resolution, no attention, no dropout); Adam at 1e-3 after 200
warm-up steps, decayed linearly to 0 (the paper: 2e-4 after 5,000, constant, 800k steps of 128);
EMA decay 0.999 (0.9999); gradient-norm clip 1; batches with replacement. Images: samples.npz and
the sample figures by DDIM-50 (Song et al., 2021). x0_hat is never clipped to [-1, 1] (clipping
measured no difference). --guidance 1 is the conditional model (Ho & Salimans' w = 0).
"""
import argparse, copy, gzip, hashlib, io, json, math, os, sys, tarfile, time, urllib.request, zlib
from pathlib import Path
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# ------------------------------------------------------------------------- 1. the concept
class Schedule:  # tables of T + 1 entries indexed by t; t = 0 is the data: beta_0 = 0
    def __init__(self, T):
        # beta_t linear from 1e-4 to 0.02 at T = 1000; any T scales both ends by 1000 / T (<= 0.999)
        beta = torch.linspace(1e-4, 0.02, T, dtype=torch.float64) * 1000 / T
        self.T, self.beta = T, torch.cat([torch.zeros(1, dtype=beta.dtype), beta.clamp(max=0.999)])
        self.alpha = 1 - self.beta                        # alpha_t = 1 - beta_t
        self.alpha_bar = torch.cumprod(self.alpha, 0)     # alpha_bar_t = prod_{s=1}^t alpha_s
        ab_prev = torch.cat([torch.ones(1, dtype=beta.dtype), self.alpha_bar[:-1]])
        # beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t, the variance of
        # q(x_{t-1} | x_t, x_0); p_theta's sigma_t^2 here (beta_tilde_1 = 0: no noise into x_0)
        self.beta_tilde = (1 - ab_prev) / (1 - self.alpha_bar).clamp(min=1e-20) * self.beta

def at(table, t, x):  # table[t] for a batch of t, shaped to broadcast against x
    return table.to(x.device)[t].to(x.dtype).view(-1, *[1] * (x.dim() - 1))

def q_sample(sched, x_0, t, eps):
    # x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps: t steps of q in one
    return at(sched.alpha_bar.sqrt(), t, x_0) * x_0 + at((1 - sched.alpha_bar).sqrt(), t, x_0) * eps

def predict_x0(sched, x_t, t, eps_theta):
    # x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_bar_t): q_sample solved for x_0
    return (x_t - at((1 - sched.alpha_bar).sqrt(), t, x_t) * eps_theta) \
        / at(sched.alpha_bar.sqrt(), t, x_t)

def p_mean(sched, eps_theta, x_t, t):  # p_theta's mean: that of q(x_{t-1} | x_t, x0_hat)
    # mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_t)
    return (x_t - at(sched.beta / (1 - sched.alpha_bar).clamp(min=1e-20).sqrt(), t, x_t)
            * eps_theta) / at(sched.alpha.sqrt(), t, x_t)

def p_sample(sched, eps_theta, x_t, t, z):
    """One reverse step, note 000's denoise module: x_{t-1} = mu_theta(x_t, t) + sigma_t z with
    sigma_t^2 = beta_tilde_t. Returns x_{t-1} and x0_hat, the x_0 that eps_theta implies."""
    tt = torch.full((len(x_t),), t, device=x_t.device)
    eps = eps_theta(x_t, tt)
    return p_mean(sched, eps, x_t, tt) + sched.beta_tilde[t].sqrt().item() * z, \
        predict_x0(sched, x_t, tt, eps)

def loss_simple(eps, eps_theta):  # L_simple = mean over the batch and pixels of (eps - eps_theta)^2
    return F.mse_loss(eps_theta, eps)

def decoder_log_likelihood(x_0, mean, var):
    """Note 002's decoder, L_0 = -log p_theta(x_0 | x_1) (Ho et al., eq. 13), for each pixel: value
    k sits at x = k / 127.5 - 1 in a bin 2/255 wide (the outer bins reach to -inf, +inf)."""
    cdf = lambda v: 0.5 * (1 + torch.erf((v - mean) / (2 * var).sqrt()))
    upper = torch.where(x_0 > 0.999, torch.ones_like(x_0), cdf(x_0 + 1 / 255))
    lower = torch.where(x_0 < -0.999, torch.zeros_like(x_0), cdf(x_0 - 1 / 255))
    # log p_theta(x_0 | x_1) = log(integral over x_0's bin of N(x; mean, var) dx); pixels add
    return torch.log((upper - lower).clamp(min=1e-12))

def drop_labels(y, K, p_uncond=0.1):  # each label becomes K, 'no label', with probability p_uncond
    return torch.where(torch.rand(len(y), device=y.device) < p_uncond, K, y)

def guided_eps(model, x_t, t, y=None, w=1.0):
    """Classifier-free guidance (Ho & Salimans, 2022; their w is this w - 1): w = 0 unconditional,
    w = 1 conditional, w > 1 further away from the unconditional prediction."""
    K = getattr(model, "n_classes", 0)
    if not K or y is None:  # no label given: eps_theta(x_t, t), with the label K if it has one
        return model(x_t, t, torch.full_like(t, K) if K else None)
    eps_y, eps_none = model(torch.cat([x_t, x_t]), torch.cat([t, t]),
                            torch.cat([y, torch.full_like(y, K)])).chunk(2)
    # eps_tilde = eps_theta(x_t, t, K) + w (eps_theta(x_t, t, y) - eps_theta(x_t, t, K))
    return eps_none + w * (eps_y - eps_none)

@torch.no_grad()
def sample_ddpm(sched, eps_theta, x_T, generator=None, record=()):
    """Algorithm 2. eps_theta(x_t, t) is the noise predictor. Returns x_0 and, for each t in
    record, (x_{t-1}, x0_hat) after the step at t."""
    x_t, snapshots = x_T, {}                                   # 1. x_T ~ N(0, I), given
    for t in range(sched.T, 0, -1):                            # 2. for t = T, ..., 1 do
        # 3. z ~ N(0, I) if t > 1, else z = 0;  4. x_{t-1} = mu_theta(x_t, t) + sigma_t z
        z = torch.randn(x_t.shape, generator=generator).to(x_t.device) if t > 1 else 0
        x_t, x0_hat = p_sample(sched, eps_theta, x_t, t, z)
        snapshots.update({t: (x_t.cpu(), x0_hat.cpu())} if t in record else {})
    return x_t, snapshots                                      # 5. end for;  6. return x_0

@torch.no_grad()
def sample_ddim(sched, eps_theta, x_T, steps, eta=0.0, generator=None):
    """DDIM (Song et al., 2021, eq. 12) on 0 = tau_0 < ... < tau_S = T, S = steps evenly spread, the
    same eps_theta: eta = 0 deterministic; eta = 1, S = T: sigma^2 = beta_tilde_t, Algorithm 2."""
    tau, x_t = torch.linspace(0, sched.T, steps + 1).round().long().tolist(), x_T
    for t, s in zip(tau[:0:-1], tau[-2::-1]):  # t = tau_S, ..., tau_1 and s the next one down
        tt, ab_t, ab_s = torch.full((len(x_t),), t, device=x_t.device), *sched.alpha_bar[[t, s]]
        eps = eps_theta(x_t, tt)
        # sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t) (1 - alpha_bar_t / alpha_bar_s))
        sigma = eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).sqrt().item()
        # x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s - sigma^2) eps_theta + sigma z
        z = torch.randn(x_t.shape, generator=generator).to(x_t.device)
        x_t = ab_s.sqrt() * predict_x0(sched, x_t, tt, eps) + (1 - ab_s - sigma ** 2).clamp(
            min=0).sqrt() * eps + sigma * z
    return x_t

@torch.no_grad()
def ema_update(ema, model, decay, step):
    # theta_ema <- d theta_ema + (1 - d) theta, d = min(decay, (1 + step) / (10 + step))
    d = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.mul_(d).add_(p, alpha=1 - d)
    return d

# ------------------------------------------------------------------------- 2. the noise predictors
def timestep_embedding(t, dim):  # [sin(t w_i), cos(t w_i)], w_i = 10000^(-i / (dim / 2))
    w = torch.exp(-math.log(10000) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    return torch.cat([torch.sin(t.float()[:, None] * w), torch.cos(t.float()[:, None] * w)], 1)

class Embedding(nn.Module):
    """emb(t) = MLP(sinusoid(t)), plus e(y) for a class y: where note 000's text embedding enters,
    a class label stands in for the text; e's last row K is the 'no label'."""
    def __init__(self, width, dim, n_classes):
        super().__init__()
        self.width = width
        self.mlp = nn.Sequential(nn.Linear(width, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(n_classes + 1, dim) if n_classes else None

    def forward(self, t, y):
        return self.mlp(timestep_embedding(t, self.width)) + (0 if y is None else self.label(y))

class MLPNoisePredictor(nn.Module):  # 2-D: residual blocks h <- h + Linear(SiLU(LN(h + emb)))
    def __init__(self, width, n_classes=0, depth=4):
        super().__init__()
        self.n_classes, self.embed, self.inp = n_classes, Embedding(width, width, n_classes), \
            nn.Linear(2, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.SiLU(),
                                                  nn.Linear(width, width)) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x, t, y=None):
        emb, h = self.embed(t, y), self.inp(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)

class ResBlock(nn.Module):  # norm, SiLU, conv, + emb(t, y); norm, SiLU, conv; + skip
    def __init__(self, c_in, c_out, emb_dim):
        super().__init__()
        self.conv1 = nn.Sequential(nn.GroupNorm(8, c_in), nn.SiLU(),
                                   nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))
        self.conv2 = nn.Sequential(nn.GroupNorm(8, c_out), nn.SiLU(),
                                   nn.Conv2d(c_out, c_out, 3, padding=1))
        nn.init.zeros_(self.conv2[-1].weight)  # at the start a block adds only conv2's bias
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        return self.skip(x) + self.conv2(self.conv1(x) + self.emb(emb)[:, :, None, None])

class UNet(nn.Module):
    """Resolutions 28 -> 14 -> 7 (32 -> 16 -> 8; 64 px one more) with width x (1, 2, 2, 2)
    channels; a residual block per level down and up, two at the bottom, skips across."""
    def __init__(self, channels, size, width, n_classes=0):
        super().__init__()
        chs, emb_dim = [width * m for m in (1, 2, 2, 2)[:4 if size == 64 else 3]], 4 * width
        self.n_classes, self.embed = n_classes, Embedding(width, emb_dim, n_classes)
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.down = nn.ModuleList(ResBlock(c_in, c, emb_dim) for c_in, c in zip([width] + chs, chs))
        self.downsample = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for c in chs[:-1])
        self.mid = nn.ModuleList(ResBlock(chs[-1], chs[-1], emb_dim) for _ in range(2))
        self.up = nn.ModuleList(ResBlock(2 * c, c, emb_dim) for c in reversed(chs))  # on [h, skip]
        self.upsample = nn.ModuleList(nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(
            c, c_next, 3, padding=1)) for c, c_next in zip(chs[:0:-1], chs[-2::-1]))
        self.out = nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(),
                                 nn.Conv2d(width, channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)

    def forward(self, x, t, y=None):
        emb, h, skips = self.embed(t, y), self.stem(x), []
        for i, block in enumerate(self.down):  # a block, its output kept for the way up; half size
            skips.append(h := block(h, emb))
            h = self.downsample[i](h) if i < len(self.downsample) else h
        h = self.mid[1](self.mid[0](h, emb), emb)
        for i, block in enumerate(self.up):  # a block on [h, the skip of this size]; double size
            h = block(torch.cat([h, skips.pop()], 1), emb)
            h = self.upsample[i](h) if i < len(self.upsample) else h
        return self.out(h)

# ------------------------------------------------------------------------- 3. training
GRAD_CLIP, WARM_UP, EMA_DECAY = 1.0, 200, 0.999

def train(cfg):
    device, toy, sched = pick_device(cfg.device), cfg.dataset in TOY_SETS, Schedule(cfg.timesteps)
    check_options(cfg)
    if not toy:
        x_data, y_data, names = load_data(cfg.dataset, cfg.data_dir, cfg.image_size)
        x_data, y_data = x_data.to(device), y_data.to(device)
    K = cfg.cond * len(toy_centres(cfg.dataset)[0] if toy else names)  # classes; 0: no labels
    if cfg.cond and K < 2:
        raise SystemExit(f"{PROG}: error: --cond needs two classes or more: a sub-folder each")
    cfg.n_classes, cfg.shape = K, (2,) if toy else tuple(x_data.shape[1:])
    model = (MLPNoisePredictor(cfg.width, K) if toy else
             UNet(cfg.shape[0], cfg.image_size, cfg.width, K)).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)  # the average that samples
    opt = torch.optim.Adam(model.parameters(), cfg.lr)
    parts, start, m = {"model": model, "ema": ema, "opt": opt}, start_run(cfg), cfg.batch_size
    for step in range(1, cfg.steps + 1):  # 1. repeat (--steps times)
        for group in opt.param_groups:  # linear warm-up, then linear decay to 0
            group["lr"] = cfg.lr * min(1, step / WARM_UP) * (1 - (step - 1) / cfg.steps)
        # 2. x_0 ~ q(x_0): m examples in [-1, 1]; with --cond their labels y (the mode for 2-D
        #    data), each dropped to 'no label' with probability 0.1, to learn guidance
        if toy:
            x_0 = sample_toy(cfg.dataset, m).to(device)
            y = torch.cdist(x_0, toy_centres(cfg.dataset)[0].to(device)).argmin(1)
        else:
            i = torch.randint(len(x_data), (m,), device=device)
            x_0, y = x_data[i].float() / 127.5 - 1, y_data[i]  # as batch_of, with the labels
        y = drop_labels(y, K) if K else None
        # 3. t ~ Uniform({1, ..., T}): t = T is trained too
        t = torch.randint(1, sched.T + 1, (m,), device=device)
        # 4. eps ~ N(0, I)
        eps = torch.randn_like(x_0)
        # 5. a gradient step on || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t)
        #    eps, t) ||^2
        loss = loss_simple(eps, model(q_sample(sched, x_0, t, eps), t, y))
        opt.zero_grad()
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        ema_update(ema, model, EMA_DECAY, step)
        log_step(cfg, start, step, loss=loss, grad_norm=grad_norm)
        if step % cfg.sample_every == 0 or step == cfg.steps:
            plot_samples(cfg, step, sched, ema)
            save_checkpoint(cfg, parts, step)
    return sched, ema

def check_options(cfg):
    if cfg.cond and cfg.dataset == "swissroll":
        raise SystemExit(f"{PROG}: error: --cond needs labels: use 8gaussians or 25gaussians")
    if cfg.width % 8:  # the sinusoid's sin/cos halves and GroupNorm's 8 groups must divide it
        raise SystemExit(f"{PROG}: error: --width must be a multiple of 8, not {cfg.width}")
    if cfg.dataset not in TOY_SETS and cfg.image_size not in (28, 32, 64):
        raise SystemExit(f"{PROG}: error: --image-size must be 28, 32 or 64, not {cfg.image_size}")
    if not (cfg.lr > 0 and 0 <= cfg.eta <= 1 and cfg.guidance >= 0 and 2 <= cfg.timesteps >=
            cfg.sample_steps and cfg.sampler in ("ancestral", "ddim")):
        raise SystemExit(f"{PROG}: error: need --lr > 0, --eta in [0, 1], --guidance >= 0, "
                         "--sampler ancestral or ddim and --sample-steps <= --timesteps >= 2")

# ------------------------------------------------------------------------- 4. sampling, figures
def draw(cfg, sched, ema, n, algorithm_2, seed, record=(), label=""):
    """n samples x_0 (on the CPU) from noise of their own (seed), y, Algorithm 2's snapshots.
    With --cond sample i has class i K // n: the classes in order, n / K each (n < K: n of K)."""
    device, K, chunk = next(ema.parameters()).device, cfg.n_classes, 250 if cfg.shape[1:] else 2500
    y = (torch.arange(n) * K // n).to(device) if K else None
    x_T = torch.randn(n, *cfg.shape, generator=torch.Generator().manual_seed(cfg.seed + seed))
    generator, start, done = torch.Generator().manual_seed(cfg.seed + seed + 1), time.time(), [0]
    steps = sched.T if algorithm_2 else cfg.sample_steps

    def eps_theta(x_t, t):  # the guided EMA model, 250 at a time; the time left for ALL n samples
        parts = zip(x_t.split(chunk), t.split(chunk), y.split(chunk) if K else [None] * n)
        eps = torch.cat([guided_eps(ema, *part, cfg.guidance) for part in parts])
        done[0] += 1
        if label and done[0] % max(1, steps // 10) == 0:
            left = round((time.time() - start) / done[0] * (steps - done[0]))  # seconds
            print(f"{label}: step {done[0]}/{steps}, {left // 60}:{left % 60:02} left", flush=True)
        return eps
    if algorithm_2:
        x, snapshots = sample_ddpm(sched, eps_theta, x_T.to(device), generator, record)
        return x.cpu(), y, snapshots
    return sample_ddim(sched, eps_theta, x_T.to(device), steps, cfg.eta, generator).cpu(), y, {}

def plot_samples(cfg, step, sched, ema):
    """2-D: data (black) and samples (orange); images: a grid, a row per class with --cond. By DDIM
    from the same noise every time."""
    toy, K = cfg.dataset in TOY_SETS, cfg.n_classes
    x = draw(cfg, sched, ema, 1000 if toy else 8 * (K or 8), False, seed=1)[0]
    fig = figure(f"{cfg.dataset}, step {step}: EMA model, DDIM-{cfg.sample_steps}")
    ax = fig.axes[0]
    if toy:
        data = sample_toy(cfg.dataset, 1000, torch.Generator().manual_seed(cfg.seed + 2))
        ax.scatter(*data.T, s=3, c="k", label="data")
        ax.scatter(*x.T, s=3, c="orange", label="samples")
        ax.set(xlim=(-2.5, 2.5), ylim=(-2.5, 2.5), aspect="equal")
        ax.legend(loc="lower right")
    else:
        ax.imshow(image_grid(x, 8), cmap="gray")
        ax.set_axis_off()
    save_figure(fig, Path(cfg.out) / f"samples_{step}.png")

def final_figures(cfg, sched, ema):
    """forward_process.png: q(x_t | x_0) at eight t, one eps for all; reverse_process.png:
    Algorithm 2 from noise, x_{t-1} and x0_hat after the step at t. A panel per t."""
    T, toy = sched.T, cfg.dataset in TOY_SETS
    ts = sorted({T, 4 * T // 5, 3 * T // 5, 2 * T // 5, T // 5, T // 10, T // 20, 1}, reverse=True)
    g = torch.Generator().manual_seed(cfg.seed + 4)
    x_0 = sample_toy(cfg.dataset, 1000, g) if toy else \
        load_data(cfg.dataset, cfg.data_dir, cfg.image_size)[0][:4].float() / 127.5 - 1
    eps = torch.randn(x_0.shape, generator=g)
    forward = {t: [q_sample(sched, x_0, torch.full((len(x_0),), t), eps)] for t in [0] + ts[::-1]}
    reverse = draw(cfg, sched, ema, 1000 if toy else 4, True, seed=5, record=ts,
                   label="" if toy else "reverse_process.png")[2]
    for name, columns, title in [
            ("forward", forward, "q(x_t | x_0): sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps"),
            ("reverse", reverse, "Algorithm 2 from noise, after the step at t: x_{t-1} and x0_hat "
             "(2-D: black, green; images: left, right)")]:
        fig = figure(title, 1, len(columns))
        fig.set_size_inches(2.2 * len(columns), 2.8 if toy else 5)
        for ax, (t, xs) in zip(fig.axes, columns.items()):
            for x, colour in zip(xs, ("k", "tab:green") if toy else ()):
                ax.scatter(*x.T, s=1, c=colour)
            if not toy:  # images side by side, an image a row
                ax.imshow(image_grid(torch.stack(list(xs), 1).flatten(0, 1), len(xs)), cmap="gray")
            ax.set(xticks=[], yticks=[], title=f"t = {t}",
                   **(dict(xlim=(-3, 3), ylim=(-3, 3), aspect="equal") if toy else {}))
        save_figure(fig, Path(cfg.out) / f"{name}_process.png")

def export(cfg, sched, ema):
    """samples.npz (x; y with --cond) by --sampler from noise of its own, and metrics.json."""
    start, toy = time.time(), cfg.dataset in TOY_SETS
    x, y, _ = draw(cfg, sched, ema, cfg.num_samples, cfg.sampler == "ancestral", seed=0,
                   label="" if toy else "samples.npz")
    metrics = {"sampler": cfg.sampler, "sampling_seconds": time.time() - start, "samples": len(x),
               "steps": sched.T if cfg.sampler == "ancestral" else cfg.sample_steps}
    x = x.numpy() if toy else to_uint8(x)
    np.savez(buffer := io.BytesIO(), x=x, **({} if y is None else {"y": y.cpu().numpy()}))
    write_atomic(Path(cfg.out) / "samples.npz", buffer.getvalue())
    metrics.update(mode_metrics(x, cfg.dataset) if cfg.dataset in TOY_SETS[:2] else {})
    print(f"{len(x)} samples by {cfg.sampler} in {metrics['sampling_seconds']:.0f} s" + (
        f"; modes {metrics['modes']}/{metrics['of']}, high quality {metrics['high_quality']:.1%}"
        if "modes" in metrics else ""))
    write_atomic(Path(cfg.out) / "metrics.json", json.dumps(metrics, indent=1))

PROG = "ddpm.py"
OPTIONS = [  # this script's options, written as COMMON's below
    ("--dataset", "25gaussians", "a 2-D toy set, mnist, fashion-mnist, cifar10 or an image folder "
     "(with --cond: sub-folders are classes)"),
    ("--steps", (10000, 3000), "training steps (Algorithm 1's repeats)"),
    ("--batch-size", (1024, 64), "minibatch size"),
    ("--lr", 1e-3, "Adam's peak learning rate (warm-up 200 steps, then linear decay to 0)"),
    ("--width", (128, 24), "hidden units of the 2-D MLP, or the U-Net's base channels"),
    ("--timesteps", 1000, "T; beta_t grows linearly from 0.1 / T to 20 / T"),
    ("--sampler", ("ancestral", "ddim"), "samples.npz by Algorithm 2 (T steps) or DDIM"),
    ("--sample-steps", 50, "DDIM's number of steps"),
    ("--eta", 0.0, "DDIM's noise: 0 deterministic; 1 with --sample-steps T is Algorithm 2"),
    ("--cond", False, "learn eps_theta(x_t, t, y) for a class y (2-D: the mode), for guidance"),
    ("--guidance", 2.0, "with --cond, w: 0 unconditional, 1 conditional, > 1 guided"),
    ("--log-every", (500, 100), "steps between progress lines and log.csv rows"),
    ("--sample-every", (5000, 1000), "steps between sample figures and checkpoints")]

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
    sched, ema = train(cfg)
    export(cfg, sched, ema)
    final_figures(cfg, sched, ema)
    plot_log(cfg.out)
    print(f"figures, samples.npz, metrics.json and checkpoint.pt are in {cfg.out}/")

if __name__ == "__main__":
    main()
