"""cyclegan.py - unpaired translation with cycle consistency (CycleGAN, Zhu et al., 2017) and its
paired twin pix2pix (Isola et al., 2017), one file to read beside the lecture notes.

With unpaired data, a pile of domain-A images and a pile of domain-B images and no pairs, one GAN
G: A -> B can please its discriminator while ignoring its input: any realistic B image will do. So
CycleGAN trains two generators, G: A -> B and F: B -> A, two discriminators D_B and D_A, and asks
that a translation can be translated back (the cycle-consistency loss, a per-pixel MEAN here as in
the authors' code, so lambda = 10 weighs mean absolute differences):
    L = L_GAN(G, D_B) + L_GAN(F, D_A) + lambda (E_a |F(G(a)) - a| + E_b |G(F(b)) - b|)
Notes -> code: the notes' X and Y are domains A and B; G_{X->Y} is G, G_{Y->X} is F, D_X is D_A, D_Y
is D_B. Note 003's four generators are two, shared: G.1 = G.4 = G, G.2 = G.3 = F (D.1 = D_B, D.2 =
D_A). The colour pair below is the notes' colourisation (上色, note 004), learnt without pairs.

Examples:
  python cyclegan.py                                   # toy 2-D pair: arrows a -> G(a), ~1 min
  python cyclegan.py --dataset fashion-mnist:colour    # colourisation, T known: measured (12 min)
  python cyclegan.py --dataset fashion-mnist:colour --lambda-cycle 0   # the notes' warning
  python cyclegan.py --dataset fashion-mnist:colour --paired           # pix2pix on the same task
  python cyclegan.py --dataset horse2zebra             # downloaded to ./data/horse2zebra/
  python cyclegan.py --dataset path/to/folder          # with trainA/ trainB/ (testA/ testB/)

Built-in pairs are measurable: A is one half of (Fashion-)MNIST's training images, B the OTHER
half through a known transform T, so no pair is ever seen; for a test image a, |G(a) - T(a)| and
whether a classifier of B images gives G(a) the class of T(a) (label preservation) are reported.
On the toy pair (B = T(A), an affine stretch) T is cycle-consistent, but so is T after any symmetry
of A's modes (a rotation by 45 degrees, a reflection): unpaired data cannot tell them apart, and
the run prints how often G(a) lands on the mode T(a) is on.

Deviations: images are 28 px (built-in pairs: 16 base channels, batch 16, not 64 and 1) or 64 px
(photos), not 256; at 28 px the "70 x 70 PatchGAN" has a 1 x 1 output, a whole-image D; steps,
not epochs (2,000 by default); the identity loss is off on 2-D sets (the true map moves every
point). pix2pix: the ResNet G instead of its U-Net, and no dropout (pix2pix's noise z; its outputs
are near deterministic anyway); its D's objective is halved and the weights start from N(0, 0.02),
as in the paper. F is `Fn` in code (F is torch.nn.functional).
"""
import argparse, gzip, hashlib, io, json, math, os, shutil, sys, tarfile, time, urllib.request
import zipfile, zlib
from pathlib import Path
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# ------------------------------------------------------------------------- 1. the concept
def lsgan_d_loss(D_real, D_fake):
    # the least-squares GAN (the paper's choice, steadier than the log loss):
    # L_D = 1/2 E[(D(b) - 1)^2] + 1/2 E[D(G(a))^2]
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
    """The paper's schedule: constant for the first half of training, then linearly down to 0."""
    half = total / 2
    return base if step <= half else base * max(0.0, 1 - (step - half) / (total - half))

class ImagePool:
    """The discriminators see a history of generated images (Shrivastava et al.): until the pool
    holds `size` images each new one is returned and stored; then each new image is returned with
    probability 1/2, else a random stored one is returned (on the batch's device) and replaced."""
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
                out.append(self.images[i].to(img.device))  # a resumed pool holds CPU tensors
                self.images[i] = img.clone()
            else:
                out.append(img)
        return torch.stack(out)

    def state_dict(self):
        return {"images": torch.stack(self.images).cpu() if self.images else torch.zeros(0)}

    def load_state_dict(self, state):
        self.images = list(state["images"]) if state["images"].numel() else []

# ------------------------------------------------------------------------- 2. models
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

def receptive_field(net):
    """One output's field of view: r <- r * stride + (kernel - stride), from the last conv back."""
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
    gen = (lambda: mlp(2, cfg.width, 2)) if toy else \
        (lambda: resnet_generator(channels, channels, cfg.width, cfg.res_blocks))
    disc = (lambda c: mlp(c, cfg.width, 1)) if toy else (lambda c: patchgan(c, cfg.width))
    nets = {"G": gen(), "D": disc(2 * channels)} if cfg.paired else \
        {"G": gen(), "F": gen(), "D_A": disc(channels), "D_B": disc(channels)}
    for m in (m for net in nets.values() for m in net.modules() if not toy):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):  # both papers' init: N(0, 0.02)
            nn.init.normal_(m.weight, 0.0, 0.02), nn.init.zeros_(m.bias)
    return nets

# ------------------------------------------------------------------------- 3. training
def train(cfg):
    device, toy = pick_device(cfg.device), cfg.dataset in TOY_SETS
    A = B = None
    if not toy:
        A, B, _, _ = load_pair(cfg, "train")
        print(f"{cfg.dataset}: {len(A)} images in A, {len(B)} in B, {A.shape[1]} x {cfg.image_size}"
              f" x {cfg.image_size}")
        if cfg.paired and len(A) != len(B):
            raise SystemExit(f"{PROG}: error: --paired needs as many A as B images, not "
                             f"{len(A)} and {len(B)}")
    nets = {k: v.to(device) for k, v in build_models(cfg, 2 if toy else A.shape[1]).items()}
    gens, discs = [nets[k] for k in ("G", "F") if k in nets], [nets[k] for k in nets if k[0] == "D"]
    opt_G = torch.optim.Adam([p for g in gens for p in g.parameters()], cfg.lr, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam([p for d in discs for p in d.parameters()], cfg.lr, betas=(0.5, 0.999))
    pools = {} if cfg.paired else {"pool_A": ImagePool(cfg.pool), "pool_B": ImagePool(cfg.pool)}
    print(f"{'pix2pix' if cfg.paired else 'CycleGAN'}: " + ", ".join(
        f"{k} {sum(p.numel() for p in v.parameters()):,}" for k, v in nets.items()) + " parameters")
    parts = {**nets, "opt_G": opt_G, "opt_D": opt_D, **pools}  # what a checkpoint holds
    start = start_run(cfg)
    shown = fixed_test_inputs(cfg)
    for step in range(1, cfg.steps + 1):
        for group in opt_G.param_groups + opt_D.param_groups:
            group["lr"] = lr_at(step, cfg.steps, cfg.lr)
        if toy:  # unpaired: A and B from independent draws
            a, b = sample_toy(cfg.dataset, cfg.batch_size), toy_transform(
                sample_toy(cfg.dataset, cfg.batch_size))
        else:
            i = torch.randint(len(A), (cfg.batch_size,))
            j = i if cfg.paired else torch.randint(len(B), (cfg.batch_size,))  # paired: b_i, a_i
            a, b = A[i], B[j]
        a, b = a.to(device), b.to(device)
        if cfg.paired:
            G, D = nets["G"], nets["D"]
            # pix2pix 1. G: fool D on the pair (a, G(a)) and stay near the target:
            #    L_G = -log D(a, G(a)) + lambda_L1 E |b - G(a)|
            fake_b = G(a)
            loss_adv, loss_l1 = bce_g_loss(D(torch.cat([a, fake_b], 1))), (fake_b - b).abs().mean()
            loss_G = loss_adv + cfg.lambda_l1 * loss_l1
            opt_G.zero_grad(set_to_none=True), loss_G.backward(), opt_G.step()
            # pix2pix 2. D: (a, b) is real, (a, G(a)) fake: D sees the input as its condition
            loss_D = bce_d_loss(D(torch.cat([a, b], 1)), D(torch.cat([a, fake_b.detach()], 1)))
            opt_D.zero_grad(set_to_none=True), loss_D.backward(), opt_D.step()
            values = {"loss_G_adv": loss_adv, "loss_l1": loss_l1, "loss_D": loss_D}
        else:
            G, Fn, D_A, D_B = nets["G"], nets["F"], nets["D_A"], nets["D_B"]
            # 1. The generators, with the discriminators fixed:
            #    L = L_GAN(G, D_B) + L_GAN(F, D_A) + lambda L_cyc + lambda_id L_id
            fake_b, fake_a = G(a), Fn(b)
            loss_gan = lsgan_g_loss(D_B(fake_b)) + lsgan_g_loss(D_A(fake_a))
            loss_cyc = cycle_loss(a, Fn(fake_b)) + cycle_loss(b, G(fake_a))  # a->G->F, b->F->G
            loss_id = identity_loss(b, G(b)) + identity_loss(a, Fn(a)) if cfg.lambda_identity > 0 \
                else torch.zeros((), device=device)
            loss_G = loss_gan + cfg.lambda_cycle * loss_cyc + cfg.lambda_identity * loss_id
            opt_G.zero_grad(set_to_none=True), loss_G.backward(), opt_G.step()
            # 2. The discriminators: real images, and generated ones drawn through the pools
            loss_D_B = lsgan_d_loss(D_B(b), D_B(pools["pool_B"].query(fake_b)))
            loss_D_A = lsgan_d_loss(D_A(a), D_A(pools["pool_A"].query(fake_a)))
            opt_D.zero_grad(set_to_none=True), (loss_D_A + loss_D_B).backward(), opt_D.step()
            values = {"loss_G_gan": loss_gan, "loss_cycle": loss_cyc, "loss_identity": loss_id,
                      "loss_D_A": loss_D_A, "loss_D_B": loss_D_B}
        log_step(cfg, start, step, **values, lr=lr_at(step, cfg.steps, cfg.lr))
        if step % cfg.sample_every == 0 or step == cfg.steps:
            plot_translations(cfg, step, nets, shown, device)
            save_checkpoint(cfg, parts, step)
    return nets

# ------------------------------------------------------------------------- 4. evaluation, figures
def fixed_test_inputs(cfg):
    """Fixed test inputs for the figures: 8 from A, 8 from B, and T(a) where it is known."""
    if cfg.dataset in TOY_SETS:
        a = sample_toy(cfg.dataset, 300, torch.Generator().manual_seed(cfg.seed + 2))
        b = sample_toy(cfg.dataset, 300, torch.Generator().manual_seed(cfg.seed + 3))
        return {"a": a, "b": toy_transform(b), "truth": toy_transform(a)}
    A, B, _, _ = load_pair(cfg, "test")
    idx = torch.randperm(len(A), generator=torch.Generator().manual_seed(cfg.seed + 2))[:8]
    jdx = torch.randperm(len(B), generator=torch.Generator().manual_seed(cfg.seed + 3))[:8]
    known = data_kind(cfg.dataset) == "builtin" or cfg.paired
    return {"a": A[idx], "b": B[jdx], "truth": B[idx] if known and len(A) == len(B) else None}

@torch.no_grad()
def translate(net, x, device, batch=100):  # in eval mode and in batches, back on the CPU
    was = net.training
    y = torch.cat([net.eval()(xb.to(device)).float().cpu() for xb in x.split(batch)])
    net.train(was)
    return y

class DomainClassifier(nn.Module):
    """A small CNN trained on labelled B images T(x) (built-in pairs): it measures label
    preservation, whether G(a) is recognised as the class of a."""
    def __init__(self, channels, n_classes=10):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Flatten(), nn.LazyLinear(128), nn.ReLU(),
                                 nn.Linear(128, n_classes))

    def forward(self, x):
        return self.net(x)

def train_domain_classifier(B, y_B, steps, device, seed):
    torch.manual_seed(seed)
    clf = DomainClassifier(B.shape[1]).to(device)
    clf(B[:2].to(device))  # materialise the lazy layer
    opt, gen = torch.optim.Adam(clf.parameters(), lr=1e-3), torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(len(B), (128,), generator=gen)
        loss = F.cross_entropy(clf(B[i].to(device)), y_B[i].to(device))
        opt.zero_grad(set_to_none=True), loss.backward(), opt.step()
    return clf.eval()

@torch.no_grad()
def evaluate(cfg, nets, device):
    """|G(a) - T(a)| on held-out inputs (in [-1, 1] units: 2 is the whole range); on images of a
    built-in pair also label preservation; on the mixtures, how often G(a) lands on a mode of B
    and on the mode T(a) is on."""
    kind, G = data_kind(cfg.dataset), nets["G"]
    if kind == "toy":
        a = sample_toy(cfg.dataset, cfg.num_samples, torch.Generator().manual_seed(cfg.seed + 5))
        fake = translate(G, a, device, 2500)
        result = {"inputs": "held-out",
                  "l1_to_truth": (fake - toy_transform(a)).abs().mean().item()}
        if cfg.dataset != "swissroll":  # measured through T^-1, in A's coordinates
            centres, std = toy_centres(cfg.dataset)
            d_back = torch.cdist((fake - TOY_SHIFT) / TOY_SCALE, centres)  # T^-1(G(a)) to A's modes
            d_a = torch.cdist(a, centres)
            on_mode = d_back.min(1).values < 3 * std
            result.update(on_B_modes=on_mode.float().mean().item(), on_true_mode=(
                on_mode & (d_back.argmin(1) == d_a.argmin(1))).float().mean().item())
        return result, fake
    A, B, y_A, _ = load_pair(cfg, "test")
    n = min(cfg.num_samples, len(A))
    fake = translate(G, A[:n], device)
    result = {"inputs": "held-out test images" if kind == "builtin" or
              all(Path(cfg.dataset, s).is_dir() for s in ("testA", "testB"))
              else "TRAINING images (the folder has no testA/ testB/)"}
    if kind != "builtin":
        return {**result, **({"l1_to_target": (fake - B[:n]).abs().mean().item()}
                             if cfg.paired else {})}, fake
    result.update(l1_to_truth=(fake - B[:n]).abs().mean().item(),
                  l1_identity_baseline=(A[:n] - B[:n]).abs().mean().item())
    with torch.enable_grad():
        _, B_train, _, y_B = load_pair(cfg, "train")
        clf = train_domain_classifier(B_train, y_B, cfg.eval_classifier_steps, device, cfg.seed + 6)
    pred = lambda x: torch.cat([clf(xb.to(device)).argmax(1).cpu() for xb in x.split(500)])
    p_fake, p_truth = pred(fake), pred(B[:n])
    result.update(label_preservation=(p_fake == p_truth).float().mean().item(), evaluated=n,
                  classifier_accuracy_on_truth=(p_truth == y_A[:n]).float().mean().item())
    return result, fake

def plot_translations(cfg, step, nets, shown, device):
    """2-D: a (blue), b (orange), T(a) (rings) and an arrow a -> G(a). Images: rows a, G(a),
    F(G(a)), T(a), b, F(b), G(F(b)) for 8 fixed test inputs."""
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
        rows = {"a": a, "G(a)": fake_b}
        if "F" in nets:
            rows["F(G(a))"] = translate(nets["F"], fake_b, device)
        if truth is not None:
            rows["target" if cfg.paired else "T(a), truth"] = truth
        if "F" in nets:
            fake_a = translate(nets["F"], b, device)
            rows.update({"b": b, "F(b)": fake_a, "G(F(b))": translate(nets["G"], fake_a, device)})
        grid = image_grid(torch.cat(list(rows.values())), len(a))
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray")
        h = a.shape[2] + 2
        ax.set_yticks([h * (i + 0.5) for i in range(len(rows))], list(rows), fontsize=8)
        ax.set_xticks([])
    save_figure(fig, Path(cfg.out) / f"samples_{step}.png")

# ------------------------------------------------------------------------- 5. the data pairs
TOY_SCALE, TOY_SHIFT = torch.tensor([1.5, 0.6]), torch.tensor([0.5, 0.0])
COLOUR_FG, COLOUR_BG = torch.tensor([1.0, 0.55, 0.0]), torch.tensor([0.05, 0.15, 0.55])  # in [0, 1]
TRANSFORMS = ("colour", "invert")  # the built-in pairs: <mnist|fashion-mnist>:<transform>
PHOTO_SETS = ("apple2orange", "summer2winter_yosemite", "horse2zebra", "monet2photo",
              "cezanne2photo", "ukiyoe2photo", "vangogh2photo", "maps", "cityscapes", "facades",
              "iphone2dslr_flower")
PHOTO_URL = "https://efrosgans.eecs.berkeley.edu/cyclegan/datasets/"

def toy_transform(x):  # the toy pair's T: stretch x by 1.5, squash y to 0.6, shift right by 0.5
    return x * TOY_SCALE + TOY_SHIFT

def pair_transform(x, transform):
    """T of the built-in pairs, on grey images in [-1, 1]. colour: the brightness m = (x + 1) / 2
    mixes two colours, T(x) = m orange + (1 - m) navy; invert: T(x) = -x."""
    if transform == "invert":
        return -x
    m = (x + 1) / 2
    return (m * COLOUR_FG.view(1, 3, 1, 1) + (1 - m) * COLOUR_BG.view(1, 3, 1, 1)) * 2 - 1

def builtin_pair(name, data_dir, image_size, split, paired=False):
    """train: A = one random half of the training images, B = T(the other half), so no pair is
    seen (paired: B = T(the same half)); test: A = the test images, B = T(A). Returns A, B and
    their labels."""
    base, _, transform = name.partition(":")
    x, y, _ = load_data(base, data_dir, image_size, split)
    x = x.float() / 127.5 - 1
    lift = (lambda x: x.repeat(1, 3, 1, 1)) if transform == "colour" else (lambda x: x)
    if split == "test":
        return lift(x), pair_transform(x, transform), y, y
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    ia, ib = perm[: len(x) // 2], perm[len(x) // 2: 2 * (len(x) // 2)]
    ib = ia if paired else ib
    return lift(x[ia]), pair_transform(x[ib], transform), y[ia], y[ib]

def fetch_photo_set(name, data_dir):
    """A CycleGAN photo set from the authors' server (no checksums are published), unpacked to
    <data-dir>/<name>/; zipfile checks every member's CRC and keeps names inside the folder."""
    root, url, tmp = Path(data_dir, name), PHOTO_URL + name + ".zip", Path(data_dir, f".{name}.tmp")
    if (root / "trainA").is_dir():
        return root
    try:
        print(f"downloading {url}", file=sys.stderr, flush=True)
        data = urllib.request.urlopen(url, timeout=60).read()
    except OSError as e:
        raise SystemExit(f"{PROG}: error: cannot download {url} ({getattr(e, 'reason', e)}); "
                         f"with no network, unpack {name}.zip in {root.parent}/") from None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            z.extractall(tmp)
        inner = tmp / name if (tmp / name).is_dir() else tmp
        if not ((inner / "trainA").is_dir() and (inner / "trainB").is_dir()):
            raise zipfile.BadZipFile("no trainA/ and trainB/ inside")
        os.replace(inner, root)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise SystemExit(f"{PROG}: error: {url} is not a usable CycleGAN archive ({e}); nothing "
                         "was kept") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root

def load_pair(cfg, split):
    """Domains A and B in [-1, 1] for a split, and their labels where known (built-in pairs). A
    folder without testA/ testB/ gives its training images for the test split."""
    if data_kind(cfg.dataset) == "builtin":
        return builtin_pair(cfg.dataset, cfg.data_dir, cfg.image_size, split, cfg.paired)
    root = Path(fetch_photo_set(cfg.dataset, cfg.data_dir) if cfg.dataset in PHOTO_SETS
                else cfg.dataset)
    sub = ("testA", "testB") if split == "test" and (root / "testA").is_dir() and \
        (root / "testB").is_dir() else ("trainA", "trainB")
    A, B = (load_data(str(root / s), cfg.data_dir, cfg.image_size)[0].float() / 127.5 - 1
            for s in sub)
    return A, B, None, None

def data_kind(name):
    base, _, transform = name.partition(":")
    return "toy" if name in TOY_SETS else "builtin" if base in ("mnist", "fashion-mnist") and \
        transform in TRANSFORMS else "photo" if name in PHOTO_SETS else \
        "folder" if Path(name).is_dir() else None

def check_options(cfg):
    """The defaults that depend on the data kind, and the mistakes parse_options cannot see."""
    kind = data_kind(cfg.dataset)
    if kind is None:
        raise SystemExit(f"{PROG}: error: unknown dataset '{cfg.dataset}': choose one of "
                         f"{', '.join(TOY_SETS)}, (fashion-)mnist:colour or :invert, a CycleGAN "
                         f"set ({', '.join(PHOTO_SETS[:4])}, ...) or a folder with trainA/ trainB/")
    if cfg.out == f"runs/cyclegan-{Path(cfg.dataset).name}":
        cfg.out = cfg.out.replace(":", "-") + "-paired" * cfg.paired
    cfg.batch_size = cfg.batch_size or (16 if kind == "builtin" else 1)
    cfg.width = cfg.width or (16 if kind == "builtin" else 64)
    cfg.res_blocks = cfg.res_blocks or (6 if cfg.image_size < 256 else 9)
    if cfg.lambda_identity < 0:
        cfg.lambda_identity = 0.5 * cfg.lambda_cycle
    cfg.pool = int(cfg.pool_size) if cfg.pool_size.isdigit() else -1
    mistakes = [
        kind != "toy" and not (28 <= cfg.image_size <= 256 and cfg.image_size % 4 == 0) and
        f"--image-size {cfg.image_size}: use 28 to 256, a multiple of 4 (two stride-2 steps)",
        cfg.pool < 0 and f"--pool-size must be a whole number >= 0, not {cfg.pool_size!r}",
        (min(cfg.lambda_cycle, cfg.lambda_identity, cfg.lambda_l1) < 0 or cfg.lr <= 0) and
        "the --lambda-* weights must not be negative and --lr must be positive",
        cfg.paired and kind in ("toy", "photo") and "--paired needs paired data: a built-in pair "
        "(e.g. fashion-mnist:colour) or a folder whose trainA/ and trainB/ share file names"]
    for sub in ("trainA", "trainB") if kind == "folder" else ():
        if not Path(cfg.dataset, sub).is_dir():
            mistakes.append(f"{cfg.dataset} has no {sub}/ folder: a translation folder needs "
                            "trainA/ and trainB/ (testA/ testB/ optional)")
    if kind == "folder" and cfg.paired and not any(mistakes) and len({tuple(sorted(
            p.name for p in Path(cfg.dataset, s).rglob("*") if p.suffix.lower() in IMAGE_FILES))
            for s in ("trainA", "trainB")}) > 1:
        mistakes.append("--paired: trainA/ and trainB/ must hold images with the same file names")
    for mistake in filter(None, mistakes):
        raise SystemExit(f"{PROG}: error: {mistake}")
    return cfg

PROG = "cyclegan.py"
OPTIONS = [  # this script's options, written as COMMON's below
    ("--dataset", "8gaussians", "a toy 2-D pair, mnist:colour, fashion-mnist:colour, mnist:invert,"
     " fashion-mnist:invert, a CycleGAN photo set (horse2zebra, ...) or a folder: trainA/ trainB/"),
    ("--steps", 2000, "training steps"),
    ("--batch-size", (256, 0), "minibatch size; 0: 16 for built-in pairs, else 1 (the paper's)"),
    ("--lr", 2e-4, "Adam's learning rate, constant for half the steps, then linearly to 0"),
    ("--paired", False, "pix2pix: one G, a D on (input, output) pairs, L1 to the target"),
    ("--lambda-cycle", 10.0, "lambda, the weight of the cycle loss"),
    ("--lambda-identity", (0.0, -1.0), "weight of the identity loss; negative: half of lambda (the "
     "paper's)"),
    ("--lambda-l1", 100.0, "--paired: weight of the L1 loss to the target (pix2pix's)"),
    ("--pool-size", "50", "generated images the discriminators remember (the paper's 50; 0: none)"),
    ("--width", (128, 0), "hidden units (2-D) or base channels; 0: 16 for built-in pairs, else 64"),
    ("--res-blocks", (6, 0), "residual blocks in G; 0: 6 below 256 px, 9 from 256 px"),
    ("--eval-classifier-steps", 800, "built-in pairs: steps of the B classifier that measures "
     "label preservation"),
    ("--sample-every", 500, "steps between sample figures and checkpoints")]

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
    result, fake = evaluate(cfg, nets, pick_device(cfg.device))
    np.savez(buffer := io.BytesIO(), x=fake.numpy() if cfg.dataset in TOY_SETS else to_uint8(fake))
    write_atomic(out / "samples.npz", buffer.getvalue())
    write_atomic(out / "metrics.json", json.dumps(result, indent=1))
    plot_log(out)
    print(f"{result['inputs']} inputs: " + ", ".join(f"{k} {v:.4g}" for k, v in result.items()
                                                      if k != "inputs"))
    if "on_true_mode" in result:
        print(f"{result['on_B_modes']:.1%} of G(a) land on a mode of B, "
              f"{result['on_true_mode']:.1%} on the mode T(a) is on: unpaired data cannot tell "
              "B's modes apart, so a symmetry of them after T is as cycle-consistent as T")
    print(f"figures, samples.npz (G applied to those inputs) and checkpoint.pt are in {out}/")
    return nets

if __name__ == "__main__":
    main()
