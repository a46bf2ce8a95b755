import os

import torch

# Two cores, shared: torch's own two threads fight any other busy process and
# can run 10-20x slower. One thread is both faster and steadier here.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
