"""make bench: the quality and speed figures the README publishes, measured by running the scripts.

    python bench/bench.py                 # everything (about 80 minutes on a 2-core CPU)
    BENCH_QUICK=1 python bench/bench.py   # reduced budgets, a smoke check in a few minutes
    python bench/bench.py --reuse         # read runs that already finished with the same flags
    python bench/bench.py --only gan-toy,gan-js

Each run is a plain command line of a script with its default settings (the flags a section adds
are listed in its table), timed whole; fid.py scores the samples. Writes bench/results.md and
bench/results.json (BENCH_QUICK: results_quick.*). Run folders: runs/bench/<name>/ (BENCH_QUICK:
runs/bench_quick/<name>/). Time nothing else on the machine meanwhile.
"""
import argparse
import csv
import datetime
import json
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
sys.path.insert(0, str(ROOT))


def machine():
    cpu = platform.processor() or platform.machine()
    for line in open("/proc/cpuinfo") if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import torch
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": datetime.date.today().isoformat()}


def run_script(script, name, args, reuse):
    """Run `python script args --out runs/bench/name --overwrite`; with reuse, a finished run with the
    same flags is read instead. Returns the run folder and its wall seconds."""
    out = RUNS / name
    argv = [*map(str, args), "--out", str(out), "--overwrite"]
    stamp = out / "bench_argv.json"
    if reuse and stamp.exists() and json.loads(stamp.read_text()) == argv:
        print(f"[bench] reusing {out}")
        return out, json.loads((out / "bench_seconds.json").read_text())
    if out.exists():
        shutil.rmtree(out)
    print(f"[bench] python {script} {' '.join(argv)}", flush=True)
    t0 = time.time()
    subprocess.run([sys.executable, str(ROOT / script), *argv], check=True, cwd=ROOT)
    seconds = time.time() - t0
    (out / "bench_seconds.json").write_text(json.dumps(seconds))
    stamp.write_text(json.dumps(argv))
    return out, seconds


def publish(figure, name):
    """Copy a run's figure into assets/, where the README shows it."""
    if not QUICK:
        shutil.copy(figure, ROOT / "assets" / name)


def last_log_row(out):
    return {k: float(v) for k, v in list(csv.DictReader(open(out / "log.csv")))[-1].items()}


def metrics(out):
    return json.loads((out / "metrics.json").read_text())


def fid(*args):
    """fid.py's results dict for a command line, run in a process of its own."""
    code = "import json, sys, fid; r = fid.main(sys.argv[1:]); print('RESULTS' + json.dumps(r))"
    text = subprocess.run([sys.executable, "-c", code, *map(str, args)], check=True, cwd=ROOT, capture_output=True,
                          text=True).stdout
    return json.loads(text.rsplit("RESULTS", 1)[1])


def classifier():
    """fid.py's Fashion-MNIST classifier, trained once (its test accuracy and seconds are kept)."""
    clf = RUNS / "fid-classifier" / "fashion-mnist.pt"
    stamp = clf.with_suffix(".json")
    if not stamp.exists():
        clf.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        args = ["train-classifier", "--dataset", "fashion-mnist", "--out", str(clf)] + (["--epochs", "1"] if QUICK else [])
        print(f"[bench] python fid.py {' '.join(args)}", flush=True)
        text = subprocess.run([sys.executable, str(ROOT / "fid.py"), *args], check=True, cwd=ROOT, capture_output=True,
                              text=True).stdout
        acc = float(text.rsplit("test accuracy ", 1)[1].split("%")[0])
        stamp.write_text(json.dumps({"accuracy": acc, "seconds": time.time() - t0}))
    return clf, json.loads(stamp.read_text())


def scores(samples, n_real=None):
    """FD, classifier score, class coverage (and conditional accuracy) of a Fashion-MNIST samples.npz."""
    r = fid(samples, "fashion-mnist", "--classifier", classifier()[0], "--num-real", n_real or (2000 if QUICK else 10000))
    cov = r["coverage"]
    out = {"FD": round(r["FD"], 2), "score": round(r["classifier score"][0], 2),
           "class entropy": f"{cov['class_entropy']:.3f}/{cov['max_entropy']:.3f}",
           "missing classes": cov["missing_classes"] or "none"}
    if "conditional_accuracy" in cov:
        out["conditional accuracy %"] = round(100 * cov["conditional_accuracy"], 1)
    return out


def toy_row(out, seconds, **first):
    m, last = metrics(out), last_log_row(out)
    return {**first, "steps": int(last["step"]), "modes": f"{m['modes']}/{m['of']}",
            "high_quality_%": round(100 * m["high_quality"], 1), "wall_s": round(seconds)}


def image_row(out, seconds, **first):
    last = last_log_row(out)
    return {**first, "steps": int(last["step"]), "steps_per_s": round(last["step"] / last["seconds"], 2),
            "wall_s": round(seconds), **scores(out / "samples.npz")}


# ---------------------------------------------------------------------------------- gan.py
def bench_gan_toy(reuse):
    rows = []
    for dataset, seeds in [("8gaussians", [0] if QUICK else [0, 1, 2]), ("25gaussians", [] if QUICK else [0])]:
        for seed in seeds:
            args = ["--dataset", dataset, "--seed", seed] + (["--steps", 300] if QUICK else [])
            out, seconds = run_script("gan.py", f"gan-{dataset}-s{seed}", args, reuse)
            if seed == 0:
                publish(out / f"samples_{int(last_log_row(out)['step'])}.png", f"gan_{dataset}.png")
            rows.append(toy_row(out, seconds, dataset=dataset, seed=seed))
    return rows


def bench_gan_js(reuse):
    import math
    out, seconds = run_script("gan.py", "gan-js", ["--experiment", "js"] + (["--js-steps", 200] if QUICK else []), reuse)
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
    out, seconds = run_script("gan.py", "gan-fashion-mnist", ["--dataset", "fashion-mnist"] + (["--steps", 40] if QUICK else []), reuse)
    publish(out / f"samples_{int(last_log_row(out)['step'])}.png", "gan_fashion_mnist.png")
    r = fid(out / "samples.npz", "fashion-mnist", "--classifier", classifier()[0], "--num-real", 2000 if QUICK else 10000)
    m = r.get("memorisation", {})
    return [image_row(out, seconds, command="python gan.py --dataset fashion-mnist",
                      **{"likely copies %": round(100 * m["likely_copies"], 1) if m else ""})]


# ---------------------------------------------------------------------------------- wgan_gp.py
def bench_wgan_toy(reuse, methods=("gp",)):
    rows = []
    for lip in methods:
        args = ["--dataset", "25gaussians", "--lipschitz", lip] + (["--steps", 100] if QUICK else [])
        out, seconds = run_script("wgan_gp.py", f"wgan_gp-25gaussians-{lip}", args, reuse)
        publish(out / f"samples_{int(last_log_row(out)['step'])}.png", f"wgan_gp_25gaussians_{lip}.png")
        rows.append(toy_row(out, seconds, dataset="25gaussians", lipschitz=lip,
                            **{"final critic objective": round(last_log_row(out)["critic_objective"], 4)}))
    return rows


def bench_wgan_w_vs_js(reuse):
    import math
    import numpy as np
    out, seconds = run_script("wgan_gp.py", "wgan_gp-w-vs-js", ["--experiment", "w-vs-js"] +
                              (["--exp-steps", 60] if QUICK else []), reuse)
    publish(out / "w_vs_js.png", "wgan_gp_w_vs_js.png")
    r = list(csv.DictReader(open(out / "w_vs_js.csv")))
    rows = []
    for case in ["gaussians", "parallel lines"]:
        theta, w = (np.array([float(x[k]) for x in r if x["case"] == case]) for k in ("theta", "critic_objective"))
        slope, intercept = np.polyfit(np.abs(theta), w, 1)
        rows.append({"case": case, "least-squares line through the critic objective": f"{slope:.3f} abs(theta) + {intercept:.3f}",
                     "wall_s": round(seconds)})
    lines = [x for x in r if x["case"] == "parallel lines" and float(x["theta"]) > 0]
    rows.append({"case": "parallel lines, theta > 0", "least-squares line through the critic objective": "JS lower bound / log 2 = "
                 f"{min(float(x['js_lower_bound']) for x in lines) / math.log(2):.3f}..{max(float(x['js_lower_bound']) for x in lines) / math.log(2):.3f}; "
                 f"gradient at theta = {lines[-1]['theta']}: WGAN {float(lines[-1]['grad_wgan']):.2f}, GAN {float(lines[-1]['grad_gan_minimax']):.1e}",
                 "wall_s": round(seconds)})
    return rows


def bench_wgan_images(reuse):
    out, seconds = run_script("wgan_gp.py", "wgan_gp-fashion-mnist", ["--dataset", "fashion-mnist"] +
                              (["--steps", 30] if QUICK else []), reuse)
    publish(out / f"samples_{int(last_log_row(out)['step'])}.png", "wgan_gp_fashion_mnist.png")
    return [image_row(out, seconds, command="python wgan_gp.py --dataset fashion-mnist",
                      **{"final critic objective": round(last_log_row(out)["critic_objective"], 3)})]


# ---------------------------------------------------------------------------------- cgan.py
def bench_cgan_toy(reuse):
    rows = []
    for dataset in ["8gaussians"] if QUICK else ["8gaussians", "25gaussians"]:
        out, seconds = run_script("cgan.py", f"cgan-{dataset}", ["--dataset", dataset] + (["--steps", 100] if QUICK else []), reuse)
        if dataset == "25gaussians":
            publish(out / f"samples_{int(last_log_row(out)['step'])}.png", f"cgan_{dataset}.png")
        m = metrics(out)
        rows.append({"dataset": dataset, "steps": int(last_log_row(out)["step"]), **{
            k: round(100 * v, 1) if isinstance(v, float) else v for k, v in m.items()}, "wall_s": round(seconds)})
    return rows


def bench_cgan_images(reuse):
    out, seconds = run_script("cgan.py", "cgan-fashion-mnist", ["--dataset", "fashion-mnist"] + (["--steps", 30] if QUICK else []), reuse)
    publish(out / f"samples_{int(last_log_row(out)['step'])}.png", "cgan_fashion_mnist.png")
    return [image_row(out, seconds, command="python cgan.py --dataset fashion-mnist")]


# ---------------------------------------------------------------------------------- ddpm.py
def bench_ddpm_toy(reuse):
    out, seconds = run_script("ddpm.py", "ddpm-25gaussians", ["--dataset", "25gaussians"] +
                              (["--steps", 200, "--timesteps", 100] if QUICK else []), reuse)
    publish(out / f"samples_{int(last_log_row(out)['step'])}.png", "ddpm_25gaussians.png")
    publish(out / "reverse_process.png", "ddpm_25gaussians_reverse_process.png")
    m, last = metrics(out), last_log_row(out)
    return [{**toy_row(out, seconds, dataset="25gaussians"), "train_s": round(last["seconds"]),
             "samples": f"{m['samples']} by {m['sampler']} ({m['steps']} steps)", "sampling_s": round(m["sampling_seconds"], 1)}]


def bench_ddpm_images(reuse):
    """The headline command timed whole (training, 1,000 DDIM samples, figures), then the trained EMA
    model's sampling speed: DDIM against Algorithm 2 (T network calls) on the same 20 noises."""
    import torch
    import ddpm
    out, seconds = run_script("ddpm.py", "ddpm-fashion-mnist", ["--dataset", "fashion-mnist"] +
                              (["--steps", 20, "--timesteps", 100, "--num-samples", 100] if QUICK else []), reuse)
    publish(out / f"samples_{int(last_log_row(out)['step'])}.png", "ddpm_fashion_mnist.png")
    m, last = metrics(out), last_log_row(out)
    rows = [{**image_row(out, seconds, command="python ddpm.py --dataset fashion-mnist"), "train_s": round(last["seconds"]),
             "samples": f"{m['samples']} by {m['sampler']}-{m['steps']}", "sampling_s": round(m["sampling_seconds"])}]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    cfg = argparse.Namespace(**state["options"])
    ema = ddpm.UNet(cfg.shape[0], cfg.image_size, cfg.width, cfg.n_classes)
    ema.load_state_dict(state["ema"])
    ema.eval()
    sched = ddpm.Schedule(cfg.timesteps)
    n = 20 if not QUICK else 4
    for name, ancestral in [(f"DDIM-{cfg.sample_steps}", False), (f"Algorithm 2 ({cfg.timesteps} steps)", True)]:
        t0 = time.time()
        ddpm.draw(cfg, sched, ema, n, ancestral, seed=9)
        rows.append({"command": f"sampling {n} images by {name} from the trained EMA model",
                     "sampling_s": round(time.time() - t0, 1), "seconds per image": round((time.time() - t0) / n, 2)})
    return rows


# ---------------------------------------------------------------------------------- cyclegan.py
def bench_cyclegan_toy(reuse):
    out, seconds = run_script("cyclegan.py", "cyclegan-8gaussians", [] + (["--steps", 300] if QUICK else []), reuse)
    publish(out / f"samples_{int(last_log_row(out)['step'])}.png", "cyclegan_8gaussians.png")
    m, last = metrics(out), last_log_row(out)
    return [{"dataset": "8gaussians pair", "steps": int(last["step"]), "mean abs(G(a) - T(a))": round(m["l1_to_truth"], 3),
             "G(a) on a B mode %": round(100 * m["on_B_modes"], 1), "G(a) on the true mode %": round(100 * m["on_true_mode"], 1),
             "final cycle loss": round(last["loss_cycle"], 4), "wall_s": round(seconds)}]


def bench_cyclegan_images(reuse, runs=(("CycleGAN", ()),)):
    """The built-in palette pair on Fashion-MNIST (CycleGAN; the ablations: without the cycle loss, and
    pix2pix); fid.py's classifier reads the exported T^-1(G(a)) with the source labels."""
    rows = []
    for label, extra in runs:
        args = ["--dataset", "fashion-mnist:colour", *extra] + (["--steps", 20, "--num-samples", 200] if QUICK else [])
        out, seconds = run_script("cyclegan.py", "cyclegan-fashion-mnist-colour" + "".join(map(str, extra)).replace("-", "_"),
                                  args, reuse)
        if not extra or extra[0] == "--lambda-cycle":  # the README shows these two
            publish(out / f"samples_{int(last_log_row(out)['step'])}.png", f"cyclegan_fashion_colour_{int(bool(extra))}.png")
        m, last = metrics(out), last_log_row(out)
        s = scores(out / "samples.npz")
        rows.append({"run": label, "steps": int(last["step"]), "mean abs(G(a) - T(a))": round(m["l1_to_truth"], 3),
                     "identity baseline abs(a - T(a))": round(m["l1_identity_baseline"], 3),
                     "label preservation %": s.get("conditional accuracy %"), "FD": s["FD"],
                     "steps_per_s": round(last["step"] / last["seconds"], 2), "wall_s": round(seconds)})
    return rows


# ---------------------------------------------------------------------------------- fid.py
def bench_fid_frechet(reuse):
    """Our eigendecomposition Frechet distance against scipy's sqrtm on the same covariances."""
    import math
    import numpy as np
    import fid as fid_module
    from scipy import linalg
    rows = []
    for d in [64, 512, 2048]:
        rng = np.random.default_rng(d)
        f1, f2 = rng.standard_normal((2 * d + 100, d)), rng.standard_normal((2 * d + 100, d)) @ rng.uniform(0.5, 1.5, (d, d)) / math.sqrt(d)
        (mu1, s1), (mu2, s2) = fid_module.gaussian_statistics(f1), fid_module.gaussian_statistics(f2)
        reps = 1 if (QUICK or d == 2048) else 3
        t = time.perf_counter()
        for _ in range(reps):
            ours = fid_module.frechet_distance(mu1, s1, mu2, s2)
        t_ours = (time.perf_counter() - t) / reps
        t = time.perf_counter()
        for _ in range(reps):
            ref = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2)).real)
        t_ref = (time.perf_counter() - t) / reps
        rows.append({"dims": d, "ours_s": round(t_ours, 3), "scipy_sqrtm_s": round(t_ref, 3),
                     "speed-up": round(t_ref / t_ours, 1), "relative difference": f"{abs(ours - ref) / abs(ref):.1e}"})
    return rows


def bench_fid_scores(reuse):
    """The classifier, the real-vs-real floor at two N, and the image runs' samples if they exist."""
    clf, c = classifier()
    rows = [{"what": "classifier: test accuracy (Fashion-MNIST, 10,000 test images)", "value": f"{c['accuracy']:.2f} %",
             "seconds": round(c["seconds"])}]
    for what, n in [("real test vs real train (the floor), N = 10,000", 10000), ("the same floor at N = 1,000", 1000)]:
        r = fid("fashion-mnist:test", "fashion-mnist", "--classifier", clf, "--num-real", n)
        rows.append({"what": what, "value": f"FD {r['FD']:.2f}, score {r['classifier score'][0]:.2f}"})
    return rows


def bench_fid_toy(reuse):
    """FD sees only means and covariances: 25gaussians against fresh points of itself, 8gaussians and
    swissroll, with the mode metrics beside it."""
    rows = []
    for source in ["25gaussians:test", "8gaussians", "swissroll"]:
        r = fid(source, "25gaussians")
        rows.append({"generated (10,000 points)": source, "reference": "25gaussians", "FD (2-D points)": f"{r['FD']:.4f}",
                     "modes of 25": r.get("modes", {}).get("modes", ""),
                     "high quality %": round(100 * r["modes"]["high_quality"], 1) if "modes" in r else ""})
    return rows


SECTIONS = {"gan-toy": bench_gan_toy, "gan-js": bench_gan_js, "gan-images": bench_gan_images,
            "wgan-toy": bench_wgan_toy, "wgan-w-vs-js": bench_wgan_w_vs_js, "wgan-images": bench_wgan_images,
            "cgan-toy": bench_cgan_toy, "cgan-images": bench_cgan_images,
            "ddpm-toy": bench_ddpm_toy, "ddpm-images": bench_ddpm_images,
            "cyclegan-toy": bench_cyclegan_toy, "cyclegan-images": bench_cyclegan_images,
            "cyclegan-ablations": lambda reuse: bench_cyclegan_images(reuse, [
                ("CycleGAN, --lambda-cycle 0", ["--lambda-cycle", 0]), ("pix2pix (--paired)", ["--paired"])]),
            "wgan-toy-clip-sn": lambda reuse: bench_wgan_toy(reuse, ["clip", "sn"]),
            "fid-frechet": bench_fid_frechet, "fid-scores": bench_fid_scores, "fid-toy": bench_fid_toy}


def to_markdown(title, rows):
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = [f"### {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")).replace("|", "\\|") for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ", ".join(SECTIONS))
    p.add_argument("--reuse", action="store_true", help="reuse finished runs with identical flags")
    a = p.parse_args()
    suffix = "_quick" if QUICK else ""
    json_path = ROOT / "bench" / f"results{suffix}.json"
    # --only updates those sections and keeps the others from the last run
    old = json.loads(json_path.read_text()) if json_path.exists() and a.only != ",".join(SECTIONS) else {}
    results = {"machine": machine(), "sections": old.get("sections", {}), "seconds": old.get("seconds", {}),
               "dates": old.get("dates", {})}
    for name in a.only.split(","):
        if name not in SECTIONS:
            sys.exit(f"bench: unknown section {name}; choose from {', '.join(SECTIONS)}")
        t0 = time.time()
        results["sections"][name] = SECTIONS[name](a.reuse)
        results["seconds"][name], results["dates"][name] = round(time.time() - t0), results["machine"]["date"]
    results["sections"] = {k: results["sections"][k] for k in SECTIONS if k in results["sections"]}
    m = results["machine"]
    md = [f"# Benchmark results{' (BENCH_QUICK: reduced budgets)' if QUICK else ''}", "",
          f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; torch {m['torch']}, Python {m['python']}. "
          "Produced by `make bench`, each run alone on the machine; section (date measured, seconds): " +
          ", ".join(f"{k} ({results['dates'].get(k, '?')}, {results['seconds'][k]} s)" for k in results["sections"]) + ".", ""]
    md += [to_markdown(k, v) for k, v in results["sections"].items()]
    (ROOT / "bench" / f"results{suffix}.md").write_text("\n".join(md))
    json_path.write_text(json.dumps(results, indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()
