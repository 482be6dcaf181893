"""cyclegan.py - unpaired translation with cycle consistency (CycleGAN, Zhu et al., 2017) and its
paired twin pix2pix (Isola et al., 2017), one file to read beside the lecture notes.

From unpaired piles of A and B images, one GAN G: A -> B can please its discriminator D_B while
ignoring its input. CycleGAN adds F: B -> A and D_A, and asks that a translation can be translated
back (the cycle-consistency loss, per-pixel means as in the authors' code):
    L = L_GAN(G, D_B) + L_GAN(F, D_A) + lambda (E_a |F(G(a)) - a| + E_b |G(F(b)) - b|)
Notes -> code: the notes' X, Y, G_{X->Y}, G_{Y->X}, D_X, D_Y are A, B, G, F (`Fn` in code), D_A,
D_B; note 003's G.1 = G.4 = G, G.2 = G.3 = F, D.1 = D_B, D.2 = D_A.

Examples:
  python cyclegan.py                                   # the toy pair: arrows a -> G(a), ~30 s
  python cyclegan.py --dataset fashion-mnist:colour    # the palette pair, T known: 6 min
  python cyclegan.py --dataset fashion-mnist:colour --lambda-cycle 0   # the notes' warning
  python cyclegan.py --dataset fashion-mnist:colour --paired           # pix2pix on the same pair
  python cyclegan.py --dataset path/to/folder          # trainA/ trainB/ (testA/ testB/ optional)

Toy pair: 8gaussians, B = T(A) for an affine T. Any permutation of the 8 separated, equally
weighted modes (each moved as a block), then T, is cycle-consistent and gives exactly B: 8! maps no
unpaired loss tells from T. The run measures the share of G(a) on a mode of B, and on T(a)'s (which
no loss rewards). Colour pair: A, B = halves of (Fashion-)MNIST's training images, B through T, a
per-pixel palette (grey -> orange on navy; a 1x1 conv solves it), not note 004's colourisation.

Deviations: 28 px (a folder: 64), 16 base channels, batch 16 (the paper: 256 px, 64, 1), so at 28
px the 70 x 70 PatchGAN sees the whole image; steps, not epochs; 6 residual blocks at any size (the
paper: 9 at 256 px); no identity loss on the toy pair (T moves every point); G and F take no noise
z (note 000's generators do). pix2pix here: the ResNet G with InstanceNorm, not the U-Net with
BatchNorm and dropout as its noise; as in its paper, D's loss is halved, weights start N(0, 0.02).
"""
import argparse, gzip, hashlib, io, json, math, os, sys, tarfile, time, urllib.request, zlib
from pathlib import Path
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# ------------------------------------------------------------------------- 1. T and the data pairs
# Both built-in pairs have a known T: G is checked against the truth T(a), never trained on it.
TOY_SCALE, TOY_SHIFT = torch.tensor([1.5, 0.6]), torch.tensor([0.5, 0.0])
FG = torch.tensor([1.0, 0.55, 0.0]).view(1, 3, 1, 1)  # orange, RGB in [0, 1]
BG = torch.tensor([0.05, 0.15, 0.55]).view(1, 3, 1, 1)  # navy

def toy_T(x):  # stretch x by 1.5, squash y to 0.6, shift right by 0.5
    return x * TOY_SCALE + TOY_SHIFT

def colour_T(x):
    # the palette: a grey level m = (x + 1) / 2 becomes the colour m FG + (1 - m) BG (in [-1, 1])
    return ((x + 1) / 2 * (FG - BG) + BG) * 2 - 1

def colour_T_inverse(y):
    # to grey: the least-squares m = <c - BG, FG - BG> / |FG - BG|^2 for c = (y + 1) / 2, in [0, 1]
    m = (((y + 1) / 2 - BG) * (FG - BG)).sum(1, keepdim=True) / ((FG - BG) ** 2).sum()
    return m.clamp(0, 1) * 2 - 1

def load_pair(cfg, split):
    """A and B in [-1, 1], A's labels, and whether they are held out. Colour pair: A = a random half
    of the training images, B = T(the other half) (--paired: of the same half); test: A = the test
    images (shuffled), B = T(A). A folder: trainA/ trainB/, or for the test split its testA/ testB/
    if it has both."""
    if cfg.dataset.endswith(":colour"):
        x, y, _ = load_data(cfg.dataset.split(":")[0], cfg.data_dir, cfg.image_size, split)
        n, i = len(x) // 2, torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
        i_A, i_B = (i, i) if split == "test" else (i[:n], i[:n] if cfg.paired else i[n:2 * n])
        x = x.float() / 127.5 - 1
        return x[i_A].repeat(1, 3, 1, 1), colour_T(x[i_B]), y[i_A], split == "test"
    root = Path(cfg.dataset)
    test = split == "test" and (root / "testA").is_dir() and (root / "testB").is_dir()
    A, B = (load_data(str(root / s), cfg.data_dir, cfg.image_size)[0].float() / 127.5 - 1
            for s in (("testA", "testB") if test else ("trainA", "trainB")))
    return A, B, None, test

# ------------------------------------------------------------------------- 2. the losses
def lsgan_d_loss(D_real, D_fake):
    # least squares (the paper's choice): L_D = 1/2 E[(D(b) - 1)^2] + 1/2 E[D(G(a))^2]
    return 0.5 * ((D_real - 1) ** 2).mean() + 0.5 * (D_fake ** 2).mean()

def lsgan_g_loss(D_fake):
    # L_GAN(G) = E[(D(G(a)) - 1)^2]: G wants its outputs scored as real
    return ((D_fake - 1) ** 2).mean()

def cycle_loss(x, x_cycled):
    # L_cyc = E |F(G(a)) - a| (and the same for b), the mean over pixels and images
    return (x_cycled - x).abs().mean()

def identity_loss(x, G_x):
    # L_id = E |G(b) - b|: a B image given to G (A -> B) should come back unchanged (keeps colours)
    return (G_x - x).abs().mean()

def bce_d_loss(D_real, D_fake):
    # pix2pix's D, halved as in the paper: 1/2 (-log D(a, b) - log(1 - D(a, G(a)))) on logits l,
    # with -log sigmoid(l) = softplus(-l) and -log(1 - sigmoid(l)) = softplus(l)
    return 0.5 * (F.softplus(-D_real).mean() + F.softplus(D_fake).mean())

def bce_g_loss(D_fake):
    # pix2pix's G, the non-saturating form: -log D(a, G(a)) = softplus(-l)
    return F.softplus(-D_fake).mean()

def lr_at(step, total, base):
    # the paper's schedule: constant for the first half of training, then linearly down to 0
    return base * min(1.0, 2 * (total - step) / total)

def pool_query(pool, batch, size):
    """The discriminators see a history of generated images (Shrivastava et al., 2017): until the
    list `pool` holds `size` images each new one is kept and returned; after that each new image
    is returned with probability 1/2, else a random kept one is returned and the new one kept."""
    out = []
    for img in batch.detach():  # detached: the discriminators' loss must not reach G and F
        if len(pool) < size:
            pool.append(img)
        elif torch.rand(()) < 0.5:
            i = int(torch.randint(size, ()))
            pool[i], img = img, pool[i]
        out.append(img)
    return torch.stack(out)

# ------------------------------------------------------------------------- 3. the models
def resnet_generator(c_in, c_out, width, n_blocks):
    """c7s1-w, d2w, d4w, n x R4w, u2w, uw, c7s1-c in the paper's notation; the 7x7 convolutions are
    padded by 3 pixels of reflection. Instance norm: each image normalised on its own."""
    layers = [nn.ReflectionPad2d(3), nn.Conv2d(c_in, width, 7), nn.InstanceNorm2d(width), nn.ReLU()]
    for w in (width, 2 * width):  # two stride-2 downsamplings
        layers += [nn.Conv2d(w, 2 * w, 3, 2, 1), nn.InstanceNorm2d(2 * w), nn.ReLU()]
    layers += [ResidualBlock(4 * width) for _ in range(n_blocks)]
    for w in (4 * width, 2 * width):  # two stride-2 upsamplings
        layers += [nn.ConvTranspose2d(w, w // 2, 3, 2, 1, output_padding=1),
                   nn.InstanceNorm2d(w // 2), nn.ReLU()]
    return nn.Sequential(*layers, nn.ReflectionPad2d(3), nn.Conv2d(width, c_out, 7), nn.Tanh())

class ResidualBlock(nn.Module):  # x + (pad, conv 3x3, norm, ReLU, pad, conv 3x3, norm)(x)
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c),
                                  nn.ReLU(), nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3),
                                  nn.InstanceNorm2d(c))

    def forward(self, x):
        return x + self.body(x)

def patchgan(c_in, width):
    """C64-C128-C256-C512 (4x4 convolutions, strides 2, 2, 2, 1; no norm on the first), then a 4x4
    convolution to one channel: each output scores one 70 x 70 patch (1 x 1 output at 28 px)."""
    layers, c = [nn.Conv2d(c_in, width, 4, 2, 1), nn.LeakyReLU(0.2)], width
    for mult, stride in ((2, 2), (4, 2), (8, 1)):
        layers += [nn.Conv2d(c, width * mult, 4, stride, 1), nn.InstanceNorm2d(width * mult),
                   nn.LeakyReLU(0.2)]
        c = width * mult
    return nn.Sequential(*layers, nn.Conv2d(c, 1, 4, 1, 1))

def mlp(n_in, width, n_out):
    return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(), nn.Linear(width, n_out))

def build_models(cfg, channels):
    """CycleGAN: G (A -> B), F (B -> A), D_A, D_B; pix2pix: G and a D on (input, output) pairs."""
    toy = cfg.dataset in TOY_SETS
    gen = (lambda: mlp(2, cfg.width, 2)) if toy else \
        (lambda: resnet_generator(channels, channels, cfg.width, 6))  # the paper's 6 blocks
    disc = (lambda c: mlp(c, cfg.width, 1)) if toy else (lambda c: patchgan(c, cfg.width))
    nets = {"G": gen(), "D": disc(2 * channels)} if cfg.paired else \
        {"G": gen(), "F": gen(), "D_A": disc(channels), "D_B": disc(channels)}
    for m in (m for net in nets.values() for m in net.modules() if not toy):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):  # both papers' init: N(0, 0.02)
            nn.init.normal_(m.weight, 0.0, 0.02), nn.init.zeros_(m.bias)
    return nets

# ------------------------------------------------------------------------- 4. training
def train(cfg):
    device, toy, m = pick_device(cfg.device), cfg.dataset in TOY_SETS, cfg.batch_size
    A, B, _, _ = (None,) * 4 if toy else load_pair(cfg, "train")
    nets = {k: v.to(device) for k, v in build_models(cfg, 2 if toy else A.shape[1]).items()}
    gens, discs = [nets[k] for k in nets if k[0] != "D"], [nets[k] for k in nets if k[0] == "D"]
    opt_G = torch.optim.Adam([p for g in gens for p in g.parameters()], cfg.lr, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam([p for d in discs for p in d.parameters()], cfg.lr, betas=(0.5, 0.999))
    pool_A, pool_B, lambda_id = [], [], cfg.lambda_identity * cfg.lambda_cycle  # paper: 0.5 lambda
    start, shown = start_run(cfg), fixed_test_inputs(cfg)
    for step in range(1, cfg.steps + 1):
        for group in opt_G.param_groups + opt_D.param_groups:
            group["lr"] = lr_at(step, cfg.steps, cfg.lr)
        # 1. Draw m images a of A and, independently, m images b of B (pix2pix: b_i = T(a_i)).
        if toy:
            a, b = sample_toy(cfg.dataset, m), toy_T(sample_toy(cfg.dataset, m))
        else:
            i = torch.randint(len(A), (m,))
            a, b = A[i], B[i if cfg.paired else torch.randint(len(B), (m,))]
        a, b = a.to(device), b.to(device)
        if cfg.paired:  # a different game on the same data: see pix2pix_step
            values = pix2pix_step(nets["G"], nets["D"], opt_G, opt_D, a, b, cfg.lambda_l1)
        else:
            G, Fn, D_A, D_B = nets["G"], nets["F"], nets["D_A"], nets["D_B"]
            # 2. Update G and F, with D_A and D_B fixed, descending
            #    L = L_GAN(G, D_B) + L_GAN(F, D_A) + lambda L_cyc + lambda_id L_id.
            fake_b, fake_a = G(a), Fn(b)
            loss_gan = lsgan_g_loss(D_B(fake_b)) + lsgan_g_loss(D_A(fake_a))
            loss_cyc = cycle_loss(a, Fn(fake_b)) + cycle_loss(b, G(fake_a))  # a->G->F, b->F->G
            loss_id = identity_loss(b, G(b)) + identity_loss(a, Fn(a))
            loss_G = loss_gan + cfg.lambda_cycle * loss_cyc + lambda_id * loss_id
            opt_G.zero_grad()
            loss_G.backward()
            opt_G.step()
            # 3. Update D_A and D_B, G and F fixed: real vs generated images, from 50-image pools.
            loss_D_B = lsgan_d_loss(D_B(b), D_B(pool_query(pool_B, fake_b, 50)))
            loss_D_A = lsgan_d_loss(D_A(a), D_A(pool_query(pool_A, fake_a, 50)))
            opt_D.zero_grad()
            (loss_D_A + loss_D_B).backward()
            opt_D.step()
            values = {"loss_G_gan": loss_gan, "loss_cycle": loss_cyc, "loss_identity": loss_id,
                      "loss_D_A": loss_D_A, "loss_D_B": loss_D_B}
        log_step(cfg, start, step, **values, lr=lr_at(step, cfg.steps, cfg.lr))
        if step % cfg.sample_every == 0 or step == cfg.steps:
            plot_translations(cfg, step, nets, shown, device)
            save_checkpoint(cfg, {**nets, "opt_G": opt_G, "opt_D": opt_D}, step)  # not the pools
    return nets

def pix2pix_step(G, D, opt_G, opt_D, a, b, lambda_l1):
    """pix2pix: D judges pairs (input, output), so a is its condition; G fools it, close to b."""
    # 1. Update G, with D fixed: L_G = -log D(a, G(a)) + lambda_L1 E |b - G(a)|
    fake_b = G(a)
    loss_adv, loss_l1 = bce_g_loss(D(torch.cat([a, fake_b], 1))), (fake_b - b).abs().mean()
    opt_G.zero_grad()
    (loss_adv + lambda_l1 * loss_l1).backward()
    opt_G.step()
    # 2. Update D, with G fixed: (a, b) is real, (a, G(a)) is fake
    loss_D = bce_d_loss(D(torch.cat([a, b], 1)), D(torch.cat([a, fake_b.detach()], 1)))
    opt_D.zero_grad()
    loss_D.backward()
    opt_D.step()
    return {"loss_G_adv": loss_adv, "loss_l1": loss_l1, "loss_D": loss_D}

# ------------------------------------------------------------------------- 5. evaluation, figures
def fixed_test_inputs(cfg):
    """The figures' fixed inputs: 300 points of A and of B on the toy pair, else the first 8 test
    images of A and the last 8 of B; and the truth T(a) where it is known."""
    if cfg.dataset in TOY_SETS:
        a = sample_toy(cfg.dataset, 300, torch.Generator().manual_seed(cfg.seed + 2))
        b = sample_toy(cfg.dataset, 300, torch.Generator().manual_seed(cfg.seed + 3))
        return {"a": a, "b": toy_T(b), "truth": toy_T(a)}
    A, B, _, _ = load_pair(cfg, "test")
    truth = B[:8] if cfg.dataset.endswith(":colour") else None  # B[i] = T(A[i]) on the test split
    return {"a": A[:8], "b": B[-8:], "truth": truth}

@torch.no_grad()
def translate(net, x, device, batch=100):  # batched, to the CPU; eval() would change no layer here
    return torch.cat([net(xb.to(device)).cpu() for xb in x.split(batch)])

def evaluate(cfg, nets, device):
    """G on held-out inputs: |G(a) - T(a)| where T is known (2 is the range); on the toy pair the
    share of G(a) on a mode of B, and on the mode T(a) is on. samples.npz gets G(a), or on the
    colour pair T^-1(G(a)), grey, with a's labels y, for fid.py's grey classifier to judge."""
    if cfg.dataset in TOY_SETS:
        a = sample_toy(cfg.dataset, cfg.num_samples, torch.Generator().manual_seed(cfg.seed + 5))
        fake, (centres, std) = translate(nets["G"], a, device, 2500), toy_centres(cfg.dataset)
        d_back = torch.cdist((fake - TOY_SHIFT) / TOY_SCALE, centres)  # T^-1(G(a)) to A's modes
        on_mode = d_back.min(1).values < 3 * std
        on_true_mode = on_mode & (d_back.argmin(1) == torch.cdist(a, centres).argmin(1))
        return {"inputs": "held-out", "l1_to_truth": (fake - toy_T(a)).abs().mean().item(),
                "on_B_modes": on_mode.float().mean().item(),
                "on_true_mode": on_true_mode.float().mean().item()}, {"x": fake.numpy()}
    A, B, y, held_out = load_pair(cfg, "test")
    n = min(cfg.num_samples, len(A))
    fake = translate(nets["G"], A[:n], device)
    result = {"inputs": "held-out test images" if held_out else
              "TRAINING images (the folder has no testA/ testB/)"}
    if cfg.dataset.endswith(":colour"):
        result.update(l1_to_truth=(fake - B[:n]).abs().mean().item(),
                      l1_identity_baseline=(A[:n] - B[:n]).abs().mean().item())
        return result, {"x": to_uint8(colour_T_inverse(fake)), "y": y[:n].numpy()}
    return result, {"x": to_uint8(fake)}

def plot_translations(cfg, step, nets, shown, device):
    """Toy: a (blue), b (orange), T(a) (rings) and an arrow a -> G(a). Images: rows a, G(a), T(a)
    (colour pair), F(G(a)), b, F(b), G(F(b)) for 8 fixed test inputs."""
    a, b, truth = shown["a"], shown["b"], shown["truth"]
    fake_b, fig = translate(nets["G"], a, device), figure(f"{cfg.dataset}, step {step}")
    ax = fig.axes[0]
    if cfg.dataset in TOY_SETS:
        ax.scatter(*a.numpy().T, s=4, c="tab:blue", label="a (domain A)")
        ax.scatter(*b.numpy().T, s=4, c="tab:orange", label="b (domain B)")
        ax.scatter(*truth[:60].numpy().T, s=30, facecolors="none", edgecolors="k", lw=0.6,
                   label="T(a), the true translation")
        ax.quiver(*a[:60].numpy().T, *(fake_b[:60] - a[:60]).numpy().T, angles="xy",
                  scale_units="xy", scale=1, color="tab:green", width=0.003, label="a -> G(a)")
        ax.set(aspect="equal"), ax.legend(loc="lower left", fontsize=7)
    else:
        rows = {"a": a, "G(a)": fake_b, "T(a), truth": truth}
        if "F" in nets:  # CycleGAN: the cycles a -> G -> F and b -> F -> G
            fake_a = translate(nets["F"], b, device)
            rows.update({"F(G(a))": translate(nets["F"], fake_b, device), "b": b, "F(b)": fake_a,
                         "G(F(b))": translate(nets["G"], fake_a, device)})
        rows = {k: v for k, v in rows.items() if v is not None}  # a folder has no truth
        grid = image_grid(torch.cat(list(rows.values())), len(a))
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray")
        ax.set_yticks([(a.shape[2] + 2) * (i + 0.5) for i in range(len(rows))], list(rows))
        ax.set_xticks([])
    save_figure(fig, Path(cfg.out) / f"samples_{step}.png")

def check_options(cfg):
    """The mistakes parse_options cannot see, and the run's folder name."""
    colour = cfg.dataset in ("mnist:colour", "fashion-mnist:colour")
    folder = all(Path(cfg.dataset, s).is_dir() for s in ("trainA", "trainB"))
    mistakes = [
        not (colour or cfg.dataset == "8gaussians" or folder) and f"unknown dataset "
        f"'{cfg.dataset}': use 8gaussians, (fashion-)mnist:colour or a folder with trainA/ trainB/",
        cfg.dataset not in TOY_SETS and (cfg.image_size < 28 or cfg.image_size % 4) and
        f"--image-size {cfg.image_size}: use a multiple of 4 from 28 on (G halves it twice)",
        (min(cfg.lambda_cycle, cfg.lambda_identity, cfg.lambda_l1) < 0 or cfg.lr <= 0) and
        "the --lambda-* weights must not be negative and --lr must be positive",
        cfg.paired and not colour and "--paired (pix2pix) needs pairs: use a colour pair"]
    for mistake in filter(None, mistakes):
        raise SystemExit(f"{PROG}: error: {mistake}")
    if cfg.out == f"runs/cyclegan-{Path(cfg.dataset).name}":  # no ":" in the default folder
        cfg.out = cfg.out.replace(":", "-") + "-paired" * cfg.paired
    return cfg

PROG = "cyclegan.py"
OPTIONS = [  # this script's options, written as COMMON's below
    ("--dataset", "8gaussians", "8gaussians, mnist:colour, fashion-mnist:colour or a folder"),
    ("--steps", 2000, "training steps"),
    ("--batch-size", (256, 16), "minibatch size m (the paper's: 1 image)"),
    ("--lr", 2e-4, "Adam's learning rate, constant for half the steps, then linearly to 0"),
    ("--paired", False, "pix2pix: one G, a D on (input, output) pairs, L1 to the target"),
    ("--lambda-cycle", 10.0, "lambda, the weight of the cycle loss"),
    ("--lambda-identity", (0.0, 0.5), "the identity loss's weight in units of lambda (paper: 0.5)"),
    ("--lambda-l1", 100.0, "--paired: weight of the L1 loss to the target (pix2pix's)"),
    ("--width", (128, 16), "hidden units (toy) or the base channels of G and D (the paper's 64)")]

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
    cfg = check_options(parse_options(argv))
    torch.manual_seed(cfg.seed)
    nets, out = train(cfg), Path(cfg.out)
    result, export = evaluate(cfg, nets, pick_device(cfg.device))
    np.savez(buffer := io.BytesIO(), **export)
    write_atomic(out / "samples.npz", buffer.getvalue())
    write_atomic(out / "metrics.json", json.dumps(result, indent=1))
    plot_log(out)
    print(", ".join(f"{k} {v:.4g}" if type(v) is float else f"{k}: {v}" for k, v in result.items()))
    print(f"figures, samples.npz and checkpoint.pt are in {out}/")
    return nets

if __name__ == "__main__":
    main()
