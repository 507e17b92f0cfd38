"""The shared trainer's checkpoints: data only (safetensors + JSON), complete enough to resume exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from probe.training.checkpoint import load_checkpoint, read_state, save_checkpoint
from probe.training.loop import Schedule, Stage, run_stages


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.embed.weight  # one storage, two names (safetensors alone refuses this)


def _train(model: nn.Module, out, steps: int, stop_after: int | None = None):
    def loss(rng: np.random.Generator) -> torch.Tensor:
        tokens = torch.from_numpy(rng.integers(0, 7, size=(3,)))
        return nn.functional.cross_entropy(model.head(model.embed(tokens)), (tokens + 1) % 7)

    stage = Stage("toy", steps, 0.05, lambda: [{"params": list(model.parameters()), "scale": 1.0}], loss)
    return run_stages(
        model, [stage], out, Schedule(warmup=1, checkpoint_every=2), stop_after=stop_after, progress=False
    )


def test_checkpoint_round_trip_keeps_tied_weights_and_adam_moments(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    optimiser = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.head(model.embed(torch.tensor([1, 2]))).sum().backward()
    optimiser.step()
    save_checkpoint(tmp_path / "c.safetensors", {"model": model}, optimiser, {"step": 3})
    assert read_state(tmp_path / "c.safetensors")["state"] == {"step": 3}
    torch.manual_seed(1)
    fresh = Tied()
    fresh_optimiser = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    assert load_checkpoint(tmp_path / "c.safetensors", {"model": fresh}, fresh_optimiser) == {"step": 3}
    assert fresh.head.weight is fresh.embed.weight and torch.equal(fresh.embed.weight, model.embed.weight)
    expected = optimiser.state_dict()["state"][0]
    got = fresh_optimiser.state_dict()["state"][0]
    assert torch.equal(got["exp_avg"], expected["exp_avg"]) and torch.equal(
        got["exp_avg_sq"], expected["exp_avg_sq"]
    )


def test_resume_reads_no_pickle_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    torch.manual_seed(0)
    straight = Tied()
    _train(straight, tmp_path / "a", steps=7)

    def refuse(*args, **kwargs):
        raise AssertionError("a training checkpoint must not be unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    for stop_after in (3, 2, None):  # stopped after step 3, again after step 5, then run to the end
        torch.manual_seed(0)
        model = Tied()
        state = _train(model, tmp_path / "b", steps=7, stop_after=stop_after)
    assert state is not None and state["resumed_from"] == 5
    assert torch.equal(model.embed.weight, straight.embed.weight)


def test_a_foreign_file_is_one_clear_error(tmp_path):
    from probe.errors import ProbeError

    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(ProbeError, match="not a probe training checkpoint"):
        read_state(path)
