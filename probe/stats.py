"""The paper's formulas, in exactly one place (LLaVA-Mini, Eq. 4-5 and Fig. 3).

    Attn(tgt -> src) = sum_{i in tgt} sum_{j in src} a_ij / #{i in tgt : i can see src}

with a_ij averaged over heads first. Entropy: per target token, the head-averaged row restricted to
the source set and renormalised, Shannon entropy in nats, averaged over the same target tokens.

Fine roles are grouped exactly: masses add, and entropies of a union follow from the parts,
    H_S = log p_S - (1 / p_S) * sum_k p_k (log p_k - H_k),   p_S = sum_k p_k,
so no engine has to know about the grouping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch

from probe.intermediate import LayerStats, entropy_from_parts
from probe.roles import StageRoles, paper_group

TABLE_COLUMNS = [
    "sample",
    "stage",
    "layer",
    "grouping",
    "tgt",
    "src",
    "head",
    "mass",
    "entropy",
    "n_targets",
    "n_entropy",
]

GROUPINGS: dict[str, Callable[[str], str]] = {
    "paper": paper_group,
    "fine": lambda label: label,
}


def group_roles(
    labels: Sequence[str],
    mass: torch.Tensor,
    entropy: torch.Tensor,
    visible: torch.Tensor,
    group_of: Callable[[str], str],
) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge fine roles (last dim) into groups; returns group labels and [..., G] tensors."""
    groups: list[str] = []
    for label in labels:
        if group_of(label) not in groups:
            groups.append(group_of(label))
    mass = mass.double()
    entropy = entropy.double()
    out_mass, out_entropy, out_visible = [], [], []
    for group in groups:
        idx = [k for k, label in enumerate(labels) if group_of(label) == group]
        p, h = mass[..., idx], entropy[..., idx]
        p_sum = p.sum(-1)
        # sum_{j in S} p_j log p_j from the parts: sum_k p_k (log p_k - H_k)
        plogp = torch.where(p > 0, p * (p.clamp_min(1e-300).log() - h), torch.zeros_like(p)).sum(-1)
        out_mass.append(p_sum)
        out_entropy.append(entropy_from_parts(p_sum, plogp))
        out_visible.append(visible[..., idx].any(-1))
    return groups, torch.stack(out_mass, -1), torch.stack(out_entropy, -1), torch.stack(out_visible, -1)


def _reduce(
    tgt_groups: list[str],
    tgt_of_token: torch.Tensor,
    src_groups: list[str],
    mass: torch.Tensor,
    entropy: torch.Tensor,
    visible: torch.Tensor,
) -> list[tuple[str, str, float, float, int, int]]:
    """Eq. 4-5 over one sequence: mass/entropy [N, G], visible [N, G], tgt_of_token [N] (-1 = padding).

    Per (tgt, src): mean mass over the n targets that can see src, mean entropy over the n_entropy of them
    whose restricted row is defined (a visible source whose probabilities all underflowed to 0 has
    mass 0 but no entropy: it counts in the mass mean, not in the entropy mean)."""
    rows = []
    for t, tgt in enumerate(tgt_groups):
        is_tgt = tgt_of_token == t
        for s, src in enumerate(src_groups):
            sel = is_tgt & visible[:, s]
            n = int(sel.sum())
            if n == 0:
                continue  # e.g. instruction -> response under the causal mask: no target can see it
            total_mass = float(mass[sel, s].sum())
            ent = entropy[sel, s]
            ent = ent[~ent.isnan()]
            mean_entropy = float(ent.mean()) if len(ent) else float("nan")
            rows.append((tgt, src, total_mass / n, mean_entropy, n, len(ent)))
    return rows


def layer_rows(
    stats: LayerStats,
    roles: StageRoles,
    sample_ids: Sequence[str],
    groupings: Sequence[str] = ("paper", "fine"),
) -> list[dict]:
    """Tidy rows (one per sample x grouping x tgt x src [x head]) for one layer."""
    rows: list[dict] = []
    for grouping in groupings:
        group_of = GROUPINGS[grouping]
        groups, mass, entropy, visible = group_roles(
            roles.labels, stats.mass, stats.entropy, stats.visible, group_of
        )
        label_to_group = torch.tensor([groups.index(group_of(label)) for label in roles.labels])
        head_parts = None
        if stats.head_mass is not None:
            _, h_mass, h_entropy, _ = group_roles(
                roles.labels, stats.head_mass, stats.head_entropy, stats.visible.unsqueeze(1), group_of
            )
            head_parts = (h_mass, h_entropy)
        for b, sample_id in enumerate(sample_ids):
            ids = roles.role_ids[b]
            tgt_of_token = torch.where(ids >= 0, label_to_group[ids.clamp(min=0)], -1)
            base = {"sample": sample_id, "stage": stats.stage, "layer": stats.layer, "grouping": grouping}
            for tgt, src, m, e, n, n_e in _reduce(
                groups, tgt_of_token, groups, mass[b], entropy[b], visible[b]
            ):
                rows.append(
                    {**base, "tgt": tgt, "src": src, "head": None, "mass": m, "entropy": e}
                    | {"n_targets": n, "n_entropy": n_e}
                )
            if head_parts is not None:
                h_mass, h_entropy = head_parts
                for h in range(h_mass.shape[1]):
                    for tgt, src, m, e, n, n_e in _reduce(
                        groups, tgt_of_token, groups, h_mass[b, h], h_entropy[b, h], visible[b]
                    ):
                        rows.append(
                            {
                                **base,
                                "tgt": tgt,
                                "src": src,
                                "head": h,
                                "mass": m,
                                "entropy": e,
                                "n_targets": n,
                                "n_entropy": n_e,
                            }
                        )
    return rows


def to_table(rows: list[dict]) -> pd.DataFrame:
    """Rows -> the tidy table with stable dtypes (head is nullable: <NA> = heads averaged, the paper's)."""
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    df["head"] = df["head"].astype("Int64")
    df["layer"] = df["layer"].astype("int64")
    df["n_targets"] = df["n_targets"].astype("int64")
    df["n_entropy"] = df["n_entropy"].astype("int64")
    return df


def average_over_samples(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over samples of each per-sample value (each sample weighs the same)."""
    keys = [c for c in ["model", "stage", "layer", "grouping", "tgt", "src", "head"] if c in table.columns]
    return (
        table.groupby(keys, dropna=False, sort=False)
        .agg(mass=("mass", "mean"), entropy=("entropy", "mean"), n_samples=("sample", "nunique"))
        .reset_index()
    )
