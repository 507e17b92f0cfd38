"""Cost of interventions against the plain SDPA forward of the same model and inputs (ratios, same run).

    python benchmarks/intervention_overhead.py                    # narrow 8-layer model, ~600 and ~2000 tokens
    python benchmarks/intervention_overhead.py --shape 7b-layers --lengths 600
    python benchmarks/intervention_overhead.py --layers 32 --lengths 600 --methods drop-full,drop-reuse

Model and inputs are `attention_overhead.build`'s (a seeded random LLaVA with LLaVA-v1.5's token layout).
Methods, timed interleaved in one process (minimum of --repeats warm runs):
  plain      the model's own SDPA forward, no hook
  hook       through the intervention hook with no edit (the baseline setting of every ablation)
  mask-all   vision keys cut for every other query in every layer (an edited 4-D mask per layer)
  mask-4     the same in a window of 4 layers (one drop setting of Fig. 5)
  prune      FastV at K = 2 keeping 25% of the image tokens (the ranking row computed in the forward)
  drop-full  an ablation's prefills for one sample: the baseline + one mask-mode drop window of 4 layers
             every 4 layers (8 windows on 32 layers), each a full forward of the prompt
  drop-reuse the same, each window reusing the baseline's KV cache for the positions it leaves unchanged
             (`run.shared_prefix`: the system prompt and the image), as `probe drop` runs it
Peak memory is not measured here (see attention_overhead.py for the method).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def measure(adapter, prepared, repeats: int, device: str, only: list[str] | None = None) -> dict[str, float]:
    """Minimum warm time of every method, timed interleaved."""
    import torch

    from probe.interventions.base import BASELINE
    from probe.interventions.drop import DropVision, parse_layer_windows
    from probe.interventions.prune import Prune
    from probe.interventions.run import forward_logits, run_prepared

    n_layers = adapter.num_layers()
    inputs = {k: v.to(adapter.device) for k, v in prepared.inputs.items()}

    def plain():
        with torch.no_grad():
            adapter.forward(inputs)

    windows = [DropVision(w) for w in parse_layer_windows(n_layers, window=4)]

    def drop_windows(reuse: bool):
        base = run_prepared(adapter, prepared, BASELINE, None, keep_cache=reuse)
        for window in windows:
            run_prepared(adapter, prepared, window, None, baseline_cache=base.prompt_cache)

    methods = {
        "plain": plain,
        "hook": lambda: forward_logits(adapter, prepared, BASELINE),
        "mask-all": lambda: forward_logits(adapter, prepared, DropVision(range(n_layers))),
        "mask-4": lambda: forward_logits(adapter, prepared, DropVision(range(min(4, n_layers)))),
        "prune": lambda: forward_logits(adapter, prepared, Prune(2, 0.25, n_layers)),
        "drop-full": lambda: drop_windows(reuse=False),
        "drop-reuse": lambda: drop_windows(reuse=True),
    }
    methods = {name: fn for name, fn in methods.items() if name == "plain" or not only or name in only}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for name, fn in methods.items():
        start = time.perf_counter()
        fn()  # warm-up
        print(f"  (warm-up {name}: {time.perf_counter() - start:.2f} s)", flush=True)
    for _ in range(repeats):
        for name, fn in methods.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def main() -> None:
    from attention_overhead import build

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="narrow", choices=["narrow", "7b-layers"])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--lengths", default="600,2000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", help="comma list of methods to time (plain is always timed)")
    args = parser.parse_args()
    for length in [int(x) for x in args.lengths.split(",")]:
        adapter, prepared = build(length, args.device, shape=args.shape, layers=args.layers)
        only = args.methods.split(",") if args.methods else None
        times = measure(adapter, prepared, args.repeats, args.device, only)
        n = int(prepared.inputs["input_ids"].shape[-1])
        print(
            f"{args.shape}, {adapter.num_layers()} layers, {n} tokens, {args.device} (min of {args.repeats}; "
            f"drop-*: baseline + one window of 4 layers every 4):"
        )
        for name, value in times.items():
            print(f"  {name:9s} {value:8.3f} s   {value / times['plain']:5.2f}x plain")


if __name__ == "__main__":
    main()
