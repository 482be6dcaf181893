"""The deliberate copies between the scripts (CONVENTIONS §2) stay identical, so a fix in one file
cannot silently miss another: the plumbing block of the five training scripts (byte for byte, in
test_plumbing.py) and fid.py's cut-down block (here, piece by piece)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "# --- plumbing: the same in every script; skip on first read ---"
ALL = [s for s in ["gan", "wgan_gp", "cgan", "cyclegan", "ddpm", "fid"] if (ROOT / f"{s}.py").exists()]


def test_every_file_has_the_plumbing_marker_once():
    assert [s for s in ALL if (ROOT / f"{s}.py").read_text().count(f"\n{MARKER}\n") == 1] == ALL


def top_level_pieces(text):
    """name -> source of each top-level def or assignment of a file's text."""
    pieces = re.split(r"\n(?=\S)", text)
    return {re.match(r"(?:def |class )?(\w+)", p).group(1): p.rstrip() for p in pieces
            if p.strip() and not p.startswith("#")}


def test_fid_pys_plumbing_is_gan_pys_block_cut_down_not_rewritten():
    gan, fid = (ROOT / "gan.py").read_text(), (ROOT / "fid.py").read_text()
    block = top_level_pieces(gan[gan.index(MARKER):gan.index("\ndef main(")])
    subset = top_level_pieces(fid[fid.index(MARKER):fid.index("\ndef main(")])
    assert set(subset) == {"TOY_SETS", "IMAGE_FILES", "MNIST", "SOURCES", "toy_centres", "sample_toy",
                           "mode_metrics", "positive", "fetch", "load_data", "pick_device", "write_atomic"}
    for name, text in subset.items():
        assert text == block[name], name
