import os
import socket

import pytest
import torch

# Two cores, shared: torch's own two threads fight any other busy process and
# can run 10-20x slower. One thread is both faster and steadier here.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="module")
def no_network():
    """Any socket connect fails the test (compdiff never downloads); HF_HUB_OFFLINE set for the module."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "create_connection", refuse)
        yield


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 16x16 objects model trained for 1 step (one per test module that asks for it)."""
    from compdiff.training import TrainConfig, train

    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(task="objects", out=str(out), resolution=16, batch_size=4, channels=(16, 32),
                      layers_per_block=1, precision="fp32", steps=1)
    return str(train(cfg, progress=False).model_dir)


@pytest.fixture
def no_model(monkeypatch):
    """Opening a model is a runtime error (exit 1): an exit 2 then proves the input was refused
    before any model was opened. The list holds the arguments of every attempt."""
    import compdiff.backends

    opened = []

    def refuse(*args, **kwargs):
        opened.append(args)
        raise RuntimeError("the model was opened")

    monkeypatch.setattr(compdiff.backends, "open_model", refuse)
    return opened
