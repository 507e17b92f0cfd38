"""The one intermediate every engine produces: per layer, per query token, statistics over source roles.

Engines (eager reference, native streaming, nnsight, transformer-lens) differ only in how they obtain
these numbers; `probe.stats` turns them into the paper's quantities. Keeping this small and shared is
what lets the backends be compared tensor for tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from probe.roles import StageRoles


@dataclass
class LayerStats:
    """Statistics of one attention layer on one batch, over the fine roles of `stage`.

    mass[b, i, r]     = sum over keys j of role r of a_ij, a = attention averaged over heads
    entropy[b, i, r]  = Shannon entropy (nats) of a_i restricted to role r and renormalised;
                        NaN where that mass is exactly zero
    visible[b, i, r]  = query i can attend to at least one key of role r (from the mask)
    head_mass / head_entropy: the same per head, [B, H, N, R], only when asked for (per-head entropy
                        is NOT the paper's quantity: entropy does not commute with averaging heads).
    grid_rows: optional {image index: [B, Q, rows, cols]} head-averaged attention of chosen queries
                        onto that image's patch grid, for attention-map figures.
    """

    stage: str
    layer: int
    mass: torch.Tensor
    entropy: torch.Tensor
    visible: torch.Tensor
    head_mass: torch.Tensor | None = None
    head_entropy: torch.Tensor | None = None
    grid_rows: dict[int, torch.Tensor] | None = None


def concat_sequences(stats: LayerStats) -> LayerStats:
    """Stats of S sequences of one sample [S, N, R] as one sequence [1, S * N, R] (per-target values, so
    the paper's averages then pool the targets of all sequences). Heads: [S, H, N, R] -> [1, H, S * N, R]."""

    def heads(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.transpose(0, 1).reshape(1, t.shape[1], -1, t.shape[-1])

    return LayerStats(
        stage=stats.stage,
        layer=stats.layer,
        mass=stats.mass.reshape(1, -1, stats.mass.shape[-1]),
        entropy=stats.entropy.reshape(1, -1, stats.entropy.shape[-1]),
        visible=stats.visible.reshape(1, -1, stats.visible.shape[-1]),
        head_mass=heads(stats.head_mass),
        head_entropy=heads(stats.head_entropy),
        grid_rows=stats.grid_rows,
    )


def entropy_from_parts(mass: torch.Tensor, plogp: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of a distribution restricted to a set and renormalised, from the set's mass
    m = sum_j p_j and s = sum_j p_j log p_j:  H = log m - s / m.  NaN where m == 0 (undefined); clamped at 0,
    since rounding gives -1e-17 for one-token sets. The one implementation every engine and the role
    grouping use."""
    dtype = torch.promote_types(mass.dtype, plogp.dtype)
    mass, plogp = mass.double(), plogp.double()
    safe = mass.clamp_min(1e-300)
    entropy = torch.where(mass > 0, safe.log() - plogp / safe, torch.full_like(mass, float("nan")))
    return entropy.clamp_min(0.0).to(dtype)


def entropy_within_roles(probs: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mass and renormalised entropy per role from explicit probabilities.

    probs: [..., N, K] attention rows (rows over keys K); onehot: [K, R] role of each key.
    Returns mass [..., N, R] and entropy [..., N, R] (nats, NaN where mass == 0). The slow, obvious way:
    this is the reference the streaming identities are checked against.
    """
    probs = probs.double()
    onehot = onehot.double()
    mass = probs @ onehot
    plogp = torch.special.xlogy(probs, probs) @ onehot
    return mass.float(), entropy_from_parts(mass, plogp).float()


def grid_rows_from_probabilities(
    mean_probs: torch.Tensor, roles: StageRoles, positions: Sequence[int]
) -> dict[int, torch.Tensor]:
    """{image index: [B, Q, rows, cols]} rows `positions` of head-averaged probabilities [B, N, N] read on
    each image's patch grid (cells without a token are 0), in `positions` order."""
    rows = mean_probs[:, list(positions)]  # [B, Q, N]
    out = {}
    for grid in roles.grids:
        flat = grid.positions.flatten()
        cells = rows[:, :, flat.clamp(min=0)] * (flat >= 0).to(rows.dtype)
        out[grid.image_index] = cells.reshape(rows.shape[0], rows.shape[1], *grid.positions.shape)
    return out


def visibility_from_mask(allowed: torch.Tensor, roles: StageRoles) -> torch.Tensor:
    """[B, N, R] bool: query i can see at least one key of role r under `allowed` [B|1, 1|H, N, N] (the
    mask the forward used); padding queries see nothing."""
    seen = torch.matmul(allowed.any(1).float().cpu(), roles.onehot(torch.float32)) > 0
    return seen & (roles.role_ids >= 0).unsqueeze(-1)


def stats_from_probabilities(
    stage: str,
    layer: int,
    probs: torch.Tensor,
    roles: StageRoles,
    per_head: bool = False,
    grid_queries: Sequence[int] | None = None,
    allowed: torch.Tensor | None = None,
) -> LayerStats:
    """LayerStats from a full attention tensor [B, H, N, N] (eager, nnsight and TransformerLens paths).

    `grid_queries`: absolute query positions whose head-averaged rows are also read on the image grids.
    `allowed`: the forward's mask as [B|1, 1|H, N, N] bool, where visibility is read; without it (a path
    whose mask probe cannot see) the roles under a causal mask.
    """
    onehot = roles.onehot(torch.float64)  # [B, N, R]
    mean_probs = probs.double().mean(dim=1)  # heads averaged first: the paper's a_ij
    mass, entropy = entropy_within_roles(mean_probs, onehot)
    head_mass = head_entropy = None
    if per_head:
        head_mass, head_entropy = entropy_within_roles(probs.double(), onehot.unsqueeze(1))
    grid_rows = None
    if grid_queries is not None:
        grid_rows = grid_rows_from_probabilities(mean_probs, roles, grid_queries)
    return LayerStats(
        stage=stage,
        layer=layer,
        mass=mass,
        entropy=entropy,
        visible=roles.causal_visibility() if allowed is None else visibility_from_mask(allowed, roles),
        head_mass=head_mass,
        head_entropy=head_entropy,
        grid_rows=grid_rows,
    )
