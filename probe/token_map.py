"""The token x token attention of one sample at chosen layers (paper Fig. 4, left), saved as a run.

No other run keeps whole attention matrices (the statistics engines never build them), so this is a
separate, small job: one eager forward of one sample (`output_attentions`, the reference path of the
eager engine), head-averaged, the causal lower triangle of the chosen LLM layers kept as a tidy table.
A directory written by `save_token_map_run` holds token_map.parquet (one row per layer [x head] x query x
key with key <= query: weight = head-averaged probability (`head` empty) or one head's, query_role /
key_role = fine roles) and manifest.json
(command 'token-map'); `probe paper` writes one and `probe report` draws it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from probe.errors import ProbeError
from probe.inputs import Sample
from probe.zoo import LoadedModel

TABLE = "token_map.parquet"


@torch.no_grad()
def token_map_table(
    loaded: LoadedModel, sample: Sample, layers: Sequence[int] | None = None, per_head: bool = False
) -> pd.DataFrame:
    """Head-averaged attention of every query onto every visible key at `layers` (default: first, last and
    two between) of the LLM stage, as a tidy table (`head` empty). `per_head` adds every head's own map
    (`head` = its index): paper Fig. 4 averages heads, which can hide a head that looks elsewhere."""
    from analyses.attention_maps import pick_layers
    from probe.engines.eager import eager_attentions

    adapter = loaded.adapter
    adapter.validate(sample)
    n_layers = adapter.num_layers("llm")
    layers = pick_layers(range(n_layers), 4) if layers is None else [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise ProbeError(f"layer(s) {bad} are not in the LLM: it has layers 0..{n_layers - 1} (0-based)")
    prepared = adapter.prepare(sample)
    attentions = eager_attentions(adapter, prepared)["llm"]
    roles = prepared.roles["llm"]
    labels = np.array(roles.labels + ["padding"])[roles.role_ids[0].numpy()]
    n = len(labels)
    query, key = np.tril_indices(n)
    parts = []
    for layer in layers:
        probs = attentions[layer][0].float().cpu().numpy()  # [heads, N, N]
        maps = [(None, probs.mean(0))] + (list(enumerate(probs)) if per_head else [])
        for head, matrix in maps:
            parts.append(
                pd.DataFrame(
                    {
                        "sample": sample.sample_id,
                        "layer": layer,
                        "head": pd.array([head] * len(query), dtype="Int64"),
                        "query": query,
                        "key": key,
                        "query_role": labels[query],
                        "key_role": labels[key],
                        "weight": matrix[query, key],
                    }
                )
            )
    table = pd.concat(parts, ignore_index=True)
    for column in ("query_role", "key_role"):
        table[column] = table[column].astype("category")
    return table


def save_token_map_run(
    loaded: LoadedModel,
    sample: Sample,
    out_dir: Path,
    layers: Sequence[int] | None = None,
    command: str | None = None,
    per_head: bool = False,
) -> Path:
    """token_map.parquet + manifest.json (last) in `out_dir`, each written atomically. No CSV: a dense
    matrix as text is of no use."""
    from probe.provenance import run_provenance
    from probe.results import atomic_write, versions, write_json
    from probe.zoo import probe_home

    table = token_map_table(loaded, sample, layers, per_head)
    out_dir = Path(out_dir)
    atomic_write(out_dir / TABLE, lambda p: table.to_parquet(p, index=False))
    manifest = {
        "command": "token-map",
        "model": {"name": loaded.name, "source": loaded.source, "family": loaded.family},
        "sample": sample.sample_id,
        "image": ";".join(sample.image_sources),
        "prompt": sample.prompt,
        "response": sample.response,
        "layers": sorted(int(x) for x in set(table["layer"])),
        "n_samples": 1,
        "weight": "attention probability from query to key (eager forward), lower triangle; head empty = "
        "averaged over heads, else that head's own",
        "per_head": per_head,
        "layer_index": "0-based",
        "versions": versions(),
        "provenance": run_provenance(loaded.source, loaded.revision, probe_home(), command=command),
    }
    write_json(out_dir / "manifest.json", manifest)
    return out_dir
