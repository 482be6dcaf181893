"""Shared test set-up: make the top-level scripts importable and keep torch to the 2 CPU cores."""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# One thread per pytest-xdist worker (make test runs two), else the 2 cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))
