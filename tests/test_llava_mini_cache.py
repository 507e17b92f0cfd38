"""LLaVA-Mini's pre-fusion layers share layer indices 0..N-1 with the LLM's: they must never write into the
LLM's KV cache (issue 10, part 5), or LLM layer k would attend to pre-fusion keys of layer k."""

from __future__ import annotations

import torch

from llava_mini.compat import cache_of
from tests.llava_mini_helpers import mini_model, prompt_ids


def test_the_llm_cache_holds_the_llm_sequence_only():
    model = mini_model(C=2, n_fusion=2)  # as many pre-fusion layers as LLM layers: every index collides
    ids = prompt_ids(4)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 336, 336), use_cache=True)
    cache = cache_of(out)
    # the pre-fusion sequence is 576 global + 4 compressed + 9 text tokens: 589 keys, the LLM's is 13
    assert [cache.get_seq_length(layer) for layer in range(2)] == [ids.shape[1]] * 2 == [13, 13]
