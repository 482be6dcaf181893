"""make bench: the quality and speed figures the README publishes, measured by running the scripts.

    python bench/bench.py                 # everything (about 25 minutes on a 2-core CPU)
    BENCH_QUICK=1 python bench/bench.py   # reduced budgets, a smoke check in a few minutes
    python bench/bench.py --reuse         # read runs that already finished with the same flags
    python bench/bench.py --only gan-toy,gan-js

Writes bench/results.md and bench/results.json. Each run's folder is runs/bench/<name>/.
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
RUNS = ROOT / "runs" / "bench"


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


def run_script(script, name, args, reuse):
    """Run `python script --out runs/bench/name args`; with reuse, a finished run with the same flags is read."""
    out = RUNS / name
    argv = [*map(str, args), "--out", str(out)]
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


def last_log_row(out):
    rows = list(csv.DictReader(open(out / "log.csv")))
    return {k: float(v) for k, v in rows[-1].items()}


# ---------------------------------------------------------------------------------- gan.py
def bench_gan_toy(reuse):
    rows = []
    seeds = [0] if QUICK else [0, 1, 2]
    for dataset in ["8gaussians", "25gaussians"]:
        for seed in seeds:
            args = ["--dataset", dataset, "--seed", seed, "--log-every", 500] + (["--steps", 1000] if QUICK else [])
            out, seconds = run_script("gan.py", f"gan-{dataset}-s{seed}", args, reuse)
            m, last = json.loads((out / "metrics.json").read_text()), last_log_row(out)
            rows.append({"dataset": dataset, "seed": seed, "steps": int(last["step"]),
                         "modes": f"{m['modes']}/{m['of']}", "high_quality_%": round(100 * m["high_quality"], 1),
                         "steps_per_s": round(last["step"] / last["seconds"], 1), "wall_s": round(seconds)})
    return rows


def bench_gan_js(reuse):
    args = ["--experiment", "js"] + (["--js-steps", 200] if QUICK else [])
    out, seconds = run_script("gan.py", "gan-js", args, reuse)
    r = list(csv.DictReader(open(out / "js.csv")))
    g = [x for x in r if x["case"] == "gaussians"]
    lines = [x for x in r if x["case"] == "parallel lines" and float(x["theta"]) > 0]
    return [{
        "gaussians: max |JS estimate - exact JS|": round(max(abs(float(x["js_estimate"]) - float(x["js_exact"])) for x in g), 4),
        "lines (theta > 0): JS estimate / log 2, min..max": f"{min(float(x['js_estimate']) for x in lines) / math.log(2):.4f}.."
                                                             f"{max(float(x['js_estimate']) for x in lines) / math.log(2):.4f}",
        "lines: minimax |dL/dtheta| at smallest -> largest theta": f"{float(lines[0]['grad_minimax']):.1e} -> {float(lines[-1]['grad_minimax']):.1e}",
        "gaussians: minimax |dL/dtheta| peak -> theta=8": f"{max(float(x['grad_minimax']) for x in g):.2f} -> {float(g[-1]['grad_minimax']):.1e}",
        "wall_s": round(seconds)}]


def bench_gan_images(reuse):
    args = ["--dataset", "fashion-mnist", "--log-every", 200] + (["--steps", 200] if QUICK else [])
    out, seconds = run_script("gan.py", "gan-fashion-mnist", args, reuse)
    last = last_log_row(out)
    if not QUICK:  # the README shows this run's final grid
        (ROOT / "assets").mkdir(exist_ok=True)
        shutil.copy(out / f"samples_{int(last['step'])}.png", ROOT / "assets" / "gan_fashion_mnist.png")
    return [{"dataset": "fashion-mnist", "steps": int(last["step"]), "batch": 64,
             "steps_per_s": round(last["step"] / last["seconds"], 2), "wall_s": round(seconds),
             "final D(x)": round(last["D_x"], 2), "final D(G(z))": round(last["D_G_z"], 2)}]


SECTIONS = {"gan-toy": bench_gan_toy, "gan-js": bench_gan_js, "gan-images": bench_gan_images}


def to_markdown(title, rows):
    keys = list(rows[0])
    lines = [f"### {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ", ".join(SECTIONS))
    p.add_argument("--reuse", action="store_true", help="reuse finished runs with identical flags")
    a = p.parse_args()
    t0, results = time.time(), {"machine": machine(), "quick": QUICK, "sections": {}}
    for name in a.only.split(","):
        if name not in SECTIONS:
            sys.exit(f"bench: unknown section {name}; choose from {', '.join(SECTIONS)}")
        results["sections"][name] = SECTIONS[name](a.reuse)
    results["total_s"] = round(time.time() - t0)
    m = results["machine"]
    md = [f"# Benchmark results{' (BENCH_QUICK: reduced budgets)' if QUICK else ''}", "",
          f"Machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; torch {m['torch']}, Python {m['python']}. "
          f"Produced by `make bench` in {results['total_s']} s (reused runs count their original time).", ""]
    md += [to_markdown(k, v) for k, v in results["sections"].items()]
    suffix = "_quick" if QUICK else ""
    (ROOT / "bench" / f"results{suffix}.md").write_text("\n".join(md))
    (ROOT / "bench" / f"results{suffix}.json").write_text(json.dumps(results, indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()
