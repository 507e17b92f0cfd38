"""Attention onto the image grid (paper Fig. 4): which query tokens, and the tidy table of their rows.

`--grid-queries SPEC` is a comma list of selectors:

* an integer token position in the LLM sequence (0-based; negative counts from the end, `-1` = the
  last token, which is the last response token when there is a response);
* a role, meaning every token of that role: `instruction` (the paper's: the system prefix and the
  user's text, the last prompt token included), `response`, or `last` (the last prompt token alone: the
  position that predicts the first response token; see probe.roles).

For each selected query token and each LLM layer, the engines return the head-averaged attention row
(the paper's a_ij) restricted to each image's patch grid; `grid_table` turns it into one row per
sample x stage x layer x image x query x patch row x patch col. Weights are probabilities over the
whole sequence, not renormalised over the grid, so a map's sum is the query's mass on that image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from probe.errors import ProbeError
from probe.intermediate import LayerStats
from probe.roles import StageRoles, label_stem, paper_group

GRID_COLUMNS = [
    "sample",
    "stage",
    "layer",
    "image",
    "query",
    "query_role",
    "query_token",
    "row",
    "col",
    "weight",
    "image_mass",  # the query's attention onto every token of the image; sum(weight) / image_mass = covered share
]
GRID_STAGE = "llm"
ROLE_SELECTORS = ("instruction", "last", "response")

Selector = int | str


def parse_grid_queries(spec: str) -> tuple[Selector, ...]:
    """'-1, response,12' -> (-1, 'response', 12); unknown selectors raise a one-line ProbeError."""
    selectors: list[Selector] = []
    for item in str(spec).split(","):
        item = item.strip()
        if not item:
            raise ProbeError(
                f"--grid-queries '{spec}' has an empty selector: give a comma list like '-1,response'"
            )
        try:
            selector: Selector = int(item)
        except ValueError:
            selector = item.lower()
            if selector not in ROLE_SELECTORS:
                raise ProbeError(
                    f"unknown --grid-queries selector '{item}': use token positions (e.g. 12, -1) or the "
                    f"roles {', '.join(ROLE_SELECTORS)}"
                ) from None
        if selector not in selectors:
            selectors.append(selector)
    return tuple(selectors)


def format_grid_queries(selectors: Sequence[Selector]) -> str:
    return ",".join(str(s) for s in selectors)


def resolve_grid_queries(selectors: Sequence[Selector], roles: StageRoles, sample_id: str = "0") -> list[int]:
    """Sorted absolute positions picked by `selectors` in a (single-sequence) LLM sequence.

    Out-of-range positions raise; a role with no token in this sample (`response` after an empty
    generation) picks nothing.
    """
    role_ids = roles.role_ids[0]
    n = int(role_ids.shape[0])
    picked: set[int] = set()
    for selector in selectors:
        if isinstance(selector, int):
            if not -n <= selector < n:
                raise ProbeError(
                    f"--grid-queries position {selector} is out of range for sample '{sample_id}': it has {n} "
                    f"tokens (positions 0..{n - 1}, or -{n}..-1 from the end)"
                )
            picked.add(selector % n)
        else:
            wanted = [
                k
                for k, label in enumerate(roles.labels)
                if selector in (paper_group(label), label_stem(label))
            ]
            picked.update(int(p) for p in torch.isin(role_ids, torch.tensor(wanted)).nonzero().flatten())
    return sorted(picked)


def check_has_grid(roles: StageRoles, model_name: str, sample_id: str = "0") -> None:
    if not roles.grids:
        raise ProbeError(
            f"--grid-queries needs image patch grids in the LLM sequence, and '{model_name}' has none for "
            f"sample '{sample_id}' (e.g. LLaVA-Mini feeds compressed tokens; see `probe compression-map`)"
        )


def grid_table(
    stats: Sequence[LayerStats],
    roles: StageRoles,
    positions: Sequence[int],
    sample_ids: Sequence[str],
    tokens: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Tidy rows of `LayerStats.grid_rows` (queries in `positions` order, as the engines return them)."""
    positions = [int(p) for p in positions]
    frames: list[pd.DataFrame] = []
    for s in stats:
        if not s.grid_rows:
            continue
        for image, rows in sorted(s.grid_rows.items()):
            if rows is None or rows.numel() == 0:
                continue
            b, q, n_rows, n_cols = rows.shape
            if q != len(positions):
                raise ValueError(f"layer {s.layer}: {q} grid rows for {len(positions)} query positions")
            weight = rows.double().numpy().reshape(-1)
            sample = np.repeat(np.asarray(sample_ids[:b], dtype=object), q * n_rows * n_cols)
            query = np.tile(np.repeat(np.asarray(positions, dtype=np.int64), n_rows * n_cols), b)
            role_ids = roles.role_ids[:b, positions]  # [b, q]
            labels = np.asarray(list(roles.labels) + ["padding"], dtype=object)
            query_role = np.repeat(labels[role_ids.reshape(-1).numpy()], n_rows * n_cols)
            # every token of the image (LLaVA-NeXT: crops and newline tokens too, which the grid does not show)
            image_role = roles.labels.index(f"image:{image}")
            image_mass = s.mass[:b, positions, image_role].double().numpy()  # [b, q]
            token = np.asarray(list(tokens) if tokens is not None else [""] * q, dtype=object)
            query_token = np.tile(np.repeat(token, n_rows * n_cols), b)
            frames.append(
                pd.DataFrame(
                    {
                        "sample": sample,
                        "stage": s.stage,
                        "layer": s.layer,
                        "image": image,
                        "query": query,
                        "query_role": query_role,
                        "query_token": query_token,
                        "row": np.tile(np.repeat(np.arange(n_rows), n_cols), b * q),
                        "col": np.tile(np.arange(n_cols), b * q * n_rows),
                        "weight": weight,
                        "image_mass": np.repeat(image_mass.reshape(-1), n_rows * n_cols),
                    }
                )
            )
    return to_grid_table(frames)


def to_grid_table(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate grid rows with stable dtypes (an empty table keeps its columns and types)."""
    nonempty = [f for f in frames if len(f)]
    if nonempty:
        df = pd.concat(nonempty, ignore_index=True)
    else:  # keep the columns (e.g. `model`) of the empty parts
        df = frames[0].copy() if len(frames) else pd.DataFrame(columns=GRID_COLUMNS)
    df = df[[c for c in ["model", *GRID_COLUMNS] if c in df.columns]]
    for column in ("layer", "image", "query", "row", "col"):
        df[column] = df[column].astype("int64")
    for column in ("sample", "stage", "query_role", "query_token"):
        df[column] = df[column].astype(object)
    df["weight"] = df["weight"].astype("float64")
    df["image_mass"] = df["image_mass"].astype("float64")
    return df
