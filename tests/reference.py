"""Plain reference computations the tests compare probe against (no probe code used here)."""

from __future__ import annotations

import math

import numpy as np
import torch

TOL = 1e-4  # engines against the eager reference, float32


def paper_table(a: np.ndarray, role: np.ndarray) -> dict:
    """Paper Eq. 4-5 with explicit loops: a [N, N] head-averaged attention of one sequence (rows = targets),
    role [N] one of instruction / vision / response per token, causal visibility.
    -> {(tgt, src): (mass, entropy, n_targets)}."""
    result = {}
    for tgt in ("instruction", "vision", "response"):
        for src in ("instruction", "vision", "response"):
            masses, entropies = [], []
            for i in np.flatnonzero(role == tgt):
                keys = [j for j in range(i + 1) if role[j] == src]
                if not keys:
                    continue  # token i cannot see the source set: not in the denominator
                row = a[i, keys]
                masses.append(row.sum())
                p = row / row.sum()
                entropies.append(-sum(x * math.log(x) for x in p if x > 0))
            if masses:
                result[(tgt, src)] = (np.mean(masses), np.mean(entropies), len(masses))
    return result


def paper_roles(ids: np.ndarray, image_token_id: int, prompt_length: int) -> np.ndarray:
    """instruction / vision / response per token of one LLaVA sequence."""
    role = np.array(["instruction"] * len(ids), dtype=object)
    role[ids == image_token_id] = "vision"
    role[prompt_length:] = "response"
    return role


def assert_stats_close(ref, got, per_head=False, rows=slice(None), tol=TOL):
    """Two lists of LayerStats agree: same layers, NaN patterns, visibility; values within `tol`."""
    assert [s.layer for s in ref] == [s.layer for s in got]
    fields = ["mass", "entropy"] + (["head_mass", "head_entropy"] if per_head else [])
    for a, b in zip(ref, got, strict=True):
        for name in fields:
            x, y = getattr(a, name), getattr(b, name)
            x, y = (x[:, :, rows], y[:, :, rows]) if name.startswith("head") else (x[:, rows], y[:, rows])
            assert x.shape == y.shape, name
            assert torch.equal(x.isnan(), y.isnan()), f"layer {a.layer} {name}: NaN pattern differs"
            err = torch.nan_to_num((x - y).abs(), nan=0.0).max().item()
            assert err < tol, f"layer {a.layer} {name}: max error {err}"
        assert torch.equal(a.visible[:, rows], b.visible[:, rows])
