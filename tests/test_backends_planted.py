"""Every backend against a plain reference on a model whose attention is peaked and has a BOS sink.

The reference is written out here: a test-only attention implementation records the post-RoPE query
and key of every LLM layer on the very forward path a backend runs (sdpa for native, eager for the
probability-reading backends), and the paper's Eq. 4-5 are computed from softmax(q k^T / sqrt(d) +
causal mask) in float64 with explicit loops over target tokens. Tolerances are per dtype and backend
(they are the ones the README states).
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

import probe
from probe.inputs import make_sample
from tests.planted import load_planted
from tests.reference import paper_roles, paper_table

PROMPT, IMAGE, RESPONSE = "<image> What is shown?", "skimage:astronaut", "An astronaut in a white suit."
# (mass, entropy) tolerance per backend and dtype; None: that backend is not exact in that dtype
TOLERANCE = {
    ("native", "float32"): (1e-5, 1e-4),
    ("eager", "float32"): (1e-5, 1e-4),
    ("nnsight", "float32"): (1e-5, 1e-4),
    ("transformer-lens", "float32"): (1e-5, 1e-4),
    ("native", "bfloat16"): (1e-5, 1e-4),
    ("eager", "bfloat16"): (1e-5, 1e-4),
    ("nnsight", "bfloat16"): (1e-5, 1e-4),
}
PATH_OF = {"native": "sdpa", "eager": "eager", "nnsight": "eager", "transformer-lens": "eager"}
_RECORDED: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}


def _recorder(inner):
    def forward(module, query, key, value, attention_mask, scaling=None, **kwargs):
        _RECORDED[module.layer_idx] = (query.detach().double(), key.detach().double(), scaling)
        return inner(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    return forward


AttentionInterface.register("test_record_sdpa", _recorder(sdpa_attention_forward))
AttentionMaskInterface.register("test_record_sdpa", sdpa_mask)
AttentionInterface.register("test_record_eager", _recorder(eager_attention_forward))
AttentionMaskInterface.register("test_record_eager", eager_mask)


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def planted(request, probe_home):
    return request.param, load_planted(request.param)


def reference_paper_table(loaded, path: str) -> dict:
    """{(layer, tgt, src): (mass, entropy, n_targets)} from q, k recorded on `path` (sdpa / eager)."""
    model = loaded.model
    sample = make_sample(PROMPT, [IMAGE], response=RESPONSE)
    prepared = loaded.adapter.prepare(sample)
    _RECORDED.clear()
    model.set_attn_implementation({"text_config": f"test_record_{path}"})
    try:
        with torch.no_grad():
            model(**prepared.inputs)
    finally:
        model.set_attn_implementation({"text_config": "sdpa"})
    role = paper_roles(
        prepared.inputs["input_ids"][0].numpy(), model.config.image_token_id, prepared.prompt_length
    )
    n = len(role)
    causal = torch.full((n, n), -math.inf, dtype=torch.float64).triu(1)
    result = {}
    for layer in sorted(_RECORDED):
        q, k, scaling = _RECORDED[layer]
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        probs = torch.softmax(q[0] @ k[0].transpose(-1, -2) * scaling + causal, dim=-1)
        for (tgt, src), value in paper_table(probs.mean(0).numpy(), role).items():  # heads averaged first
            result[(layer, tgt, src)] = value
    return result


def test_planted_model_attends_like_a_trained_one(planted):
    dtype, loaded = planted
    table = probe.attention(loaded, image=IMAGE, prompt=PROMPT, response=RESPONSE, backend="eager")
    fine = table[(table["grouping"] == "fine") & table["head"].isna() & (table["tgt"] == "response")]
    sink = fine[fine["src"] == "system"].set_index("layer")["mass"]  # the BOS token alone
    entropy_vision = fine[fine["src"] == "image:0"]["entropy"]
    assert (sink > 0.05).all(), sink  # one token of ~600 takes > 30x its uniform share in every layer
    assert (entropy_vision < 0.9 * math.log(576)).all(), entropy_vision  # random tiny-llava: > 0.99 x log 576


@pytest.mark.parametrize("backend", ["native", "eager", "nnsight", "transformer-lens"])
def test_backend_matches_plain_reference(planted, backend):
    dtype, loaded = planted
    if (backend, dtype) not in TOLERANCE:
        pytest.skip(f"{backend} reads probabilities rounded to {dtype}: exact in float32 only (README)")
    mass_tol, entropy_tol = TOLERANCE[(backend, dtype)]
    expected = reference_paper_table(loaded, PATH_OF[backend])
    table = probe.attention(loaded, image=IMAGE, prompt=PROMPT, response=RESPONSE, backend=backend)
    rows = table[(table["grouping"] == "paper") & table["head"].isna()]
    got = {(r.layer, r.tgt, r.src): (r.mass, r.entropy, r.n_targets) for r in rows.itertuples()}
    assert set(got) == set(expected)
    for key, (mass, entropy, n) in expected.items():
        assert got[key][2] == n, key
        assert got[key][0] == pytest.approx(mass, abs=mass_tol), key
        assert got[key][1] == pytest.approx(entropy, abs=entropy_tol), key
