#!/bin/bash
# The GPU figures of the README: each script's Fashion-MNIST default run alone on a CUDA GPU, scored by
# fid.py's classifier, plus CycleGAN / pix2pix speed at 256 px. Run from the repository root:
#     bash bench/gpu.sh            (DATA_DIR=./data by default; Fashion-MNIST must be there or installed)
#     bash bench/gpu.sh photo      (only the 256-px speed runs)
# Results go to runs/gpu/ (logs, metrics.json, fid_*.json). Not part of `make bench`, which is the CPU record.
set -u
export PYTHONUNBUFFERED=1
D=${DATA_DIR:-./data}; R=runs/gpu; mkdir -p $R
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 1
[ "${1:-}" = photo ] || { t=$(date +%s); python3 fid.py train-classifier --dataset fashion-mnist --data-dir $D --out $R/classifier.pt --device cuda > $R/classifier.log 2>&1
echo "fid.py classifier: $(( $(date +%s) - t )) s, $(tail -1 $R/classifier.log)"; }
run() {  # name, script, args...: one run alone on the GPU, its wall time and last progress line
  n=$1; s=$2; shift 2; t=$(date +%s)
  python3 $s.py --device cuda --data-dir $D --out $R/$n --overwrite "$@" > $R/$n.log 2>&1
  echo "$n: rc $?, wall $(( $(date +%s) - t )) s | $(grep 'steps/s' $R/$n.log | tail -1)"
}
if [ "${1:-}" != photo ]; then
run ddpm ddpm --dataset fashion-mnist
run gan gan --dataset fashion-mnist
run cgan cgan --dataset fashion-mnist
run wgan_gp wgan_gp --dataset fashion-mnist --n-critic 2 --lr 2e-4 --steps 3000
run cyclegan cyclegan --dataset fashion-mnist:colour
run pix2pix cyclegan --dataset fashion-mnist:colour --paired
grep -h "held-out" $R/cyclegan.log $R/pix2pix.log
for n in ddpm gan cgan wgan_gp; do
  python3 fid.py $R/$n/samples.npz fashion-mnist --data-dir $D --classifier $R/classifier.pt --device cuda --json > $R/fid_$n.json
  python3 -c "import json; r = json.load(open('$R/fid_$n.json')); c = r['coverage']; print('$n: FD', round(r['FD (classifier features)'], 2), 'score', round(r['classifier score'][0], 2), 'missing', c['missing_classes'] or 'none', 'conditional accuracy', c.get('conditional_accuracy'))"
done
fi
# 256-px photo-set speed: CycleGAN (batch 1, width 64, 9 residual blocks) and pix2pix on a synthetic
# folder of 256-px images (speed does not depend on the content; no download needed)
python3 - <<'PY'
import numpy as np
from PIL import Image
from pathlib import Path
rng = np.random.default_rng(0)
for sub in ["trainA", "trainB", "testA", "testB"]:
    d = Path("runs/gpu/photo256") / sub
    d.mkdir(parents=True, exist_ok=True)
    for i in range(60):
        Image.fromarray((rng.random((256, 256, 3)) * 255).astype(np.uint8)).save(d / f"{i}.png")
PY
run photo256 cyclegan --dataset $R/photo256 --image-size 256 --steps 300 --sample-every 1000
run photo256_paired cyclegan --dataset $R/photo256 --image-size 256 --steps 300 --sample-every 1000 --paired
