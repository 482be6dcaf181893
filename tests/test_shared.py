"""The deliberate copies between the scripts (CONVENTIONS §2) stay identical, so a fix in one file
cannot silently miss another: the plumbing block (compared byte for byte in test_plumbing.py), the toy
sets and figure helpers (here), and fid.py's cut-down block (here, piece by piece)."""
import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "# --- plumbing: the same in every script; skip on first read ---"
ALL = [s for s in ["gan", "wgan_gp", "cgan", "cyclegan", "ddpm", "fid"] if (ROOT / f"{s}.py").exists()]
V2 = [s for s in ALL if MARKER in (ROOT / f"{s}.py").read_text()]
V2_SHARED = ["toy_centres", "sample_toy", "mode_metrics", "image_grid", "figure", "save_figure", "plot_log"]


def test_every_file_is_in_the_v2_form():
    assert V2 == ALL


@pytest.mark.parametrize("script", [s for s in V2 if s != "gan"])
def test_v2_toy_sets_and_figure_helpers_are_gan_pys(script):
    gan, other = importlib.import_module("gan"), importlib.import_module(script)
    for name in [n for n in V2_SHARED if hasattr(other, n)]:
        assert inspect.getsource(getattr(other, name)) == inspect.getsource(getattr(gan, name)), f"{script}.{name}"


def top_level_pieces(text):
    """name -> source of each top-level def or assignment of a file's text."""
    pieces = re.split(r"\n(?=\S)", text)
    return {re.match(r"(?:def |class )?(\w+)", p).group(1): p.rstrip() for p in pieces
            if p.strip() and not p.startswith("#")}


def test_fid_pys_plumbing_is_gan_pys_block_cut_down_not_rewritten():
    gan, fid = (ROOT / "gan.py").read_text(), (ROOT / "fid.py").read_text()
    block = top_level_pieces(gan[gan.index(MARKER):gan.index("\ndef main(")])
    subset = top_level_pieces(fid[fid.index(MARKER):fid.index("\ndef main(")])
    assert set(subset) == {"IMAGE_FILES", "MNIST", "SOURCES", "positive", "fetch", "load_data", "pick_device",
                           "write_atomic"}
    for name, text in subset.items():
        assert text == block[name], name
    import fid as fid_module
    for name in ["toy_centres", "sample_toy", "mode_metrics"]:
        assert inspect.getsource(getattr(fid_module, name)) == inspect.getsource(getattr(importlib.import_module("gan"), name))
