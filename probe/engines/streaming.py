"""Native streaming engine: statistics computed inside the model's real SDPA / flash forward.

A function registered with `transformers.AttentionInterface` replaces the language model's attention
implementation only (the vision tower keeps its own). It calls the model's own attention function
(`sdpa`, or the flash implementation the model was using) for the output, unchanged, and on the side
computes `LayerStats` rows from the post-RoPE query and key it receives:

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
* the mask is the one the model passes (4D bool / additive float, 2D padding for flash, or None =
  causal), so padding (role id -1, masked by the model) is handled exactly as the forward does.
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
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from probe.adapters.base import Adapter, Prepared
from probe.engines import register_engine
from probe.errors import ProbeError
from probe.intermediate import LayerStats, concat_sequences
from probe.roles import StageRoles

NATIVE = "probe_native"
DEFAULT_BLOCK_BYTES = (
    4 * 2**20
)  # fp32 scores of one query block for one KV group: small enough to stay in cache


@dataclass
class StreamingContext:
    """What the attention function needs to know about the current forward, and where rows go."""

    roles: StageRoles
    device: torch.device
    inner: Callable = sdpa_attention_forward
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
def collecting(
    context: StreamingContext | None = None,
    by_module: dict[torch.nn.Module, StreamingContext] | None = None,
) -> Iterator[StreamingContext | None]:
    """Collect into `context` from every attention call, or into `by_module[module]` per stage."""
    if by_module is not None:
        table = {id(module): ctx for module, ctx in by_module.items()}
        token = _ACTIVE.set(lambda module: table.get(id(module)))
    else:
        token = _ACTIVE.set(lambda module: context)
    try:
        yield context
    finally:
        _ACTIVE.reset(token)


def streaming_attention_forward(module, query, key, value, attention_mask, *args, **kwargs):
    """The model's own attention for the output; statistics on the side when a context is active."""
    route = _ACTIVE.get()
    context = route(module) if route is not None else None
    inner = context.inner if context is not None else sdpa_attention_forward
    if context is not None and context.edit is not None:
        attention_mask, inner = context.edit(module, query, key, attention_mask, inner, **kwargs)
    output = inner(module, query, key, value, attention_mask, *args, **kwargs)
    if context is not None and context.observe:
        if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
            raise ProbeError(
                "the native backend does not support attention soft-capping / sinks; use --backend eager"
            )
        with torch.no_grad():
            collect(
                context, module, query, key, attention_mask, kwargs.get("scaling"), kwargs.get("is_causal")
            )
    return output


# --- registration -------------------------------------------------------------------------------------
_REGISTERED: dict[str, str] = {}


def implementation_for(previous: str | None) -> tuple[str, Callable]:
    """Name of the streaming implementation wrapping `previous` (sdpa or a flash variant), and its inner fn.

    The mask function registered with it is the wrapped implementation's own, so the forward sees exactly
    the mask (and therefore computes exactly the output) it would without instrumentation.
    """
    if previous in (None, "sdpa", "eager") or previous not in ALL_ATTENTION_FUNCTIONS:
        base, inner, mask = "sdpa", sdpa_attention_forward, sdpa_mask
    else:
        base, inner = previous, ALL_ATTENTION_FUNCTIONS[previous]
        mask = ALL_MASK_ATTENTION_FUNCTIONS.get(previous, sdpa_mask)
    name = NATIVE if base == "sdpa" else f"{NATIVE}_{base}"
    if name not in _REGISTERED:
        AttentionInterface.register(name, streaming_attention_forward)
        AttentionMaskInterface.register(name, mask)
        _REGISTERED[name] = base
    return name, inner


# --- the statistics -----------------------------------------------------------------------------------
def _block_mask(mask, q_pos: torch.Tensor, q0: int, q1: int, n_keys: int, causal: bool):
    """(allowed [B|1, 1|H, Qb, K] bool, additive bias or None, K = keys to look at) for query rows q0:q1."""
    if mask is None or mask.dim() == 2:
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
    rows = mask[:, :, q0:q1, :]
    if rows.dtype == torch.bool:
        allowed, bias = rows, None
    else:
        allowed, bias = rows > torch.finfo(rows.dtype).min / 2, rows
    seen = allowed.flatten(0, 2).any(0).nonzero()
    k = int(seen[-1]) + 1 if len(seen) else 1
    return allowed[..., :k], (bias[..., :k].float() if bias is not None else None), k


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
    offset = n_keys - n_q  # KV cache: the new queries are the last positions
    role_ids = context.role_ids(n_keys)
    onehot = context.onehot(n_keys)  # [B, Nk, R]
    q_roles = role_ids[:, offset:]
    k32 = key.float()
    q_positions = torch.arange(offset, n_keys, device=query.device)
    grid_targets = context.grid_targets(context.roles.role_ids.shape[1]) if context.grids_wanted else []

    keys_per_block = max(1, min(n_keys, offset + n_q))
    block = max(1, int(context.block_bytes // (4 * bsz * groups * keys_per_block)))
    parts = {"mass": [], "entropy": [], "visible": [], "head_mass": [], "head_entropy": [], "grid": {}}
    plain_causal = causal and attention_mask is None  # the common case: no mask tensor, only causality
    if plain_causal:  # visibility straight from the roles: query i sees role r iff some key j <= i has it
        seen_all = onehot.cumsum(1)[:, offset:] > 0
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
        parts["entropy"].append(_entropy(mass, plogp))
        parts["visible"].append(seen & (q_roles[:, q0:q1] >= 0).unsqueeze(-1))
        if context.per_head:
            h_mass_t, h_plogp_t = torch.cat(h_mass, 1), torch.cat(h_plogp, 1)
            parts["head_mass"].append(h_mass_t)
            parts["head_entropy"].append(_entropy(h_mass_t, h_plogp_t))
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


def _entropy(mass: torch.Tensor, plogp: torch.Tensor) -> torch.Tensor:
    """H_r = log m_r - (1 / m_r) sum_{j in r} p_j log p_j (nats), NaN where m_r == 0 (as the eager reference)."""
    mass, plogp = mass.double(), plogp.double()
    out = torch.where(mass > 0, mass.clamp_min(1e-300).log() - plogp / mass.clamp_min(1e-300), math.nan)
    return out.float()


def attention_rows(
    module, query: torch.Tensor, key: torch.Tensor, attention_mask, positions: Sequence[int], scaling=None
) -> torch.Tensor:
    """Head-averaged attention rows [B, len(positions), Nk] of the given query positions (absolute, within
    this call's keys), from the post-RoPE query / key of the real forward: O(heads x Nk) per row."""
    bsz, n_heads, n_q, dim = query.shape
    n_kv, n_keys = key.shape[1], key.shape[2]
    offset = n_keys - n_q
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
    name, inner = implementation_for(adapter.current_attention())
    contexts: dict[str, StreamingContext] = {}
    by_module: dict[torch.nn.Module, StreamingContext] = {}
    for stage in adapter.stages:
        roles = prepared.sequence_roles.get(stage, prepared.roles.get(stage))
        if roles is None:
            continue
        contexts[stage] = StreamingContext(
            roles=roles,
            device=adapter.device,
            inner=inner,
            per_head=per_head,
            grid_queries=grid_queries if stage == "llm" else None,
            block_bytes=block_bytes,
        )
        for module in adapter.attention_modules(stage):
            by_module[module] = contexts[stage]
    with adapter.attention_implementation(name), collecting(by_module=by_module):
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
    "implementation_for",
    "attention_rows",
]
