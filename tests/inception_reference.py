"""Makes inception_reference.npz: what pytorch-fid's own InceptionV3 computes for a fixed input,
with every weight and BatchNorm statistic set by `replayable_state` below, a rule test_fid.py
replays, so no weight file is stored: only the input, the outputs and pytorch-fid's key list.
Made once, in a throwaway environment (never this project's), on x86_64 with Python 3.11:
    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/refenv/bin/pip install --no-deps pytorch-fid==0.3.0
    /tmp/refenv/bin/pip install numpy
    /tmp/refenv/bin/python tests/inception_reference.py
"""
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("inception_reference.npz")


def hash_uniform(start, n):
    """n numbers in [-1, 1) from the counter start, start + 1, ...: splitmix64's mixing function in
    wrapping 64-bit integer arithmetic, so any numpy gives the same bits (no random library)."""
    h = np.arange(start, start + n, dtype=np.uint64)  # in place below: 24M numbers, twice as fast
    h *= np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / 2.0 ** 52 - 1


def replayable_state(shapes, seed=0):
    """{key: shape} -> {key: numpy array}, filled in sorted key order from one counter: weights
    He-uniform (variance 2 / fan-in), BatchNorm near the identity, a final bias of order 1 (logits
    that kept it would differ); num_batches_tracked 0. A key of another kind is an error."""
    state, start = {}, seed * 2 ** 40
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        n = int(np.prod(shape))
        v = hash_uniform(start, n).reshape(shape)
        start += n
        if key.endswith("num_batches_tracked"):
            state[key] = np.zeros(shape, np.int64)
            continue
        if key.endswith("weight") and len(shape) > 1:
            v = v * np.sqrt(6 / np.prod(shape[1:]))
        elif key.endswith(("bn.weight", "bn.running_var")):
            v = 1 + 0.5 * v
        elif key.endswith(("bn.bias", "bn.running_mean")):
            v = 0.1 * v
        elif key == "fc.bias":
            v = 1 + v
        else:
            raise KeyError(f"no rule for {key}")
        state[key] = v.astype(np.float32)
    return state


def main():
    import torch
    import torchvision
    import pytorch_fid
    import pytorch_fid.inception as pfi

    load = torch.nn.Module.load_state_dict
    torch.nn.Module.load_state_dict = lambda self, *args, **kwargs: None  # the skeleton first
    pfi.load_state_dict_from_url = lambda *args, **kwargs: None  # and no download
    skeleton = pfi.fid_inception_v3()
    torch.nn.Module.load_state_dict = load
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    state = {k: torch.from_numpy(v) for k, v in replayable_state(shapes).items()}
    skeleton.load_state_dict(state, strict=True)
    pfi.fid_inception_v3 = lambda: skeleton  # what InceptionV3 builds its blocks from
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)  # N x H x W x C
    with torch.no_grad():
        features = model(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)[0][:, :, 0, 0]
        # the original IS code's logits: the 2048-d pool features times the final weights, no bias
        logits = features @ skeleton.fc.weight.T
    made_by = (f"pytorch-fid {pytorch_fid.__version__}, torch {torch.__version__}, "
               f"torchvision {torchvision.__version__}, numpy {np.__version__}")
    np.savez_compressed(OUT, x=x, features=features.numpy(), logits=logits.numpy(),
                        keys=np.array([f"{k}:{','.join(map(str, s))}" for k, s in shapes.items()]),
                        made_by=np.array(made_by))
    print(f"wrote {OUT} ({made_by}); features |max| {features.abs().max():.4g}, "
          f"std {features.std():.4g}; logits std {logits.std():.4g}")


if __name__ == "__main__":
    main()
