"""Shared test set-up: make the top-level scripts importable and keep torch to the 2 CPU cores."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(min(2, torch.get_num_threads()))
