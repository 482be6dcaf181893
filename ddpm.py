"""ddpm.py - denoising diffusion probabilistic models (Ho et al., 2020), forwards and backwards.

The diffusion process q, a fixed Markov chain, adds Gaussian noise of variance beta_t at each of T
steps (beta_t growing from 1e-4 to 0.02) until x_T ~ N(0, I); the reverse process p_theta, also a
Markov chain, removes it one step at a time. Any x_t follows from x_0 in one step:
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,  alpha_bar_t = prod_{s<=t} (1 - beta_s)
A noise predictor eps_theta(x_t, t) learns the noise:  L_simple = E || eps - eps_theta(x_t, t) ||^2,
and sampling runs, from x_T ~ N(0, I) down to x_0, with z ~ N(0, I) (none at t = 1),
    x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_t) + sigma_t z.
Notes -> code: eps is the TOTAL noise between x_0 and x_t, not note 000's one-step Noise^(k); the
notes' denoise module is one reverse step, `p_sample`; the true noise is eps, the guess eps_theta.

Examples:
  python ddpm.py                          # 25 Gaussians in 2-D, both processes drawn, ~2 min
  python ddpm.py --dataset mnist          # or fashion-mnist: training, samples, figures in ~14 min
  python ddpm.py --dataset fashion-mnist --cond --guidance 2 --out runs/guided   # classifier-free
  python ddpm.py --dataset mnist --resume --sampler ancestral --eval-nll     # Algorithm 2, bits/dim
  torchrun --nproc_per_node=2 ddpm.py --dataset cifar10   # data-parallel; one process writes files

Deviations from the paper: a small U-Net (one residual block per resolution, attention only at the
lowest) and Adam at 1e-3 after a 200-step warm-up, decayed linearly to 0 (the paper: 2e-4 after
5,000, constant, 800k steps of 128 images);
EMA decay 0.999 (0.9999); batch 64 for images, 1024 for 2-D data; batches drawn with replacement.
samples.npz from images is drawn by DDIM-50 (Song et al., 2021) and the periodic figures too; the
final figures show Algorithm 2. Images clip the predicted x_0 to [-1, 1] and take the posterior mean
at it, not the formula above (--clip-x0 off: the formula itself). At t = 1 the bound's decoder uses
variance beta_tilde_2, as beta_tilde_1 = 0. --eval-nll bounds the unclipped p_theta (with --cond:
-log p(x | y)) on test images, or a folder's TRAINING images. Constants, not flags: dropout 0.1,
gradient-norm clip 1, warm-up 200 steps, label dropout 0.1 (Ho & Salimans' p_uncond).
"""
import argparse, copy, gzip, hashlib, io, json, math, os, sys, tarfile, time, urllib.request, zlib
from pathlib import Path
import numpy as np
import torch
from torch import nn
import torch.distributed as dist
import torch.nn.functional as F

# ------------------------------------------------------------------------- 1. the concept
# Every table has T + 1 entries indexed by t: t = 0 is the data (beta_0 = 0, alpha_bar_0 = 1).
def beta_schedule(name, T):
    if name == "linear":  # beta from 1e-4 to 0.02 for T = 1000; other T scale both ends by 1000 / T
        beta = torch.linspace(1e-4, 0.02, T, dtype=torch.float64) * 1000 / T  # (Nichol & Dhariwal)
    else:  # cosine: alpha_bar_t = f(t) / f(0), f(t) = cos^2((t / T + 0.008) / 1.008 * pi / 2)
        t = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
        beta = 1 - f[1:] / f[:-1]  # beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}
    return torch.cat([torch.zeros(1, dtype=torch.float64), beta.clamp(max=0.999)])

class Schedule:
    def __init__(self, name, T):
        self.T, self.beta = T, beta_schedule(name, T)
        self.alpha = 1 - self.beta                        # alpha_t = 1 - beta_t
        self.alpha_bar = torch.cumprod(self.alpha, 0)     # alpha_bar_t = prod_{s=1}^t alpha_s
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        # q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, beta_tilde_t I), t >= 1, with
        # beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t
        one_minus = (1 - self.alpha_bar).clamp(min=1e-20)  # 0 only at t = 0, never used
        self.beta_tilde = (1 - ab_prev) / one_minus * self.beta
        self.coef_x0 = ab_prev.sqrt() * self.beta / one_minus
        self.coef_xt = self.alpha.sqrt() * (1 - ab_prev) / one_minus

    def sigma2(self, kind):  # sigma_t^2 of p_theta: beta_t or beta_tilde_t; at t = 1 beta_tilde_2
        var = (self.beta if kind == "beta" else self.beta_tilde).clone()
        var[1] = self.beta_tilde[2]  # no noise is added at t = 1: only the decoder L_0 uses it
        return var

def at(table, t, x):  # table[t] for a batch of t, shaped to broadcast against x
    return table.to(x.device)[t].to(x.dtype).view(-1, *[1] * (x.dim() - 1))

def q_step(sched, x_prev, t, eps):
    # one step of the chain: x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps
    return at(sched.alpha.sqrt(), t, x_prev) * x_prev + at(sched.beta.sqrt(), t, x_prev) * eps

def q_sample(sched, x_0, t, eps):
    # x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps: t steps of q in one
    return at(sched.alpha_bar.sqrt(), t, x_0) * x_0 + at((1 - sched.alpha_bar).sqrt(), t, x_0) * eps

def q_posterior(sched, x_0, x_t, t):  # the mean and variance of q(x_{t-1} | x_t, x_0)
    return at(sched.coef_x0, t, x_t) * x_0 + at(sched.coef_xt, t, x_t) * x_t, \
        at(sched.beta_tilde, t, x_t)

def p_mean(sched, eps_theta, x_t, t, clip_x0):
    """The mean of p_theta(x_{t-1} | x_t), and x0_hat, the x_0 that eps_theta implies."""
    # x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_bar_t): q_sample solved for x_0
    x0_hat = (x_t - at((1 - sched.alpha_bar).sqrt(), t, x_t) * eps_theta) \
        / at(sched.alpha_bar.sqrt(), t, x_t)
    if clip_x0:  # the posterior mean at x0_hat clipped to the data's [-1, 1] (equal if not clipped)
        x0_hat = x0_hat.clamp(-1, 1)
        return q_posterior(sched, x0_hat, x_t, t)[0], x0_hat
    # mu_theta = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_t)
    return (x_t - at(sched.beta / (1 - sched.alpha_bar).clamp(min=1e-20).sqrt(), t, x_t)
            * eps_theta) / at(sched.alpha.sqrt(), t, x_t), x0_hat

def p_sample(sched, model, x_t, t, sigma2, y=None, w=0.0, clip_x0=False, generator=None):
    """One reverse step (the notes' denoise module): x_{t-1} = mu_theta(x_t, t) + sigma_t z, with
    z ~ N(0, I) for t > 1 and z = 0 at t = 1, so the last step returns the mean."""
    tt = torch.full((len(x_t),), t, device=x_t.device)
    mean, x0_hat = p_mean(sched, guided_eps(model, x_t, tt, y, w).float(), x_t, tt, clip_x0)
    if t == 1:
        return mean, x0_hat
    z = torch.randn(x_t.shape, generator=generator).to(x_t.device)
    return mean + math.sqrt(sigma2[t]) * z, x0_hat

def timesteps(n, T, device="cpu"):  # t ~ Uniform({1, ..., T}): t = T is trained too
    return torch.randint(1, T + 1, (n,), device=device)

def loss_simple(eps, eps_theta):  # L_simple = mean over the batch and pixels of (eps - eps_theta)^2
    return F.mse_loss(eps_theta.float(), eps)

def ddim_step(sched, model, x_t, t, s, eta, y=None, w=0.0, clip_x0=False, generator=None):
    """DDIM (Song et al., 2021, eq. 12): from x_t to x_s, s < t, with the same eps_theta:
    x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s - sigma^2) eps_theta + sigma z, where
    sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s)."""
    tt = torch.full((len(x_t),), t, device=x_t.device)
    eps_theta = guided_eps(model, x_t, tt, y, w).float()
    x0_hat = p_mean(sched, eps_theta, x_t, tt, clip_x0)[1]
    ab_t, ab_s = sched.alpha_bar[t].item(), sched.alpha_bar[s].item()
    if clip_x0:  # the noise that the clipped x0_hat implies
        eps_theta = (x_t - math.sqrt(ab_t) * x0_hat) / math.sqrt(1 - ab_t)
    sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
    x_s = math.sqrt(ab_s) * x0_hat + math.sqrt(max(1 - ab_s - sigma ** 2, 0)) * eps_theta
    return x_s + sigma * torch.randn(x_t.shape, generator=generator).to(x_t.device), x0_hat

def ddim_timesteps(T, steps):  # 0 = tau_0 < tau_1 < ... < tau_S = T, evenly spread
    return torch.linspace(0, T, steps + 1).round().long().tolist()

def guided_eps(model, x_t, t, y=None, w=0.0):
    """Classifier-free guidance (Ho & Salimans, 2022), the label K meaning 'no label':
    eps_tilde = (1 + w) eps_theta(x_t, t, y) - w eps_theta(x_t, t, K); w = 0: the conditional
    model."""
    K = getattr(model, "n_classes", 0)
    if y is None or w == 0:
        return model(x_t, t, torch.full_like(t, K) if y is None and K else y)
    eps_y, eps_none = model(torch.cat([x_t, x_t]), torch.cat([t, t]),
                            torch.cat([y, torch.full_like(y, K)])).chunk(2)
    return (1 + w) * eps_y - w * eps_none

@torch.no_grad()
def sample(sched, model, x_T, cfg, y=None, sampler="ancestral", steps=50, generator=None,
           record=(), progress=""):
    """Algorithm 2 (T steps), or DDIM on `steps` of the t. Returns x_0, {t: (x_{t-1}, x0_hat)}."""
    # 1. x_T ~ N(0, I) (given)  2. for t = T, ..., 1: one reverse step  3. return x_0
    tau = list(range(sched.T + 1)) if sampler == "ancestral" else ddim_timesteps(sched.T, steps)
    x, snapshots, sigma2, start = x_T, {}, sched.sigma2(cfg.sigma), time.time()
    w, clip = cfg.guidance, cfg.clip_x0 == "on"
    for i, (t, s) in enumerate(zip(tau[:0:-1], tau[-2::-1])):
        with torch.autocast(x.device.type, torch.bfloat16, enabled=cfg.amp):
            if sampler == "ancestral":
                x, x0_hat = p_sample(sched, model, x, t, sigma2, y, w, clip, generator)
            else:
                x, x0_hat = ddim_step(sched, model, x, t, s, cfg.eta, y, w, clip, generator)
        x = x.float()
        snapshots.update({t: (x.cpu(), x0_hat.float().cpu())} if t in record else {})
        if progress and (i + 1) % max(1, (len(tau) - 1) // 5) == 0:
            left = round((time.time() - start) / (i + 1) * (len(tau) - 2 - i))
            print(f"{progress}: {sampler} step {i + 1}/{len(tau) - 1}, {left // 60}:{left % 60:02}"
                  " left", flush=True)
    return x, snapshots

@torch.no_grad()
def ema_update(ema, model, decay, step):
    """theta_ema <- d theta_ema + (1 - d) theta, d = min(decay, (1 + step) / (10 + step)): early
    steps forget the random start; buffers are copied, not averaged."""
    d = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.mul_(d).add_(p.detach(), alpha=1 - d)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
    return d

# The likelihood: -log p_theta(x_0) <= L_T + sum_{t=2}^T L_{t-1} + L_0, in bits per dimension.
def normal_kl(mean1, var1, mean2, var2):  # KL(N(mean1, var1) || N(mean2, var2)), nats
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)

def discretized_gaussian_log_likelihood(x_0, mean, var):
    """The decoder L_0: pixel value k sits at k / 127.5 - 1 and owns a bin 2/255 wide (the outer
    bins reach to -inf and +inf); its probability is the mass N(mean, var) puts on the bin."""
    cdf = lambda v: 0.5 * (1 + torch.erf((v - mean) / (2 * var).sqrt()))
    upper = torch.where(x_0 > 0.999, torch.ones_like(x_0), cdf(x_0 + 1 / 255))
    lower = torch.where(x_0 < -0.999, torch.zeros_like(x_0), cdf(x_0 - 1 / 255))
    return torch.log((upper - lower).clamp(min=1e-12))

@torch.no_grad()
def vlb_bits_per_dim(sched, model, x_0, cfg, y=None, generator=None):
    """The bound per image in bits/dim and its terms; each term draws its own x_t ~ q(x_t | x_0)."""
    n, T, per_image = len(x_0), sched.T, lambda v: v.flatten(1).sum(1)
    tT = torch.full((n,), T, device=x_0.device)  # L_T = KL(q(x_T | x_0) || N(0, I))
    mean_T, var_T = at(sched.alpha_bar.sqrt(), tT, x_0) * x_0, at(1 - sched.alpha_bar, tT, x_0)
    prior = per_image(normal_kl(mean_T, var_T, torch.zeros_like(x_0), torch.ones_like(x_0)))
    kl_sum, sigma2 = torch.zeros(n, device=x_0.device), sched.sigma2(cfg.sigma)
    for t in range(T, 0, -1):
        tt = torch.full((n,), t, device=x_0.device)
        x_t = q_sample(sched, x_0, tt, torch.randn(x_0.shape, generator=generator).to(x_0.device))
        with torch.autocast(x_0.device.type, torch.bfloat16, enabled=cfg.amp):
            eps_theta = guided_eps(model, x_t, tt, y).float()
        mean, var = p_mean(sched, eps_theta, x_t, tt, False)[0], at(sigma2, tt, x_0)
        if t > 1:  # L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))
            kl_sum += per_image(normal_kl(*q_posterior(sched, x_0, x_t, tt), mean, var))
        else:      # L_0 = -log p_theta(x_0 | x_1)
            decoder = -per_image(discretized_gaussian_log_likelihood(x_0, mean, var))
    bits = {k: v / (x_0[0].numel() * math.log(2)) for k, v in
            {"prior": prior, "kl_sum": kl_sum, "decoder": decoder}.items()}
    return sum(bits.values()), bits

# ------------------------------------------------------------------------- 2. the noise predictors
def timestep_embedding(t, dim):  # [sin(t w_i), cos(t w_i)], w_i = 10000^(-i / (dim / 2))
    w = torch.exp(-math.log(10000) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    return torch.cat([torch.sin(t.float()[:, None] * w), torch.cos(t.float()[:, None] * w)], 1)

class Embedding(nn.Module):
    """emb(t) = MLP(sinusoid(t)), plus e(y) for a class y; e's last row K is the 'no label'."""
    def __init__(self, width, dim, n_classes):
        super().__init__()
        self.width, self.n_classes = width, n_classes
        self.mlp = nn.Sequential(nn.Linear(width, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(n_classes + 1, dim) if n_classes else None

    def forward(self, t, y):
        emb = self.mlp(timestep_embedding(t, self.width))
        return emb if y is None else emb + self.label(y)

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

def norm(c):
    return nn.GroupNorm(min(8, c // 4), c)

class ResBlock(nn.Module):  # norm, SiLU, conv, + emb; norm, SiLU, dropout, conv; + skip
    def __init__(self, c_in, c_out, emb_dim):
        super().__init__()
        self.conv1 = nn.Sequential(norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))
        self.conv2 = nn.Sequential(norm(c_out), nn.SiLU(), nn.Dropout(DROPOUT),
                                   nn.Conv2d(c_out, c_out, 3, padding=1))
        nn.init.zeros_(self.conv2[-1].weight)  # at the start a block adds only conv2's bias
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        return self.skip(x) + self.conv2(self.conv1(x) + self.emb(emb)[:, :, None, None])

class SelfAttention(nn.Module):  # x + proj(V softmax(Q K^T / sqrt(C))) over the H W positions
    def __init__(self, c):
        super().__init__()
        self.norm, self.qkv, self.proj = norm(c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).unbind(1)
        attention = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), -1)  # N x HW x HW
        return x + self.proj((v @ attention.transpose(1, 2)).reshape(n, c, h, w))

class UNet(nn.Module):
    """Resolutions 28 -> 14 -> 7 (32 -> 16 -> 8; 64 px one more) with width x (1, 2, 2, 2)
    channels; a residual block per level down and up, skips across, attention at the bottom."""
    def __init__(self, channels, size, width, n_classes=0):
        super().__init__()
        chs, emb_dim = [width * m for m in (1, 2, 2, 2)[:4 if size == 64 else 3]], 4 * width
        self.n_classes, self.embed = n_classes, Embedding(width, emb_dim, n_classes)
        self.stem, self.down, self.up = nn.Conv2d(channels, width, 3, padding=1), \
            nn.ModuleList(), nn.ModuleList()
        for i, (c_in, c) in enumerate(zip([width] + chs, chs)):  # block, attention?, downsample
            bottom = i == len(chs) - 1
            self.down.append(nn.ModuleList([ResBlock(c_in, c, emb_dim), SelfAttention(c) if bottom
                             else nn.Identity(), nn.Identity() if bottom else
                             nn.Conv2d(c, c, 3, stride=2, padding=1)]))
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim), SelfAttention(c),
                                  ResBlock(c, c, emb_dim)])
        for i in reversed(range(len(chs))):  # block on [h, skip], attention?, upsample
            c_next = chs[i - 1] if i else chs[0]
            up = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(chs[i], c_next, 3, padding=1))
            self.up.append(nn.ModuleList([ResBlock(c + chs[i], chs[i], emb_dim), SelfAttention(
                chs[i]) if i == len(chs) - 1 else nn.Identity(), up if i else nn.Identity()]))
            c = c_next
        self.out = nn.Sequential(norm(c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)

    def forward(self, x, t, y=None):
        emb, h, skips = self.embed(t, y), self.stem(x), []
        for block, attention, resample in self.down:
            skips.append(h := attention(block(h, emb)))
            h = resample(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for block, attention, resample in self.up:
            h = resample(attention(block(torch.cat([h, skips.pop()], 1), emb)))
        return self.out(h)

# ------------------------------------------------------------------------- 3. training
DROPOUT, GRAD_CLIP, WARM_UP, P_UNCOND, EMA_DECAY = 0.1, 1.0, 200, 0.1, 0.999

def train(cfg):
    world, rank, device = join_processes(cfg)
    toy, sched = cfg.dataset in TOY_SETS, Schedule(cfg.schedule, cfg.timesteps)
    check_options(cfg, world)
    if toy:
        channels, K = 2, len(toy_centres(cfg.dataset)[0]) * cfg.cond
    else:
        x_data, y_data, names = (v.to(device) if torch.is_tensor(v) else v for v in
                                 load_data(cfg.dataset, cfg.data_dir, cfg.image_size))
        channels, K = x_data.shape[1], len(names) * cfg.cond
    cfg.n_classes, cfg.shape = K, (2,) if toy else (channels, cfg.image_size, cfg.image_size)
    if cfg.cond and K < 2:
        raise SystemExit(f"{PROG}: error: --cond needs two classes or more: a sub-folder each")
    model = (MLPNoisePredictor(cfg.width, K) if toy else
             UNet(channels, cfg.image_size, cfg.width, K)).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)  # the average that samples
    opt = torch.optim.Adam(model.parameters(), cfg.lr)
    parts = {"model": model, "ema": ema, "opt": opt}  # what a checkpoint holds
    start, step = start_run(cfg) if rank == 0 else None, 0
    net, step = share_state(cfg, parts, step, world, rank)
    net = torch.compile(net) if cfg.compile else net
    m = cfg.batch_size // world  # this process's share of the batch
    for step in range(step + 1, cfg.steps + 1):
        for group in opt.param_groups:  # linear warm-up, then linear decay to 0
            group["lr"] = cfg.lr * min(1, step / WARM_UP) * (1 - (step - 1) / cfg.steps)
        # 1. x_0 ~ q(x_0): m examples in [-1, 1] (this process's share); with --cond their labels,
        #    each replaced by the 'no label' K with probability P_UNCOND to learn guidance
        if toy:
            x_0 = sample_toy(cfg.dataset, m).to(device)
            y = torch.cdist(x_0, toy_centres(cfg.dataset)[0].to(device)).argmin(1)  # the mode
        else:
            i = torch.randint(len(x_data), (m,), device=device)
            x_0, y = x_data[i].float() / 127.5 - 1, y_data[i]  # as batch_of, with the labels
        y = torch.where(torch.rand(m, device=device) < P_UNCOND, K, y) if K else None
        # 2. t ~ Uniform({1, ..., T})
        t = timesteps(m, sched.T, device)
        # 3. eps ~ N(0, I)
        eps = torch.randn_like(x_0)
        # 4. a gradient step on || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t)
        #    eps, t) ||^2; with torchrun the processes' gradients are averaged
        with torch.autocast(x_0.device.type, torch.bfloat16, enabled=cfg.amp):
            eps_theta = net(q_sample(sched, x_0, t, eps), t, y)
        loss = loss_simple(eps, eps_theta)
        opt.zero_grad()
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        ema_update(ema, model, EMA_DECAY, step)
        if world > 1:  # the loss of the whole batch, for the log
            dist.all_reduce(loss := loss.detach())
            loss = loss / world
        if rank == 0:
            log_step(cfg, start, step, loss=loss, grad_norm=grad_norm)
            if step % cfg.sample_every == 0 or step == cfg.steps:
                plot_samples(cfg, step, sched, ema)
                save_checkpoint(cfg, parts, step)
    return sched, ema.eval(), rank

def join_processes(cfg):
    """Under torchrun (WORLD_SIZE > 1) join the group: NCCL on CUDA (a GPU each), else gloo."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    device = pick_device(cfg.device)
    if world > 1 and device == "cuda":
        torch.cuda.set_device(device := f"cuda:{os.environ['LOCAL_RANK']}")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return world, rank, device

def share_state(cfg, parts, step, world, rank):
    """Every process starts from rank 0's (resumed) state and draws batches of its own; the
    returned network averages the gradients (DDP). One process alone: the model itself."""
    if world == 1:
        return parts["model"], step
    box = [{k: v.state_dict() for k, v in parts.items()}, step]
    dist.broadcast_object_list(box, src=0)
    for k, v in parts.items():
        v.load_state_dict(box[0][k])
    if rank:  # rank 0 keeps its own (resumed) random state
        torch.manual_seed(cfg.seed + 7919 * rank + box[1])
    return nn.parallel.DistributedDataParallel(parts["model"]), box[1]

def check_options(cfg, world):
    toy = cfg.dataset in TOY_SETS
    if cfg.cond and cfg.dataset == "swissroll":
        raise SystemExit(f"{PROG}: error: --cond needs labels: use 8gaussians or 25gaussians")
    if cfg.eval_nll and toy:
        raise SystemExit(f"{PROG}: error: --eval-nll needs image data (e.g. --dataset mnist)")
    if cfg.width % 8:  # the sinusoid's sin/cos halves and GroupNorm's groups must divide it
        raise SystemExit(f"{PROG}: error: --width must be a multiple of 8, not {cfg.width}")
    if not toy and cfg.image_size not in (28, 32, 64):
        raise SystemExit(f"{PROG}: error: --image-size {cfg.image_size}: the U-Net takes 28, 32 "
                         "or 64")
    if cfg.sample_steps > cfg.timesteps or cfg.timesteps < 2 or cfg.batch_size % world:
        raise SystemExit(f"{PROG}: error: need --sample-steps <= --timesteps, --timesteps >= 2 and "
                         f"--batch-size a multiple of the {world} processes")
    if not (cfg.lr > 0 and 0 <= cfg.eta <= 1 and cfg.guidance >= 0) or cfg.sigma not in (
            "beta", "beta_tilde") or cfg.clip_x0 not in ("on", "off") or cfg.sampler not in (
            "ancestral", "ddim"):
        raise SystemExit(f"{PROG}: error: need --lr > 0, --eta in [0, 1], --guidance >= 0, --sigma "
                         "beta or beta_tilde, --clip-x0 on or off, --sampler ancestral or ddim")

# ------------------------------------------------------------------------- 4. sampling, figures
def draw(cfg, sched, ema, n, sampler, steps=50, seed=3, record=(), progress=""):
    """n samples of the EMA model from noise of its own (seed); a conditional model draws each
    class in turn, n // K of each. Returns x_0 (on the CPU), the labels, the chain's snapshots."""
    device, K = next(ema.parameters()).device, cfg.n_classes
    y = torch.arange(K).repeat_interleave(max(1, n // K)) if K else None
    x_T = torch.randn(n if y is None else len(y), *cfg.shape,
                      generator=torch.Generator().manual_seed(cfg.seed + seed))
    generator, xs = torch.Generator().manual_seed(cfg.seed + seed + 1), []
    chunk = 2500 if cfg.dataset in TOY_SETS else 250
    for i in range(0, len(x_T), chunk):
        y_i = None if y is None else y[i:i + chunk].to(device)
        label = progress and f"{progress}, batch {i // chunk + 1}/{math.ceil(len(x_T) / chunk)}"
        x, snapshots = sample(sched, ema, x_T[i:i + chunk].to(device), cfg, y_i, sampler, steps,
                              generator, record, label)
        xs.append(x.cpu())
    return torch.cat(xs), y, snapshots

def plot_samples(cfg, step, sched, ema):
    """2-D: data (black), samples (orange) and -eps_theta(x, t = 20) (blue): where one reverse step
    moves a point, along the score. Images: a grid, a row per class with --cond. Both by DDIM-50
    from the same noise every time."""
    toy, steps, device = cfg.dataset in TOY_SETS, min(50, sched.T), next(ema.parameters()).device
    x, _, _ = draw(cfg, sched, ema, 1000 if toy else 64, "ddim", steps, seed=1)
    fig = figure(f"{cfg.dataset}, step {step}: EMA model, DDIM-{steps}"
                 + ", a row per class" * bool(cfg.n_classes and not toy))
    ax = fig.axes[0]
    if toy:
        data = sample_toy(cfg.dataset, 1000, torch.Generator().manual_seed(cfg.seed + 2))
        g = torch.linspace(-2, 2, 21) * (1.25 if cfg.dataset == "swissroll" else 1)
        grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
        t = torch.full((len(grid),), min(20, sched.T), device=device)
        with torch.no_grad():
            field = -guided_eps(ema, grid.to(device), t).cpu()
        ax.scatter(*data.T, s=3, c="k", label="data")
        ax.scatter(*x.T, s=3, c="orange", label="samples")
        ax.quiver(*grid.T, *field.T, color="tab:blue", alpha=0.6, width=0.003,
                  label=f"-eps_theta(x, t = {t[0]})")
        ax.set(xlim=(g[0], g[-1]), ylim=(g[0], g[-1]), aspect="equal")
        ax.legend(loc="lower right", fontsize=7)
    else:
        ax.imshow(image_grid(x, len(x) // cfg.n_classes if cfg.n_classes else 8), cmap="gray")
        ax.set_axis_off()
    save_figure(fig, Path(cfg.out) / f"samples_{step}.png")

def final_figures(cfg, sched, ema):
    """forward_process.png: q(x_t | x_0) at eight t. reverse_process.png: Algorithm 2 from noise,
    x_{t-1} and x0_hat after the step at t. samplers.png: Algorithm 2 against DDIM-50, 20, 10."""
    T, toy = sched.T, cfg.dataset in TOY_SETS
    ts = sorted({0, T // 20, T // 10, T // 5, 2 * T // 5, 3 * T // 5, 4 * T // 5, T})
    g = torch.Generator().manual_seed(cfg.seed + 4)
    x_0 = sample_toy(cfg.dataset, 1000, g) if toy else \
        load_data(cfg.dataset, cfg.data_dir, cfg.image_size)[0]
    x_0 = x_0 if toy else x_0[torch.randperm(len(x_0), generator=g)[:6]].float() / 127.5 - 1
    eps = torch.randn(x_0.shape, generator=g)
    show_process(cfg, "forward_process", [q_sample(sched, x_0, torch.full((len(x_0),), t), eps)
                 for t in ts], [f"t = {t}" for t in ts], "q(x_t | x_0): x_t = sqrt(alpha_bar_t) x_0"
                 " + sqrt(1 - alpha_bar_t) eps")
    start, rts = time.time(), list(dict.fromkeys([t for t in ts[::-1] if t > 0] + [1]))
    x, _, snaps = draw(cfg, sched, ema, 1000 if toy else 16, "ancestral", seed=5, record=rts,
                       progress="" if toy else "figures")
    runs = [(f"Algorithm 2, {T} steps", x, time.time() - start)]
    k = 1000 if toy else 4
    show_process(cfg, "reverse_process", [(snaps[t][0][:k], snaps[t][1][:k]) for t in rts],
                 [f"t = {t}" for t in rts], "p_theta from noise, after the step at t: x_{t-1} and"
                 " x0_hat (2-D: black, green; images: upper, lower row)")
    for steps in [s for s in (50, 20, 10) if s < T]:
        start, (x, _, _) = time.time(), draw(cfg, sched, ema, len(x), "ddim", steps, seed=5)
        runs.append((f"DDIM, eta {cfg.eta}, {steps} steps", x, time.time() - start))
    fig = figure(f"{cfg.dataset}: the same noise, two samplers", 1, len(runs))
    for ax, (name, x, seconds) in zip(fig.axes, runs):
        if toy:
            ax.scatter(*x.T, s=1, c="orange")
        else:
            ax.imshow(image_grid(x, 4), cmap="gray")
        ax.set(title=f"{name}\n{seconds:.1f} s for {len(x)}", xticks=[], yticks=[])
    save_figure(fig, Path(cfg.out) / "samplers.png")

def show_process(cfg, name, columns, labels, title):
    """One column per t; a column is a batch or a pair of batches (drawn black and green)."""
    columns = [c if isinstance(c, tuple) else (c,) for c in columns]
    if cfg.dataset in TOY_SETS:
        fig = figure(title, 1, len(columns))
        fig.set_size_inches(2.2 * len(columns), 2.8)
        for ax, column, label in zip(fig.axes, columns, labels):
            for x, colour in zip(column, ("k", "tab:green")):
                ax.scatter(*x.T, s=1, c=colour)
            ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xticks=[], yticks=[], title=label)
    else:  # a row per image (per image and batch for pairs)
        x = torch.stack([torch.stack(column, 1).flatten(0, 1) for column in columns], 1)
        fig, w = figure(title), x.shape[-1] + 2
        fig.set_size_inches(1.1 * len(columns) + 1, 1.1 * len(x) + 1)
        fig.axes[0].imshow(image_grid(x.flatten(0, 1), len(columns)), cmap="gray")
        fig.axes[0].set(xticks=[w * (k + 0.5) for k in range(len(columns))], xticklabels=labels,
                        yticks=[])
    save_figure(fig, Path(cfg.out) / f"{name}.png")

def evaluate_nll(cfg, sched, ema):
    """--eval-nll: the bound in bits/dim on --nll-images test images (a folder: training images)."""
    split = "train" if Path(cfg.dataset).is_dir() else "test"
    x, y, _ = load_data(cfg.dataset, cfg.data_dir, cfg.image_size, split)
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed + 8))
    device, results, start = next(ema.parameters()).device, [], time.time()
    for i, j in enumerate(pick[:cfg.nll_images].split(50)):  # pixels exactly on the 256 levels
        results.append(vlb_bits_per_dim(sched, ema, (x[j].float() / 127.5 - 1).to(device), cfg,
                       y[j].to(device) if cfg.n_classes else None,
                       torch.Generator().manual_seed(cfg.seed + 9 + i)))
    bpd = torch.cat([r[0] for r in results]).cpu()
    terms = {k: torch.cat([r[1][k] for r in results]).mean().item() for k in results[0][1]}
    of = ("TRAINING" if split == "train" else "test") + " images" + (
        ", -log p(x | y) given their labels" if cfg.n_classes else "")
    print(f"the bound: {bpd.mean():.3f} +- {bpd.std() / len(bpd) ** 0.5:.3f} bits/dim over "
          f"{len(bpd)} {of} (prior {terms['prior']:.4f}, KL terms {terms['kl_sum']:.3f}, "
          f"decoder {terms['decoder']:.3f}; unclipped means)")
    return {"nll_bits_per_dim": bpd.mean().item(), "nll_stderr": (bpd.std() / len(bpd) ** 0.5)
            .item(), "nll_images": len(bpd), "nll_terms": terms, "nll_of": of,
            "nll_seconds": time.time() - start}

def export(cfg, sched, ema):
    """samples.npz (x; y with --cond) by --sampler from noise of its own, and metrics.json."""
    start, toy = time.time(), cfg.dataset in TOY_SETS
    x, y, _ = draw(cfg, sched, ema, cfg.num_samples, cfg.sampler, cfg.sample_steps,
                   progress="" if toy else "samples.npz")
    metrics = {"sampler": cfg.sampler, "sampling_seconds": time.time() - start, "samples": len(x),
               "steps": sched.T if cfg.sampler == "ancestral" else cfg.sample_steps}
    x = x.numpy() if toy else to_uint8(x)
    np.savez(buffer := io.BytesIO(), x=x, **({} if y is None else {"y": y.numpy()}))
    write_atomic(Path(cfg.out) / "samples.npz", buffer.getvalue())
    print(f"{len(x)} samples by {cfg.sampler} in {metrics['sampling_seconds']:.0f} s")
    if cfg.dataset in TOY_SETS[:2]:
        metrics.update(mode_metrics(x, cfg.dataset))
        print(f"modes captured {metrics['modes']}/{metrics['of']}, high quality "
              f"{metrics['high_quality']:.1%}")
    metrics.update(evaluate_nll(cfg, sched, ema) if cfg.eval_nll else {})
    write_atomic(Path(cfg.out) / "metrics.json", json.dumps(metrics, indent=1))

# ------------------------------------------------------------------------- 5. toy sets, helpers

PROG = "ddpm.py"
OPTIONS = [  # this script's options, written as COMMON's below
    ("--dataset", "25gaussians", "a 2-D toy set, mnist, fashion-mnist, cifar10 or an image folder "
     "(with --cond: sub-folders are classes)"),
    ("--steps", (10000, 3000), "training steps (Algorithm 1's repeats)"),
    ("--batch-size", (1024, 64), "minibatch size; with torchrun, shared among the processes"),
    ("--lr", 1e-3, "Adam's peak learning rate (warm-up 200 steps, then linear decay to 0)"),
    ("--width", (128, 24), "hidden units of the 2-D MLP, or the U-Net's base channels"),
    ("--schedule", ["linear", "cosine"], "beta_t linear from 1e-4 to 0.02, or Nichol & Dhariwal's"),
    ("--timesteps", 1000, "T, the number of diffusion steps"),
    ("--sigma", ("beta_tilde", "beta"), "sigma_t^2 of p_theta: beta (best for x_0 ~ N(0, I)) or "
     "beta_tilde (best for one point x_0)"),
    ("--clip-x0", ("off", "on"), "on: clip x0_hat to [-1, 1] and take the posterior mean at it"),
    ("--sampler", ("ancestral", "ddim"), "samples.npz by Algorithm 2 (T steps) or DDIM"),
    ("--sample-steps", 50, "DDIM's number of steps"),
    ("--eta", 0.0, "DDIM's noise, 0 to 1: 0 deterministic, 1 like Algorithm 2"),
    ("--cond", False, "learn eps_theta(x_t, t, y) for a class y (2-D: the mode), for guidance"),
    ("--guidance", 1.0, "with --cond, w in (1 + w) eps_theta(x_t, t, y) - w eps_theta(x_t, t)"),
    ("--eval-nll", False, "images: the variational bound in bits/dim after training"),
    ("--nll-images", 100, "images the bound averages over (T network passes each)"),
    ("--amp", False, "bfloat16 autocast for the network"),
    ("--compile", False, "torch.compile the network for training"),
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
    sched, ema, rank = train(cfg)
    if dist.is_initialized():  # training is done: the processes part together, rank 0 goes on
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:  # one process samples and writes
        export(cfg, sched, ema)
        final_figures(cfg, sched, ema)
        plot_log(cfg.out)
        print(f"figures, samples.npz, metrics.json and checkpoint.pt are in {cfg.out}/")

if __name__ == "__main__":
    main()
