"""Native streaming engine: statistics computed inside the model's real SDPA / flash forward.

For the duration of a forward, the model's own attention implementation (`sdpa`, `flash_attention_2` /
`_3`, `flex_attention` or any registered one) is fronted, under its own name, in transformers'
`AttentionInterface` by `streaming_attention_forward` (see `instrumented_attention`): the model's
config, masks, kernel loading and dispatch stay exactly as they were. The function calls the wrapped
implementation for the output, unchanged, and for the modules of probed stages (never the vision
tower) computes `LayerStats` rows on the side from the post-RoPE query and key it receives:

* queries are processed in blocks, and within a block one KV group (the query heads that share a key
  head) at a time: that group's probabilities (heads x q-block x keys) are formed in fp32 in one small
  buffer that stays in cache, added into the block's head sum, and the head average (the paper's a_ij)
  is reduced to per-role mass and sum_j a_ij log a_ij. Extra memory is one group's block plus the
  block's head average plus O(heads x N x roles), never N x N.
  The head-averaged entropy cannot be obtained from per-head quantities (entropy is not linear), so the
  per-head probabilities of a block are needed anyway; given them, per-head mass / entropy come for
  free and are cheaper than separate SDPA calls with V = one-hot(role) or V = K (the identities of
  analyses.md, which give the same numbers; see `mass_by_sdpa` for the mass identity, used by tests).
* keys beyond the last key any query of the block can see (causal mask) are skipped.
* grouped-query attention is handled by grouping query heads per KV head (no repeat_kv copy of K).
* the mask is the one the model passes (4D bool / additive float, 2D padding for flash, a flex
  `BlockMask`, or None = causal), so padding (role id -1, masked by the model) is handled exactly as the
  forward does.
* with a KV cache the queries are the new tokens only: they sit at the end of the keys (positions
  Nk - Nq ... Nk - 1); rows are produced for them, keys beyond the known roles count as `response`.

The role ids of the current forward come from a `StreamingContext` that `run_native` activates through
a `ContextVar` for the duration of one forward, so nothing leaks between runs or threads.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.nn.attention.flex_attention import BlockMask
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from probe.adapters.base import Adapter, Prepared
from probe.engines import register_engine
from probe.errors import ProbeError
from probe.intermediate import LayerStats, concat_sequences, entropy_from_parts
from probe.notes import note
from probe.precision import full_fp32_matmul
from probe.roles import StageRoles

DEFAULT_BLOCK_BYTES = (
    4 * 2**20
)  # fp32 scores of one query block for one KV group: small enough to stay in cache


@dataclass
class StreamingContext:
    """What the attention function needs to know about the current forward, and where rows go."""

    roles: StageRoles
    device: torch.device
    per_head: bool = False
    grid_queries: Sequence[int] | None = None
    block_bytes: int = DEFAULT_BLOCK_BYTES
    # An intervention's edit (probe.interventions): (module, query, key, mask, inner) -> (mask, inner), applied
    # before the attention runs, so statistics and output both see the edited attention.
    edit: Callable | None = None
    observe: bool = True  # False: only edit, compute no statistics
    chunks: dict[int, list[dict]] = field(default_factory=dict)
    _onehot_cache: dict = field(default_factory=dict)

    def role_ids(self, length: int) -> torch.Tensor:
        """[B, length] role ids on device; positions beyond the prepared roles (generated tokens) are response."""
        ids = self.roles.role_ids
        if length > ids.shape[1]:
            fill = self.roles.labels.index("response") if "response" in self.roles.labels else -1
            ids = torch.cat(
                [ids, torch.full((ids.shape[0], length - ids.shape[1]), fill, dtype=ids.dtype)], dim=1
            )
        return ids[:, :length].to(self.device)

    def onehot(self, length: int) -> torch.Tensor:
        """[B, length, R] fp32 one-hot of key roles; padding keys are all zero."""
        if length not in self._onehot_cache:
            ids = self.role_ids(length)
            oh = torch.nn.functional.one_hot(ids.clamp(min=0), self.roles.num_roles).float()
            self._onehot_cache = {length: oh * (ids >= 0).unsqueeze(-1).float()}
        return self._onehot_cache[length]

    @property
    def grids_wanted(self) -> bool:
        return bool(self.grid_queries) and bool(self.roles.grids)

    def grid_targets(self, total: int) -> list[int]:
        return sorted({q % total for q in self.grid_queries}) if self.grid_queries else []

    def layer_stats(self, stage: str = "llm") -> list[LayerStats]:
        out = []
        for layer in sorted(self.chunks):
            parts = self.chunks[layer]

            def cat(key: str, dim: int = 1, parts=parts):
                return (
                    torch.cat([p[key] for p in parts], dim=dim).cpu() if parts[0][key] is not None else None
                )

            grid_rows = None
            if self.grid_queries:
                grid_rows = {}
                for g in self.roles.grids:
                    rows = [p["grid"][g.image_index] for p in parts if p["grid"]]
                    grid_rows[g.image_index] = torch.cat(rows, dim=1).cpu() if rows else None
            out.append(
                LayerStats(
                    stage=stage,
                    layer=layer,
                    mass=cat("mass"),
                    entropy=cat("entropy"),
                    visible=cat("visible"),
                    head_mass=cat("head_mass", 2),
                    head_entropy=cat("head_entropy", 2),
                    grid_rows=grid_rows,
                )
            )
        return out


# The active route: attention module -> the context of its stage (None = not probed).
_ACTIVE: contextvars.ContextVar[Callable[[torch.nn.Module], StreamingContext | None] | None] = (
    contextvars.ContextVar("probe_streaming", default=None)
)


@contextmanager
def collecting(by_module: dict[torch.nn.Module, StreamingContext]) -> Iterator[None]:
    """Collect the attention calls of each module in `by_module` into its context (one per stage); calls
    of any other module (the vision tower shares the implementation) pass through untouched."""
    table = {id(module): ctx for module, ctx in by_module.items()}
    token = _ACTIVE.set(lambda module: table.get(id(module)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def streaming_attention_forward(
    module, query, key, value, attention_mask, *args, inner: Callable = sdpa_attention_forward, **kwargs
):
    """`inner` (the model's own attention) for the output; statistics on the side for probed modules."""
    route = _ACTIVE.get()
    context = route(module) if route is not None else None
    if context is not None and context.edit is not None:
        attention_mask, inner = context.edit(module, query, key, attention_mask, inner, **kwargs)
    output = inner(module, query, key, value, attention_mask, *args, **kwargs)
    if context is not None and context.observe:
        if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
            raise ProbeError(
                "the native backend does not support attention soft-capping / sinks; use --backend eager"
            )
        with torch.no_grad(), full_fp32_matmul():
            collect(
                context, module, query, key, attention_mask, kwargs.get("scaling"), kwargs.get("is_causal")
            )
    return output


# --- activation ---------------------------------------------------------------------------------------
def fronted(inner: Callable) -> Callable:
    """`inner` with `streaming_attention_forward` in front: the function to register for an implementation."""

    def forward(module, query, key, value, attention_mask, *args, **kwargs):
        return streaming_attention_forward(
            module, query, key, value, attention_mask, *args, inner=inner, **kwargs
        )

    return forward


@contextmanager
def instrumented_attention(adapter: Adapter) -> Iterator[str]:
    """Front the model's own attention implementation with `streaming_attention_forward`; yields its name.

    The implementation keeps its name, so transformers builds the same mask (a flex `BlockMask`, a flash
    padding mask, ...) and loads the same kernels as without probe. Only this process's
    `ALL_ATTENTION_FUNCTIONS` entry is replaced, and restored on exit; calls from modules that are not
    probed (the vision tower) pass straight through. A model on eager attention has no entry to front
    (its modules call their own eager function): it runs on SDPA instead, which is said once, never
    done silently.
    """
    name = adapter.current_attention()
    if name in (None, "eager") or name not in ALL_ATTENTION_FUNCTIONS:
        if not getattr(adapter, "_told_native_runs_sdpa", False):  # once per model, not per sample
            note(
                f"the native backend runs the language model on SDPA instead of its '{name}' attention "
                "(the statistics are exact either way; --backend eager keeps the eager forward)"
            )
            adapter._told_native_runs_sdpa = True
        with adapter.attention_implementation("sdpa"), instrumented_attention(adapter) as used:
            yield used
        return
    inner = ALL_ATTENTION_FUNCTIONS[name]
    overridden_locally = inner is not AttentionInterface().get(name)  # a fresh interface: global entries only
    ALL_ATTENTION_FUNCTIONS[name] = fronted(inner)
    try:
        yield name
    finally:
        if overridden_locally:
            ALL_ATTENTION_FUNCTIONS[name] = inner
        else:
            del ALL_ATTENTION_FUNCTIONS[name]


# --- the statistics -----------------------------------------------------------------------------------
def _block_mask(mask, q_pos: torch.Tensor, q0: int, q1: int, n_keys: int, causal: bool):
    """(allowed [B|1, 1|H, Qb, K] bool, additive bias or None, K = keys to look at) for query rows q0:q1."""
    if mask is None or (not isinstance(mask, BlockMask) and mask.dim() == 2):
        k = min(n_keys, int(q_pos[-1]) + 1) if causal else n_keys
        keys = torch.arange(k, device=q_pos.device)
        allowed = (
            (keys[None, :] <= q_pos[:, None])
            if causal
            else torch.ones(len(q_pos), k, dtype=torch.bool, device=q_pos.device)
        )
        allowed = allowed[None, None]
        if mask is not None:  # flash-style [B, Nk] padding mask, 1 = keep
            allowed = allowed & mask[:, None, None, :k].bool()
        return allowed, None, k
    if isinstance(mask, BlockMask):  # flex: evaluate its mask function on this block's (query, key) pairs
        rows = _block_mask_rows(mask, q0, q1, n_keys)
    else:
        rows = mask[:, :, q0:q1, :]
    if rows.dtype == torch.bool:
        allowed, bias = rows, None
    else:
        allowed, bias = rows > torch.finfo(rows.dtype).min / 2, rows
    seen = allowed.flatten(0, 2).any(0).nonzero()
    k = int(seen[-1]) + 1 if len(seen) else 1
    return allowed[..., :k], (bias[..., :k].float() if bias is not None else None), k


def _query_offset(mask, n_q: int, n_keys: int, bottom_right: bool) -> int:
    """Position of the first query among the keys. Without a cache the queries are the keys. A dynamic KV
    cache holds exactly the keys so far, so the queries are the last n_q; a static cache is longer than
    what it holds and only the mask knows where they sit: a query sees itself as its last key (causal),
    unless it is padding, so the largest (last visible key - row) over the last rows is the offset.
    Without a mask, causality is the kernel's: SDPA aligns it top-left (transformers drops the mask only
    when the queries start the sequence), flash kernels bottom-right."""
    if n_q == n_keys:
        return 0
    if mask is None and n_q > 1 and not bottom_right:
        return 0
    if mask is None or (not isinstance(mask, BlockMask) and mask.dim() == 2):
        return n_keys - n_q
    first = max(0, n_q - 64)
    rows = _block_mask_rows(mask, first, n_q, n_keys) if isinstance(mask, BlockMask) else mask[:, :, first:]
    allowed = rows if rows.dtype == torch.bool else rows > torch.finfo(rows.dtype).min / 2
    allowed = allowed.any(1).any(0)  # [rows, keys]
    keys = torch.arange(n_keys, device=allowed.device)
    last_seen = torch.where(allowed, keys, -1).max(-1).values  # -1: a row that sees nothing
    shift = last_seen - torch.arange(first, n_q, device=allowed.device)
    best = int(shift[last_seen >= 0].max()) if bool((last_seen >= 0).any()) else n_keys - n_q
    return min(max(best, 0), n_keys - n_q)


def query_offset(module, mask, n_q: int, n_keys: int) -> int:
    """Position of this attention call's first query among its keys (`_query_offset`, with the module's
    kernel saying how causality aligns when there is no mask: flash bottom-right, SDPA top-left)."""
    flash = "flash" in str(getattr(getattr(module, "config", None), "_attn_implementation", ""))
    return _query_offset(mask, n_q, n_keys, bottom_right=flash)


def allowed_edges(mask, n_q: int, n_keys: int, offset: int, causal: bool, device) -> torch.Tensor:
    """[B|1, 1|H, n_q, n_keys] bool: what the mask the model passed (None = causal, a 2-D padding mask,
    a 4-D bool / additive mask, a flex `BlockMask`) lets each query see; queries start at `offset`."""
    q_pos = torch.arange(offset, offset + n_q, device=device)
    allowed, _, k = _block_mask(mask, q_pos, 0, n_q, n_keys, causal)
    return torch.nn.functional.pad(allowed.to(device), (0, n_keys - k), value=False)


def _block_mask_rows(block_mask: BlockMask, q0: int, q1: int, n_keys: int) -> torch.Tensor:
    """Rows q0:q1 of a flex `BlockMask` as a [B, 1|H, q1 - q0, n_keys] bool mask, from its `mask_mod`
    (transformers' mask functions are plain tensor expressions, so they broadcast over index grids)."""
    batch, heads = block_mask.shape[:2]
    device = block_mask.kv_num_blocks.device
    b = torch.arange(batch, device=device)[:, None, None, None]
    h = torch.arange(heads, device=device)[None, :, None, None]
    q = torch.arange(q0, q1, device=device)[None, None, :, None]
    kv = torch.arange(n_keys, device=device)[None, None, None, :]
    allowed = block_mask.mask_mod(b, h, q, kv)
    return allowed.expand(batch, heads, q1 - q0, n_keys)


def collect(
    context: StreamingContext, module, query, key, attention_mask, scaling=None, is_causal=None
) -> None:
    """Append the statistics of this call's query rows to `context.chunks[module.layer_idx]`.

    Queries go in blocks; within a block, one KV group (the query heads sharing one key head) at a time:
    its scores are formed, masked and soft-maxed in one small buffer that stays in cache, and added into
    the block's head sum. Only the head-averaged block ([B, block, keys]) outlives a group.
    """
    bsz, n_heads, n_q, dim = query.shape
    n_kv, n_keys = key.shape[1], key.shape[2]
    groups = n_heads // n_kv
    scale = scaling if scaling is not None else dim**-0.5
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    offset = query_offset(module, attention_mask, n_q, n_keys)
    role_ids = context.role_ids(n_keys)
    onehot = context.onehot(n_keys)  # [B, Nk, R]
    q_roles = role_ids[:, offset : offset + n_q]
    k32 = key.float()
    q_positions = torch.arange(offset, offset + n_q, device=query.device)
    grid_targets = context.grid_targets(context.roles.role_ids.shape[1]) if context.grids_wanted else []

    keys_per_block = max(1, min(n_keys, offset + n_q))
    block = max(1, int(context.block_bytes // (4 * bsz * groups * keys_per_block)))
    parts = {"mass": [], "entropy": [], "visible": [], "head_mass": [], "head_entropy": [], "grid": {}}
    plain_causal = causal and attention_mask is None  # the common case: no mask tensor, only causality
    if plain_causal:  # visibility straight from the roles: query i sees role r iff some key j <= i has it
        seen_all = onehot.cumsum(1)[:, offset : offset + n_q] > 0
    # Two buffers for all blocks (sized for the largest): one KV group's scores, and the head sum.
    rows = min(block, n_q)
    scores_buf = torch.empty(bsz * groups * rows * keys_per_block, device=query.device)
    both_buf = torch.empty(bsz * 2 * rows * keys_per_block, device=query.device)
    for q0 in range(0, n_q, block):
        q1 = min(n_q, q0 + block)
        nb = q1 - q0
        pos = q_positions[q0:q1]
        qb = (query[:, :, q0:q1].float() * scale).reshape(bsz, n_kv, groups * nb, dim)  # scale folded into q
        if plain_causal:
            k = offset + q1  # keys past the block's last query are invisible to all of it
            # only the last nb key columns hold the causal triangle; everything before is visible to all
            triangle = torch.full((nb, nb), -math.inf, device=query.device).triu_(1)
            allowed, bias, seen = None, None, seen_all[:, q0:q1]
        else:
            allowed, bias, k = _block_mask(attention_mask, pos, q0, q1, n_keys, causal)
            rows_seen = allowed.any(1).expand(bsz, nb, k)
            fully_masked_rows = not bool(rows_seen.any(-1).all())  # padding queries: zeros, not NaN
            seen = torch.matmul(rows_seen.float(), onehot[:, :k]) > 0
        oh = onehot[:, :k]  # [B, K, R]
        both = both_buf[: bsz * 2 * nb * k].view(bsz, 2, nb, k)  # [head sum -> mean | mean log mean]
        head_sum = both[:, 0]
        head_sum.zero_()
        h_mass, h_plogp = [], []
        for g in range(n_kv):
            heads = slice(g * groups, (g + 1) * groups)
            scores = scores_buf[: bsz * groups * nb * k].view(bsz, groups * nb, k)
            torch.matmul(qb[:, g], k32[:, g, :k].transpose(-1, -2), out=scores)
            scores = scores.view(bsz, groups, nb, k)
            if plain_causal:
                scores[..., k - nb :].add_(triangle)
            else:
                if bias is not None:
                    scores.add_(bias[:, heads] if bias.shape[1] > 1 else bias)
                scores.masked_fill_(~(allowed[:, heads] if allowed.shape[1] > 1 else allowed), -math.inf)
            probs = torch.softmax(scores, dim=-1, out=scores)
            if not plain_causal and fully_masked_rows:
                probs.nan_to_num_(0.0)
            head_sum.add_(probs[:, 0] if groups == 1 else probs.sum(1))
            if context.per_head:
                h_mass.append(torch.matmul(probs, oh.unsqueeze(1)))
                h_plogp.append(torch.matmul(torch.special.xlogy(probs, probs), oh.unsqueeze(1)))
        mean = head_sum.mul_(1.0 / n_heads)  # [B, Qb, K]: the paper's head-averaged a_ij
        torch.special.xlogy(mean, mean, out=both[:, 1])
        reduced = torch.matmul(both.view(bsz, 2 * nb, k), oh)  # [mass | sum p log p] per role, one matmul
        mass, plogp = reduced[:, :nb], reduced[:, nb:]
        parts["mass"].append(mass)
        parts["entropy"].append(entropy_from_parts(mass, plogp))
        parts["visible"].append(seen & (q_roles[:, q0:q1] >= 0).unsqueeze(-1))
        if context.per_head:
            h_mass_t, h_plogp_t = torch.cat(h_mass, 1), torch.cat(h_plogp, 1)
            parts["head_mass"].append(h_mass_t)
            parts["head_entropy"].append(entropy_from_parts(h_mass_t, h_plogp_t))
        for g in context.roles.grids:
            sel = [p - offset - q0 for p in grid_targets if offset + q0 <= p < offset + q1]
            if not sel:
                continue
            flat = g.positions.flatten().to(query.device)
            padded = torch.nn.functional.pad(mean[:, sel], (0, max(0, int(flat.max()) + 1 - k)))
            grid_rows = padded[:, :, flat.clamp(min=0)] * (flat >= 0)
            parts["grid"].setdefault(g.image_index, []).append(
                grid_rows.view(bsz, len(sel), *g.positions.shape)
            )
    chunk = {
        "mass": torch.cat(parts["mass"], 1),
        "entropy": torch.cat(parts["entropy"], 1),
        "visible": torch.cat(parts["visible"], 1),
        "head_mass": torch.cat(parts["head_mass"], 2) if context.per_head else None,
        "head_entropy": torch.cat(parts["head_entropy"], 2) if context.per_head else None,
        "grid": {i: torch.cat(v, 1) for i, v in parts["grid"].items()},
    }
    if context.grids_wanted:
        for g in context.roles.grids:  # images whose grid no query of this call looked at: empty rows
            chunk["grid"].setdefault(
                g.image_index, torch.zeros(bsz, 0, *g.positions.shape, device=query.device)
            )
    context.chunks.setdefault(int(module.layer_idx), []).append(chunk)


def attention_rows(
    module, query: torch.Tensor, key: torch.Tensor, attention_mask, positions: Sequence[int], scaling=None
) -> torch.Tensor:
    """Head-averaged attention rows [B, len(positions), Nk] of the given query positions (absolute, within
    this call's keys; the queries' place among the keys from `query_offset`, so a static cache works),
    from the post-RoPE query / key of the real forward: O(heads x Nk) per row."""
    bsz, n_heads, n_q, dim = query.shape
    n_kv, n_keys = key.shape[1], key.shape[2]
    offset = query_offset(module, attention_mask, n_q, n_keys)
    causal = getattr(module, "is_causal", True)
    rows = []
    for p in positions:
        q0 = p - offset
        allowed, bias, k = _block_mask(
            attention_mask, torch.tensor([p], device=query.device), q0, q0 + 1, n_keys, causal
        )
        q = query[:, :, q0 : q0 + 1].float() * (scaling if scaling is not None else dim**-0.5)
        k32 = key[:, :, :k].float().repeat_interleave(n_heads // n_kv, dim=1)
        scores = torch.matmul(q, k32.transpose(-1, -2))  # [B, H, 1, k]
        if bias is not None:
            scores = scores + bias
        scores = scores.masked_fill(~allowed, -math.inf)
        mean = torch.softmax(scores, dim=-1).mean(1)[:, 0]
        rows.append(torch.nn.functional.pad(mean, (0, n_keys - k)))
    return torch.stack(rows, 1)


def mass_by_sdpa(query: torch.Tensor, key: torch.Tensor, onehot: torch.Tensor, attn_mask=None, scale=None):
    """Per-head mass per role via one SDPA call with V = one-hot(role) (padded to 8 columns): [B, H, Nq, R].

    The identity of analyses.md, O(N x roles) memory; kept as an independent check of the block path.
    """
    n_roles = onehot.shape[-1]
    width = max(8, -(-n_roles // 8) * 8)
    v = torch.nn.functional.pad(onehot, (0, width - n_roles)).unsqueeze(1).expand(-1, key.shape[1], -1, -1)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, v.to(query.dtype), attn_mask=attn_mask, is_causal=attn_mask is None, scale=scale
    )
    return out[..., :n_roles]


@torch.no_grad()
def run_native(
    adapter: Adapter,
    prepared: Prepared,
    per_head: bool = False,
    grid_queries: Sequence[int] | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> list[LayerStats]:
    """Statistics of every probed stage's attention (the LLM; LLaVA-Mini's pre-fusion too) from the real
    SDPA / flash forward. Each stage's modules collect into that stage's own context and roles."""
    inputs = {k: v.to(adapter.device) for k, v in prepared.inputs.items()}
    contexts: dict[str, StreamingContext] = {}
    by_module: dict[torch.nn.Module, StreamingContext] = {}
    for stage in adapter.stages:
        roles = prepared.sequence_roles.get(stage, prepared.roles.get(stage))
        if roles is None:
            continue
        contexts[stage] = StreamingContext(
            roles=roles,
            device=adapter.device,
            per_head=per_head,
            grid_queries=grid_queries if stage == "llm" else None,
            block_bytes=block_bytes,
        )
        for module in adapter.attention_modules(stage):
            by_module[module] = contexts[stage]
    with instrumented_attention(adapter), collecting(by_module):
        adapter.forward(inputs)
    if not any(context.chunks for context in contexts.values()):
        raise ProbeError(
            "the native backend saw no attention call: this model does not use transformers' AttentionInterface"
        )
    results: list[LayerStats] = []
    for stage, context in contexts.items():
        if len(context.chunks) != adapter.num_layers(stage):
            raise ProbeError(
                f"the native backend saw {len(context.chunks)} of {adapter.num_layers(stage)} {stage} layers: "
                "some attention modules do not follow the model's attention setting"
            )
        stats = context.layer_stats(stage)
        if stage in prepared.sequence_roles:
            stats = [concat_sequences(s) for s in stats]
        results.extend(stats)
    return results


register_engine("native", run_native, grid_queries=True)

__all__ = [
    "run_native",
    "streaming_attention_forward",
    "collecting",
    "StreamingContext",
    "instrumented_attention",
    "attention_rows",
    "allowed_edges",
    "query_offset",
]
