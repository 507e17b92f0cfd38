"""Which roles a query can see comes from the mask the forward used, in every engine (issue 10, part 5).

A key that the model's mask hides (here the last prompt token, switched off in `attention_mask`) is
invisible to every query although the roles alone say a causal mask would show it: an engine that derived
visibility from the roles would count those targets in `n_targets` with a mass of exactly 0.
"""

from __future__ import annotations

import pytest
import torch

from probe.engines import get_engine
from probe.inputs import make_sample


@pytest.mark.parametrize("backend", ["eager", "native", "nnsight"])
def test_a_key_the_mask_hides_is_visible_to_no_query(tiny_llava, backend):
    sample = make_sample("<image> What is shown?", ["skimage:astronaut"], response="An astronaut.")
    prepared = tiny_llava.adapter.prepare(sample)
    roles = prepared.roles["llm"]
    last = roles.labels.index("last")
    hidden = int((roles.role_ids[0] == last).nonzero()[0, 0])
    prepared.inputs["attention_mask"][0, hidden] = 0  # no query may attend to the last prompt token
    stats = get_engine(backend)(tiny_llava.adapter, prepared)
    n = roles.role_ids.shape[1]
    for layer in stats:
        assert not bool(layer.visible[0, :, last].any()), (backend, layer.layer)
        assert torch.all(layer.mass[0, :, last] == 0)
        # everything else as under a causal mask: the system prefix (BOS) is seen by every query
        assert bool(layer.visible[0, :, roles.labels.index("system")].all())
        response = roles.labels.index("response")
        first_response = int((roles.role_ids[0] == response).nonzero()[0, 0])
        assert layer.visible[0, :, response].tolist() == [i >= first_response for i in range(n)]
