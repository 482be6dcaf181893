"""Fixture writers and a local HTTP server shared by the tests (no network at test time)."""
import contextlib
import gzip
import hashlib
import http.server
import io
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np

# The real Fashion-MNIST from the Debian package dataset-fashion-mnist, when installed.
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path, array):
    """An IDX file as MNIST ships it: magic 0x0000 08 <ndim>, big-endian uint32 dims, uint8 data."""
    array = np.asarray(array, np.uint8)
    header = struct.pack(">I", 0x800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())
    return Path(path)


def write_mnist_like(folder, n=32, seed=0, split="train"):
    """n random 28x28 digits with labels 0..9 in MNIST's file names; returns (images, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    pre = "train" if split == "train" else "t10k"
    write_idx(Path(folder) / f"{pre}-images-idx3-ubyte.gz", images)
    write_idx(Path(folder) / f"{pre}-labels-idx1-ubyte.gz", labels)
    return images, labels


def write_cifar_binary(path, n_per_batch=4, seed=0):
    """cifar-10-binary.tar.gz in the published layout (records: 1 label byte + 3,072 pixel bytes);
    returns (train images N x 3 x 32 x 32, train labels, test images, test labels, md5)."""
    rng = np.random.default_rng(seed)
    buf, parts = io.BytesIO(), {}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            images = rng.integers(0, 256, (n_per_batch, 3, 32, 32), dtype=np.uint8)
            labels = rng.integers(0, 10, n_per_batch, dtype=np.uint8)
            parts[name] = images, labels
            blob = np.concatenate([labels[:, None], images.reshape(n_per_batch, -1)], 1).tobytes()
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}.bin")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(buf.getvalue())
    train = [parts[f"data_batch_{i}"] for i in range(1, 6)]
    return (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]),
            *parts["test_batch"], hashlib.md5(buf.getvalue()).hexdigest())


def write_image_folder(root, sizes=((40, 30), (28, 28), (64, 80)), classes=("cats", "dogs")):
    """PNG and JPEG files of assorted sizes in one sub-folder per class."""
    from PIL import Image
    rng = np.random.default_rng(0)
    paths = []
    for c in classes:
        for i, (w, h) in enumerate(sizes):
            p = Path(root) / c / f"img{i}.{'png' if i % 2 == 0 else 'jpg'}"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
            paths.append(p)
    return paths


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


@contextlib.contextmanager
def http_server(directory):
    """Serve a folder on 127.0.0.1 at a free port; yields the base URL (ending in /)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(directory), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def closed_port_url():
    """A URL on 127.0.0.1 where nothing listens: a server that is gone."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def snapshot(folder):
    """Every file below folder with its bytes' MD5, to prove nothing on disk was lost or changed."""
    return {str(p.relative_to(folder)): md5(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def expect_user_error(capsys, main, prog, argv):
    """main(argv) must stop with one clear '<prog>: error: ...' sentence and no traceback. v2 scripts
    raise SystemExit(message) (Python prints it and exits with status 1); argparse prints its
    message and exits with 2; v1 scripts print it and exit with 1. Returns the message."""
    import pytest
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    stderr = capsys.readouterr().err
    if isinstance(e.value.code, str):
        message = e.value.code
    else:
        assert e.value.code in (1, 2)
        message = stderr.strip().splitlines()[-1]
    assert message.startswith(f"{prog}: error: ") and "\n" not in message and "Traceback" not in stderr
    return message
