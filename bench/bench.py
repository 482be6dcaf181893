"""make bench: the quality and speed figures the README publishes, measured by running the scripts.

    python bench/bench.py                 # everything (8-9 hours on a 2-core CPU)
    BENCH_QUICK=1 python bench/bench.py   # reduced budgets, a smoke check in a few minutes
    python bench/bench.py --reuse         # read runs that already finished with the same flags
    python bench/bench.py --only gan-toy,gan-js

Writes bench/results.md and bench/results.json (BENCH_QUICK: results_quick.*). Each run's folder is
runs/bench/<name>/ (BENCH_QUICK: runs/bench_quick/<name>/).
"""
import argparse
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = os.environ.get("BENCH_QUICK") == "1"
RUNS = ROOT / "runs" / ("bench_quick" if QUICK else "bench")  # a quick run never replaces a full run's folders


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


FINISHED_ONLY = False  # --finished-only: tabulate runs that finished, mark the others "not run"


class NotRun(Exception):
    pass


def run_script(script, name, args, reuse, checkpoint_from=None, procs=1):
    """Run `python script --out runs/bench/name args`; with reuse, a finished run with the same flags is read.
    checkpoint_from: a run folder whose checkpoint.pt is copied in first (for a --resume run that only samples)."""
    out = RUNS / name
    argv = [*map(str, args), "--out", str(out)]
    stamp = out / "bench_argv.json"
    if reuse and stamp.exists() and json.loads(stamp.read_text()) == argv:
        print(f"[bench] reusing {out}")
        return out, json.loads((out / "bench_seconds.json").read_text())
    if FINISHED_ONLY:
        raise NotRun(name)
    if out.exists():
        shutil.rmtree(out)
    if checkpoint_from is not None:
        out.mkdir(parents=True)
        shutil.copy(checkpoint_from / "checkpoint.pt", out / "checkpoint.pt")
    print(f"[bench] python {script} {' '.join(argv)}", flush=True)
    t0 = time.time()
    launch = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   f"--nproc_per_node={procs}"]
    subprocess.run([*launch, str(ROOT / script), *argv], check=True, cwd=ROOT,
                   env={**os.environ, "OMP_NUM_THREADS": "1"} if procs > 1 else None)
    seconds = time.time() - t0
    (out / "bench_seconds.json").write_text(json.dumps(seconds))
    stamp.write_text(json.dumps(argv))
    return out, seconds


def publish(figure, name):
    """Copy a run's figure into assets/, where the README shows it."""
    (ROOT / "assets").mkdir(exist_ok=True)
    shutil.copy(figure, ROOT / "assets" / name)


def last_log_row(out):
    rows = list(csv.DictReader(open(out / "log.csv")))
    return {k: float(v) for k, v in rows[-1].items()}


# ---------------------------------------------------------------------------------- gan.py
def bench_gan_toy(reuse):
    rows = []
    seeds = [0] if QUICK else [0, 1, 2]
    for dataset in ["8gaussians"] if QUICK else ["8gaussians", "25gaussians"]:
        for seed in seeds:
            args = ["--dataset", dataset, "--seed", seed, "--log-every", 500] + (["--steps", 300] if QUICK else [])
            out, seconds = run_script("gan.py", f"gan-{dataset}-s{seed}", args, reuse)
            m, last = json.loads((out / "metrics.json").read_text()), last_log_row(out)
            if seed == 0 and not QUICK:
                publish(out / f"samples_{int(last['step'])}.png", f"gan_{dataset}.png")
            rows.append({"dataset": dataset, "seed": seed, "steps": int(last["step"]),
                         "modes": f"{m['modes']}/{m['of']}", "high_quality_%": round(100 * m["high_quality"], 1),
                         "steps_per_s": round(last["step"] / last["seconds"], 1), "wall_s": round(seconds)})
    return rows


def bench_gan_js(reuse):
    args = ["--experiment", "js"] + (["--js-steps", 200] if QUICK else [])
    out, seconds = run_script("gan.py", "gan-js", args, reuse)
    if not QUICK:
        publish(out / "js.png", "gan_js.png")
    r = list(csv.DictReader(open(out / "js.csv")))
    g = [x for x in r if x["case"] == "gaussians"]
    lines = [x for x in r if x["case"] == "parallel lines" and float(x["theta"]) > 0]
    return [{
        "gaussians: max abs(JS lower bound - exact JS)": round(max(abs(float(x["js_lower_bound"]) - float(x["js_exact"])) for x in g), 4),
        "lines (theta > 0): JS lower bound / log 2, min..max": f"{min(float(x['js_lower_bound']) for x in lines) / math.log(2):.4f}.."
                                                             f"{max(float(x['js_lower_bound']) for x in lines) / math.log(2):.4f}",
        "lines: minimax gradient at smallest -> largest theta": f"{float(lines[0]['grad_minimax']):.1e} -> {float(lines[-1]['grad_minimax']):.1e}",
        "gaussians: minimax gradient, peak -> theta=8": f"{max(float(x['grad_minimax']) for x in g):.2f} -> {float(g[-1]['grad_minimax']):.1e}",
        "gaussians: mean abs(sigmoid(D) - D*), largest over theta": round(max(float(x["mean_abs_D_minus_D_star"]) for x in g), 4),
        "wall_s": round(seconds)}]


def bench_gan_images(reuse):
    args = ["--dataset", "fashion-mnist", "--log-every", 200] + (["--steps", 40] if QUICK else [])
    out, seconds = run_script("gan.py", "gan-fashion-mnist", args, reuse)
    last = last_log_row(out)
    if not QUICK:  # the README shows this run's final grid
        publish(out / f"samples_{int(last['step'])}.png", "gan_fashion_mnist.png")
    r = fid_scores(out / "samples.npz")
    return [{"dataset": "fashion-mnist", "steps": int(last["step"]), "batch": 64,
             "steps_per_s": round(last["step"] / last["seconds"], 2), "wall_s": round(seconds),
             "final D(x)": round(last["D_x"], 2), "final D(G(z))": round(last["D_G_z"], 2),
             "FD (classifier)": round(r["FD (classifier features)"], 2), "score": round(r["classifier score"][0], 2),
             "missing classes": r["coverage"]["missing_classes"] or "none"}]


# ---------------------------------------------------------------------------------- wgan_gp.py
def bench_wgan_toy(reuse):
    """Default runs on both mixtures for each Lipschitz method, with the curve of modes / high-quality %
    against training time (from log.csv)."""
    rows = []
    for dataset in ["25gaussians"] if QUICK else ["25gaussians", "8gaussians"]:
        for lip in ["gp", "clip", "sn"]:
            args = ["--dataset", dataset, "--lipschitz", lip, "--log-every", 500] + (["--steps", 100] if QUICK else [])
            try:
                out, seconds = run_script("wgan_gp.py", f"wgan_gp-{dataset}-{lip}", args, reuse)
            except NotRun:
                rows.append({"dataset": dataset, "lipschitz": lip, "steps": "not run", "modes": "", "high_quality_%": "",
                             "final critic objective": "", "steps_per_s": "", "wall_s": "", "high-quality % over time": ""})
                continue
            m, log = json.loads((out / "metrics.json").read_text()), list(csv.DictReader(open(out / "log.csv")))
            if dataset == "25gaussians" and not QUICK:
                publish(out / f"samples_{int(float(log[-1]['step']))}.png", f"wgan_gp_{dataset}_{lip}.png")
            curve = " ".join(f"{float(r['seconds']):.0f}s:{100 * float(r['high_quality']):.0f}%" for r in log[1::2])
            rows.append({"dataset": dataset, "lipschitz": lip, "steps": int(float(log[-1]["step"])),
                         "modes": f"{m['modes']}/{m['of']}", "high_quality_%": round(100 * m["high_quality"], 1),
                         "final critic objective": round(float(log[-1]["critic_objective"]), 4),
                         "steps_per_s": round(float(log[-1]["step"]) / float(log[-1]["seconds"]), 1), "wall_s": round(seconds),
                         "high-quality % over time": curve})
    return rows


def bench_wgan_experiments(reuse):
    rows = []
    out, seconds = run_script("wgan_gp.py", "wgan_gp-w-vs-js", ["--experiment", "w-vs-js"] +
                              (["--exp-steps", 60] if QUICK else []), reuse)
    fits = json.loads((out / "w_vs_js_fit.json").read_text())
    r = list(csv.DictReader(open(out / "w_vs_js.csv")))
    lines = [x for x in r if x["case"] == "parallel lines" and float(x["theta"]) > 0]
    for case, f in fits.items():
        rows.append({"experiment": f"w-vs-js, {case}", "result": f"critic objective = {f['slope']:.3f} abs(theta) + {f['intercept']:.3f}, "
                     f"R^2 = {f['r2']:.4f}", "wall_s": round(seconds)})
    rows.append({"experiment": "w-vs-js, parallel lines, theta > 0", "result": "JS lower bound / log 2 = "
                 f"{min(float(x['js_lower_bound']) for x in lines) / math.log(2):.3f}..{max(float(x['js_lower_bound']) for x in lines) / math.log(2):.3f}; "
                 f"gradient at theta = {lines[-1]['theta']}: WGAN {float(lines[-1]['grad_wgan']):.2f}, GAN {float(lines[-1]['grad_gan_minimax']):.1e}",
                 "wall_s": round(seconds)})
    if not QUICK:
        publish(out / "w_vs_js.png", "wgan_gp_w_vs_js.png")
    out, seconds = run_script("wgan_gp.py", "wgan_gp-gradnorm", ["--experiment", "gradnorm"] +
                              (["--exp-steps", 60] if QUICK else []), reuse)
    for line in list(csv.reader(open(out / "gradnorm.csv")))[1:]:
        v = [float(x) for x in line[1:]]
        rows.append({"experiment": f"gradnorm, {line[0]}", "result": f"layer 1 (input) {v[0]:.1e} ... layer 13 {v[-1]:.1e}",
                     "wall_s": round(seconds)})
    if not QUICK:
        publish(out / "gradnorm.png", "wgan_gp_gradnorm.png")
    return rows


def bench_wgan_images(reuse):
    # A CPU candidate for 15 minutes: the paper's n_critic = 5 and lr 1e-4 give blobs in that time here;
    # n_critic 2 and lr 2e-4 with width 32 gave FD 87 at 3,000 steps (v1); width 64 matches gan.py's G.
    args = ["--dataset", "fashion-mnist", "--n-critic", 2, "--lr", 2e-4, "--width", 64, "--log-every", 250,
            "--sample-every", 1000, "--steps", 30 if QUICK else 4000]
    out, seconds = run_script("wgan_gp.py", "wgan_gp-fashion-mnist-w64", args, reuse)
    last = last_log_row(out)
    if not QUICK:
        publish(out / f"samples_{int(last['step'])}.png", "wgan_gp_fashion_mnist.png")
    r = fid_scores(out / "samples.npz")
    return [{"dataset": "fashion-mnist", "n_critic": 2, "lr": 2e-4, "width": 64, "steps": int(last["step"]), "batch": 64,
             "steps_per_s": round(last["step"] / last["seconds"], 2),
             "wall_s": round(seconds), "final critic objective": round(last["critic_objective"], 3),
             "FD (classifier)": round(r["FD (classifier features)"], 2), "score": round(r["classifier score"][0], 2),
             "missing classes": r["coverage"]["missing_classes"] or "none"}]


# ---------------------------------------------------------------------------------- fid.py
def bench_fid_frechet(reuse):
    """Our eigendecomposition Frechet distance against scipy's sqrtm on the same 2048-d covariances."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import fid
    try:
        from scipy import linalg
    except ImportError:
        return [{"note": "scipy not installed: comparison skipped"}]
    rows = []
    for d in [64, 512, 2048]:
        rng = np.random.default_rng(d)
        f1, f2 = rng.standard_normal((2 * d + 100, d)), rng.standard_normal((2 * d + 100, d)) @ rng.uniform(0.5, 1.5, (d, d)) / math.sqrt(d)
        mu1, s1 = fid.gaussian_statistics(f1)
        mu2, s2 = fid.gaussian_statistics(f2)
        reps = 1 if (QUICK or d == 2048) else 3
        t = time.perf_counter()
        for _ in range(reps):
            ours = fid.frechet_distance(mu1, s1, mu2, s2)
        t_ours = (time.perf_counter() - t) / reps
        t = time.perf_counter()
        for _ in range(reps):
            covmean = linalg.sqrtm(s1 @ s2)
            ref = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)
        t_ref = (time.perf_counter() - t) / reps
        rows.append({"dims": d, "ours_s": round(t_ours, 3), "scipy_sqrtm_s": round(t_ref, 3),
                     "speed-up": round(t_ref / t_ours, 1), "relative difference": f"{abs(ours - ref) / abs(ref):.1e}"})
    return rows


def bench_fid_throughput(reuse):
    sys.path.insert(0, str(ROOT))
    import torch
    import fid
    torch.manual_seed(0)
    rows = []
    for name, model, shape, n in [("inception (2048-d, 32 px input resized to 299)", fid.FIDInceptionV3(2048), (3, 32, 32), 50 if QUICK else 200),
                                  ("classifier (128-d, 28 px)", fid.Classifier(), (1, 28, 28), 2000 if QUICK else 20000)]:
        model.eval()
        x = torch.rand(50, *shape)
        with torch.no_grad():
            model(x[:2])  # warm-up
            t = time.perf_counter()
            for _ in range(n // 50):
                model(x)
        rows.append({"extractor": name, "images_per_s": round(n / (time.perf_counter() - t), 1), "batch": 50})
    return rows


def bench_fid_scores(reuse):
    """Train the classifier, then the real-vs-real floor and gan.py's Fashion-MNIST samples."""
    clf = RUNS / "fid-classifier" / "fashion-mnist.pt"
    stamp = clf.with_suffix(".json")
    if not (reuse and stamp.exists()):
        clf.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        args = ["train-classifier", "--dataset", "fashion-mnist", "--out", str(clf)] + (["--epochs", "1"] if QUICK else [])
        print(f"[bench] python fid.py {' '.join(args)}", flush=True)
        text = subprocess.run([sys.executable, str(ROOT / "fid.py"), *args], check=True, cwd=ROOT,
                              capture_output=True, text=True).stdout
        acc = float(text.rsplit("test accuracy ", 1)[1].split("%")[0])
        stamp.write_text(json.dumps({"accuracy": acc, "seconds": time.time() - t0}))
    c = json.loads(stamp.read_text())
    rows = [{"what": "classifier: test accuracy (Fashion-MNIST, 10,000 test images)", "value": f"{c['accuracy']:.2f} %",
             "seconds": round(c["seconds"])}]
    pairs = [] if QUICK else [("real test vs real train (the floor)", "fashion-mnist:test", "10000"),
                              ("the same floor at N = 1,000 (FD's small-sample bias)", "fashion-mnist:test", "1000")]
    gan_samples = RUNS / "gan-fashion-mnist" / "samples.npz"
    if gan_samples.exists():
        pairs.append(("gan.py default run (1,000 samples) vs real train", str(gan_samples), "2000" if QUICK else "10000"))
    for what, source, n in pairs:
        t0 = time.time()
        r = json.loads(subprocess.run([sys.executable, str(ROOT / "fid.py"), source, "fashion-mnist", "--classifier", str(clf),
                                       "--json", "--num-real", n], check=True, cwd=ROOT, capture_output=True, text=True).stdout)
        cov = r["coverage"]
        rows.append({"what": what, "value": f"FD {r['FD (classifier features)']:.2f}, KD {r['KD (classifier features)'][0]:.4f}, "
                     f"score {r['classifier score'][0]:.2f}, confidence {cov['confidence']:.2f}, class entropy "
                     f"{cov['class_entropy']:.3f}/{cov['max_entropy']:.3f}, missing {cov['missing_classes'] or 'none'}"
                     + (f", likely copies {100 * r['memorisation']['likely_copies']:.1f} % (nearest-train distance median "
                        f"{r['memorisation']['median_nn_distance']:.2f} vs held-out {r['memorisation']['heldout_median_nn_distance']:.2f})"
                        if "memorisation" in r else ""), "seconds": round(time.time() - t0)})
    return rows


def bench_fid_toy(reuse):
    """FD sees only means and covariances: 25gaussians against itself, its Gaussian fit and 8gaussians."""
    rows = []
    for source in ["25gaussians:test", "25gaussians:gaussian", "8gaussians", "swissroll"]:
        r = json.loads(subprocess.run([sys.executable, str(ROOT / "fid.py"), source, "25gaussians", "--json"],
                                      check=True, cwd=ROOT, capture_output=True, text=True).stdout)
        rows.append({"generated (10,000 points)": source, "reference": "25gaussians", "FD (2-D points)": f"{r['FD (2-D points)']:.4f}",
                     "KD (2-D points)": f"{r['KD (2-D points)'][0]:.4f}", "modes of 25": r["modes"]["modes"],
                     "high quality %": round(100 * r["modes"]["high_quality"], 1)})
    return rows


def fid_scores(samples):
    """fid.py's classifier-feature scores of a samples.npz against real Fashion-MNIST (train)."""
    clf = RUNS / "fid-classifier" / "fashion-mnist.pt"
    if not clf.exists():
        bench_fid_scores(reuse=True)  # trains the classifier once
    return json.loads(subprocess.run([sys.executable, str(ROOT / "fid.py"), str(samples), "fashion-mnist", "--classifier",
                                      str(clf), "--json", "--num-real", "2000" if QUICK else "10000"], check=True, cwd=ROOT,
                                     capture_output=True, text=True).stdout)


# ---------------------------------------------------------------------------------- cgan.py
def bench_cgan_toy(reuse):
    rows = []
    for dataset in ["8gaussians"] if QUICK else ["8gaussians", "25gaussians"]:
        for w in [0.5, 0.0]:
            args = ["--dataset", dataset, "--mismatch-weight", w, "--log-every", 500] + (["--steps", 100] if QUICK else [])
            out, seconds = run_script("cgan.py", f"cgan-{dataset}-w{w}", args, reuse)
            m, last = json.loads((out / "metrics.json").read_text()), last_log_row(out)
            if w == 0.5 and dataset == "25gaussians" and not QUICK:
                publish(out / f"samples_{int(last['step'])}.png", f"cgan_{dataset}.png")
            rows.append({"dataset": dataset, "mismatch weight": w, "steps": int(last["step"]),
                         "on asked mode (3 std) %": round(100 * m["on_target"], 1),
                         "worst class %": round(100 * m["worst_class_on_target"], 1),
                         "nearest mode = asked %": round(100 * m["nearest_is_asked"], 1),
                         "modes": f"{m['modes']}/{m['of']}", "steps_per_s": round(last["step"] / last["seconds"], 1),
                         "wall_s": round(seconds)})
    return rows


def bench_cgan_images(reuse):
    """Fashion-MNIST: the default (projection D, w = 1/2), without the mismatch term, and with the concat D;
    fid.py's classifier says which class each sample looks like (conditional accuracy)."""
    rows = []
    runs = [("projection", 0.5, None), ("projection", 0.0, None), ("concat", 0.5, None)]
    for d_cond, w, steps in runs[:2] if QUICK else runs:
        args = ["--dataset", "fashion-mnist", "--d-cond", d_cond, "--mismatch-weight", w, "--log-every", 200] + \
               (["--steps", 30] if QUICK else ["--steps", steps] if steps else [])
        try:
            out, seconds = run_script("cgan.py", f"cgan-fashion-mnist-{d_cond}-w{w}" + (f"-s{steps}" if steps else ""), args, reuse)
        except NotRun:
            rows.append({"D": d_cond, "mismatch weight": w, "steps": "not run"})
            continue
        last = last_log_row(out)
        if (d_cond, w, steps) == ("projection", 0.5, None) and not QUICK:
            publish(out / f"samples_{int(last['step'])}.png", "cgan_fashion_mnist.png")
        r = fid_scores(out / "samples.npz")
        cov = r["coverage"]
        rows.append({"D": d_cond, "mismatch weight": w, "steps": int(last["step"]),
                     "conditional accuracy %": round(100 * cov["conditional_accuracy"], 1),
                     "FD (classifier)": round(r["FD (classifier features)"], 2), "score": round(r["classifier score"][0], 2),
                     "missing classes": cov["missing_classes"] or "none",
                     "steps_per_s": round(last["step"] / last["seconds"], 2), "wall_s": round(seconds)})
    return rows


# ---------------------------------------------------------------------------------- ddpm.py
def bench_ddpm_toy(reuse):
    """The default 2-D run (25gaussians) and 8gaussians, one process; and 25gaussians again under
    torchrun with two gloo processes of one thread each (the same global batch of 1,024)."""
    rows = []
    runs = [("25gaussians", 1), ("8gaussians", 1), ("25gaussians", 2)]
    for dataset, procs in runs[:1] if QUICK else runs:
        args = ["--dataset", dataset] + (["--steps", 200, "--timesteps", 100] if QUICK else [])
        out, seconds = run_script("ddpm.py", f"ddpm-{dataset}" + "-torchrun2" * (procs > 1), args, reuse, procs=procs)
        m, last = json.loads((out / "metrics.json").read_text()), last_log_row(out)
        if not QUICK and dataset == "25gaussians" and procs == 1:
            publish(out / f"samples_{int(last['step'])}.png", f"ddpm_{dataset}.png")
            publish(out / "reverse_process.png", f"ddpm_{dataset}_reverse_process.png")
        rows.append({"dataset": dataset, "processes": procs, "steps": int(last["step"]), "modes": f"{m['modes']}/{m['of']}",
                     "high_quality_%": round(100 * m["high_quality"], 1), "train_s": round(last["seconds"]),
                     "steps_per_s": round(last["step"] / last["seconds"], 1),
                     "samples": m["samples"], "sampler": f"{m['sampler']} ({m['steps']} steps)",
                     "sampling_s": round(m["sampling_seconds"], 1), "wall_s": round(seconds)})
    return rows


def bench_ddpm_images(reuse):
    """The headline command, python ddpm.py --dataset fashion-mnist, timed whole (training, 1,000
    DDIM-50 samples, figures); then the same checkpoint sampled again: by Algorithm 2 (200 samples:
    about 1.5 s per sample on 2 cores), with and without clipping x0_hat, and by DDIM-50 without
    clipping. fid.py scores each, and the default's first 200 (the same noise) beside Algorithm 2."""
    import numpy as np
    args = ["--dataset", "fashion-mnist"] + (["--steps", 20, "--timesteps", 100, "--num-samples", 100] if QUICK else [])
    out, seconds = run_script("ddpm.py", "ddpm-fashion-mnist", args, reuse)
    last, resampled = last_log_row(out), [(out, "DDIM-50, clip x0_hat (the default)", seconds, out / "samples.npz")]
    n_ancestral = 20 if QUICK else 200
    for name, label, extra in [("ancestral", "Algorithm 2, clip x0_hat", ["--sampler", "ancestral"]),
                               ("ancestral-noclip", "Algorithm 2, --clip-x0 off", ["--sampler", "ancestral", "--clip-x0", "off"]),
                               ("noclip", "DDIM-50, --clip-x0 off", ["--clip-x0", "off"])]:
        extra += ["--num-samples", n_ancestral] if "ancestral" in name else []
        folder, s = run_script("ddpm.py", f"ddpm-fashion-mnist-{name}", args + ["--resume", *extra], reuse, checkpoint_from=out)
        resampled.append((folder, label, s, folder / "samples.npz"))
    if not QUICK:
        publish(out / "samplers.png", "ddpm_fashion_mnist_samplers.png")
    np.savez(first := out / "samples_first_n.npz", x=np.load(out / "samples.npz")["x"][:n_ancestral])
    resampled.append((out, "DDIM-50, clip x0_hat (the default), the same noise as Algorithm 2's", seconds, first))
    rows = []
    for folder, label, s, npz in resampled:
        m, r = json.loads((folder / "metrics.json").read_text()), fid_scores(npz)
        n, cov = len(np.load(npz)["x"]), r["coverage"]
        rows.append({"samples": label, "sampler steps": m["steps"], "N": n, "train steps": int(last["step"]),
                     "train_s": round(last["seconds"]), "sampling s (for N)": round(m["sampling_seconds"] * n / m["samples"], 1),
                     "wall_s": round(s), "FD (classifier)": round(r["FD (classifier features)"], 2),
                     "score": round(r["classifier score"][0], 2),
                     "class entropy": f"{cov['class_entropy']:.3f}/{cov['max_entropy']:.3f}",
                     "missing classes": cov["missing_classes"] or "none"})
    return rows


# ---------------------------------------------------------------------------------- cyclegan.py
def bench_cyclegan_toy(reuse):
    args = ["--log-every", 500] + (["--steps", 300] if QUICK else [])
    out, seconds = run_script("cyclegan.py", "cyclegan-8gaussians", args, reuse)
    m, last = json.loads((out / "metrics.json").read_text()), last_log_row(out)
    if not QUICK:
        publish(out / f"samples_{int(last['step'])}.png", "cyclegan_8gaussians.png")
    return [{"dataset": "8gaussians pair", "steps": int(last["step"]), "mean abs(G(a) - T(a))": round(m["l1_to_truth"], 3),
             "G(a) on a B mode %": round(100 * m["on_B_modes"], 1), "G(a) on the true mode %": round(100 * m["on_true_mode"], 1),
             "final cycle loss": round(last["loss_cycle"], 4), "steps_per_s": round(last["step"] / last["seconds"], 1),
             "wall_s": round(seconds)}]


def bench_cyclegan_images(reuse):
    """The built-in colour pair on Fashion-MNIST: CycleGAN, without the cycle loss, and pix2pix."""
    rows = []
    runs = [("CycleGAN", []), ("CycleGAN, --lambda-cycle 0", ["--lambda-cycle", 0]), ("pix2pix (--paired)", ["--paired"])]
    for label, extra in runs[::2] if QUICK else runs:
        args = ["--dataset", "fashion-mnist:colour", "--log-every", 100, *extra] + \
               (["--steps", 20, "--eval-classifier-steps", 50, "--num-samples", 200] if QUICK else [])
        out, seconds = run_script("cyclegan.py", "cyclegan-fashion-mnist-colour" + "".join(str(e) for e in extra).replace("-", "_"),
                                  args, reuse)
        m, last = json.loads((out / "metrics.json").read_text()), last_log_row(out)
        if not QUICK and len(rows) < 2:  # the README shows the default run and the one without the cycle loss
            publish(out / f"samples_{int(last['step'])}.png", f"cyclegan_fashion_colour_{len(rows)}.png")
        rows.append({"run": label, "steps": int(last["step"]), "label preservation %": round(100 * m["label_preservation"], 1),
                     "mean abs(G(a) - T(a))": round(m["l1_to_truth"], 3), "identity baseline abs(a - T(a))": round(m["l1_identity_baseline"], 3),
                     "classifier accuracy on T(a) %": round(100 * m["classifier_accuracy_on_truth"], 1),
                     "steps_per_s": round(last["step"] / last["seconds"], 2), "wall_s": round(seconds)})
    return rows


SECTIONS = {"gan-toy": bench_gan_toy, "gan-js": bench_gan_js, "gan-images": bench_gan_images,
            "wgan-toy": bench_wgan_toy, "wgan-experiments": bench_wgan_experiments, "wgan-images": bench_wgan_images,
            "fid-frechet": bench_fid_frechet, "fid-throughput": bench_fid_throughput, "fid-scores": bench_fid_scores,
            "fid-toy": bench_fid_toy,
            "cgan-toy": bench_cgan_toy, "cgan-images": bench_cgan_images, "ddpm-toy": bench_ddpm_toy,
            "ddpm-images": bench_ddpm_images, "cyclegan-toy": bench_cyclegan_toy, "cyclegan-images": bench_cyclegan_images}


def summary(sections):
    """One row per file, copied from the sections that ran: its toy-2-D figure and its real-data figure
    (Fashion-MNIST; FD and score from fid.py's classifier features, lower / higher is better)."""
    def first(name, **match):
        rows = [r for r in sections.get(name, []) if all(r.get(k) == v for k, v in match.items())]
        return rows[0] if rows else None
    out = []
    gan_toy = [r for r in sections.get("gan-toy", []) if r["dataset"] == "8gaussians"]
    gan_img = first("gan-images")
    out.append({"file": "gan.py", "toy 2-D": "8gaussians, seeds " + ", ".join(
        f"{r['seed']}: {r['modes']} modes {r['high_quality_%']} % HQ" for r in gan_toy) if gan_toy else "",
        "toy s": "/".join(str(r["wall_s"]) for r in gan_toy),
        "real data (Fashion-MNIST)": f"{gan_img['steps']} steps: FD {gan_img.get('FD (classifier)')}, score "
        f"{gan_img.get('score')}" if gan_img else "", "real-data s": gan_img["wall_s"] if gan_img else ""})
    w_toy, w_img = first("wgan-toy", dataset="25gaussians", lipschitz="gp"), first("wgan-images")
    out.append({"file": "wgan_gp.py", "toy 2-D": f"25gaussians, gp: {w_toy['modes']} modes {w_toy['high_quality_%']} % HQ"
                if w_toy else "", "toy s": w_toy["wall_s"] if w_toy else "",
                "real data (Fashion-MNIST)": f"n_critic 2, lr 2e-4, {w_img['steps']} steps: FD {w_img.get('FD (classifier)')}, "
                f"score {w_img.get('score')}" if w_img else "", "real-data s": w_img["wall_s"] if w_img else ""})
    c_toy, c_img = first("cgan-toy", dataset="25gaussians", **{"mismatch weight": 0.5}), first("cgan-images")
    out.append({"file": "cgan.py", "toy 2-D": f"25gaussians: {c_toy['on asked mode (3 std) %']} % on the asked mode"
                if c_toy else "", "toy s": c_toy["wall_s"] if c_toy else "",
                "real data (Fashion-MNIST)": f"{c_img['steps']} steps: conditional accuracy {c_img.get('conditional accuracy %')} %, "
                f"FD {c_img.get('FD (classifier)')}, score {c_img.get('score')}" if c_img else "",
                "real-data s": c_img.get("wall_s", "") if c_img else ""})
    d_toy, d_img = first("ddpm-toy", dataset="25gaussians"), first("ddpm-images")
    out.append({"file": "ddpm.py", "toy 2-D": f"25gaussians: {d_toy['modes']} modes {d_toy['high_quality_%']} % HQ" if d_toy else "",
                "toy s": d_toy["wall_s"] if d_toy else "",
                "real data (Fashion-MNIST)": f"{d_img['train steps']} steps, DDIM-{d_img['sampler steps']}, N {d_img['N']}: "
                f"FD {d_img['FD (classifier)']}, score {d_img['score']}" if d_img else "",
                "real-data s": d_img["wall_s"] if d_img else ""})
    y_toy, y_img = first("cyclegan-toy"), first("cyclegan-images")
    out.append({"file": "cyclegan.py", "toy 2-D": f"8gaussians pair: cycle loss {y_toy['final cycle loss']}, G(a) on a B mode "
                f"{y_toy.get('G(a) on a B mode %')} %, on the true mode {y_toy.get('G(a) on the true mode %')} % (T after a symmetry)" if y_toy else "", "toy s": y_toy["wall_s"] if y_toy else "",
                "real data (Fashion-MNIST)": f"colour pair, {y_img['steps']} steps: label preservation {y_img['label preservation %']} %, "
                f"mean abs(G(a) - T(a)) {y_img['mean abs(G(a) - T(a))']} (identity map: {y_img['identity baseline abs(a - T(a))']})"
                if y_img else "", "real-data s": y_img["wall_s"] if y_img else ""})
    f_fr, f_sc = first("fid-frechet"), first("fid-scores")
    out.append({"file": "fid.py", "toy 2-D": f"Frechet distance vs scipy sqrtm: relative difference {f_fr['relative difference']}"
                if f_fr else "", "toy s": "",
                "real data (Fashion-MNIST)": f"feature classifier: {f_sc['value']} test accuracy" if f_sc else "",
                "real-data s": f_sc["seconds"] if f_sc else ""})
    return out


def to_markdown(title, rows):
    keys = list(max(rows, key=len))
    rows = [{k: r.get(k, "") for k in keys} for r in rows]
    lines = [f"### {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]).replace("|", "\\|") for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ", ".join(SECTIONS))
    p.add_argument("--reuse", action="store_true", help="reuse finished runs with identical flags")
    p.add_argument("--finished-only", action="store_true", help="with --reuse: never start a run; list missing ones as not run")
    a = p.parse_args()
    global FINISHED_ONLY
    FINISHED_ONLY = a.finished_only and a.reuse
    suffix = "_quick" if QUICK else ""
    json_path = ROOT / "bench" / f"results{suffix}.json"
    # --only updates those sections and keeps the others from the last run
    old = json.loads(json_path.read_text()) if json_path.exists() and a.only != ",".join(SECTIONS) else {}
    results = {"machine": machine(), "quick": QUICK, "sections": old.get("sections", {}), "seconds": old.get("seconds", {})}
    for name in a.only.split(","):
        if name not in SECTIONS:
            sys.exit(f"bench: unknown section {name}; choose from {', '.join(SECTIONS)}")
        t0 = time.time()
        results["sections"][name] = SECTIONS[name](a.reuse)
        results["seconds"][name] = round(time.time() - t0)
    results["sections"] = {k: results["sections"][k] for k in SECTIONS if k in results["sections"]}
    m = results["machine"]
    md = [f"# Benchmark results{' (BENCH_QUICK: reduced budgets)' if QUICK else ''}", "",
          f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; torch {m['torch']}, Python {m['python']}. "
          "Produced by `make bench`; seconds per section: " +
          ", ".join(f"{k} {v}" for k, v in results["seconds"].items() if k in results["sections"]) +
          " (a section that reused finished runs with --reuse counts only the reading; each run's own time is in its wall_s).", ""]
    md += [to_markdown("Across the files (copied from the sections below; s = wall seconds of the run)",
                       summary(results["sections"]))]
    md += [to_markdown(k, v) for k, v in results["sections"].items()]
    (ROOT / "bench" / f"results{suffix}.md").write_text("\n".join(md))
    (ROOT / "bench" / f"results{suffix}.json").write_text(json.dumps(results, indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()
