"""Cost of each statistics backend against the un-instrumented SDPA forward of the same model and inputs.

    python benchmarks/attention_overhead.py                   # lengths ~600, ~2000, ~8000
    python benchmarks/attention_overhead.py --quick           # ~600 and ~2000, one timed repeat
    python benchmarks/attention_overhead.py --shape narrow    # the worst case: a 1024-wide model

One model (a seeded random LLaVA: small CLIP tower at 336 px / patch 14 = 576 tokens per image, and a
Llama language model with LLaVA-v1.5-7B's layer shape: 2 of its layers in fp32 on CPU, all 32 in bf16 on
CUDA), one set of inputs per length (images + long text),
and for every method (baseline SDPA forward, native streaming, eager output_attentions, nnsight,
transformer-lens) a fresh subprocess that builds the same model, runs the method once cold (peak memory)
and then `--repeats` times warm (time: the minimum). Peak memory:
  * CUDA: torch.cuda.max_memory_allocated() during the call, minus what was allocated before it;
  * CPU: the process resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs right
    before the call) minus the RSS before the call, i.e. what the call itself added; the total process
    peak is printed too. (tracemalloc does not see torch's allocations.)
Statistic errors are max |x - eager| over mass and entropy of every layer, where eager fits.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally; never reach for the hub
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METHODS = ["baseline", "native", "eager", "nnsight", "transformer-lens"]
N_IMAGES = {600: 1, 2000: 3, 8000: 12}
IMAGE_TOKENS = 576


# Language-model shapes. What decides the overhead is the share of attention in a layer's time (it grows
# with tokens / width), not the depth: every layer pays its own statistics. So `7b-layers` keeps
# LLaVA-v1.5-7B's Vicuna layers exactly (width 4096, 32 heads of 128, MLP 11008) with fewer of them
# (all 32 on CUDA), and a small vocabulary so the LM head does not pad the baseline (in the real 7B
# model it is ~2 % of the forward). `narrow` is the worst case for the ratio: width 1024 (8 heads of
# 128, grouped-query 8 -> 4), where attention dominates the forward at thousands of tokens.
SHAPES = {
    "7b-layers": dict(
        hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32
    ),
    "narrow": dict(hidden_size=1024, intermediate_size=2816, num_attention_heads=8, num_key_value_heads=4),
}
DEFAULT_LAYERS = {
    ("cuda", "7b-layers"): 32,
    ("cpu", "7b-layers"): 2,
    ("cuda", "narrow"): 8,
    ("cpu", "narrow"): 8,
}
VOCAB, IMAGE_TOKEN = 1024, 1000


def model_config(device: str, shape: str = "7b-layers", layers: int | None = None):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=336,
        patch_size=14,
    )
    text = LlamaConfig(
        vocab_size=VOCAB,
        num_hidden_layers=layers or DEFAULT_LAYERS[(device, shape)],
        max_position_embeddings=16384,
        **SHAPES[shape],
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN, vision_feature_layer=-2
    )


def build(
    length: int,
    device: str,
    local_dir: str | None = None,
    shape: str = "7b-layers",
    layers: int | None = None,
):
    """(adapter, prepared) for a sequence of about `length` tokens (model loaded back from `local_dir`
    after save_pretrained there, when given)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from probe.adapters.base import Prepared
    from probe.adapters.llava import LlavaAdapter
    from probe.roles import ImageGrid, StageRoles, spans_to_role_ids

    config = model_config(device, shape, layers)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    config.text_config._attn_implementation = "sdpa"
    config.vision_config._attn_implementation = "sdpa"
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(dtype).eval()
    n_images = N_IMAGES.get(length, max(1, round(length * 0.86 / IMAGE_TOKENS)))
    n_text = max(8, length - n_images * IMAGE_TOKENS)
    system, response = 5, min(32, n_text // 4)
    chunk = (n_text - system - response) // n_images
    g = torch.Generator().manual_seed(1)
    ids, spans, grids = (
        list(torch.randint(3, IMAGE_TOKEN - 8, (system,), generator=g).tolist()),
        [("system", 0, system)],
        [],
    )
    for k in range(n_images):
        start = len(ids)
        ids += [config.image_token_index] * IMAGE_TOKENS
        spans.append((f"image:{k}", start, len(ids)))
        grids.append(ImageGrid(k, torch.arange(start, len(ids)).view(24, 24)))
        start = len(ids)
        ids += torch.randint(3, IMAGE_TOKEN - 8, (chunk,), generator=g).tolist()
        spans.append(("instruction", start, len(ids)))
    start = len(ids)
    ids += torch.randint(3, IMAGE_TOKEN - 8, (response,), generator=g).tolist()
    spans.append(("response", start, len(ids)))
    labels = ["system"] + [f"image:{k}" for k in range(n_images)] + ["instruction", "response"]
    roles = StageRoles(labels, spans_to_role_ids(len(ids), spans, labels).unsqueeze(0), grids)
    pixels = torch.randn(n_images, 3, 336, 336, generator=g).to(dtype)
    inputs = {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "pixel_values": pixels,
    }
    from probe.builtin.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()  # offline
    if local_dir is not None:
        # As a user's local checkpoint: TransformerLens' bridge re-loads the tokenizer (and reads the
        # config) by name, which for a config-built model would be a hub look-up. Save model and
        # tokenizer with save_pretrained and load both back from the directory.
        from transformers import AutoTokenizer

        model.save_pretrained(local_dir)
        tokenizer.save_pretrained(local_dir)
        del model
        model = LlavaForConditionalGeneration.from_pretrained(
            local_dir, dtype=dtype, attn_implementation="sdpa", device_map=device
        ).eval()
        tokenizer = AutoTokenizer.from_pretrained(local_dir)
    processor = SimpleNamespace(tokenizer=tokenizer, chat_template="")
    adapter = LlavaAdapter(model, processor)
    return adapter, Prepared(inputs=inputs, roles={"llm": roles}, prompt_length=start, response_ids=[])


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def worker(
    method: str, length: int, device: str, repeats: int, out: str, shape: str, layers: int | None
) -> None:
    with tempfile.TemporaryDirectory() as local_dir:
        adapter, prepared = build(
            length, device, local_dir if method == "transformer-lens" else None, shape, layers
        )
        _measure(adapter, prepared, method, device, repeats, out)


def _measure(adapter, prepared, method: str, device: str, repeats: int, out: str) -> None:
    import torch

    from probe.engines import get_engine

    torch.set_grad_enabled(False)
    if method == "baseline":
        inputs = {k: v.to(device) for k, v in prepared.inputs.items()}

        def call():
            return adapter.forward(inputs)
    else:
        engine = get_engine(method)

        def call():
            return engine(adapter, prepared)

    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = call()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
        total = torch.cuda.max_memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark to the current RSS
        before = _rss_kb("VmRSS")
        result = call()
        extra = (_rss_kb("VmHWM") - before) * 1024
        total = _rss_kb("VmHWM") * 1024
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        call()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    stats = None
    if method != "baseline":
        stats = [{"mass": s.mass, "entropy": s.entropy} for s in result]
    torch.save(
        {
            "time": min(times),
            "extra": extra,
            "total": total,
            "stats": stats,
            "n_tokens": int(prepared.inputs["input_ids"].shape[-1]),
        },
        out,
    )


def eager_fits(length: int, device: str, max_eager_tokens: int) -> bool:
    return length <= max_eager_tokens


def stat_error(a, b) -> float:
    import torch

    err = 0.0
    for x, y in zip(a, b, strict=True):
        for key in ("mass", "entropy"):
            err = max(err, torch.nan_to_num((x[key] - y[key]).abs(), nan=0.0).max().item())
    return err


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="lengths ~600 and ~2000, one timed repeat")
    parser.add_argument("--lengths", type=int, nargs="*", help="target sequence lengths")
    parser.add_argument("--methods", nargs="*", default=METHODS)
    parser.add_argument("--repeats", type=int, help="timed warm repeats per method (min is reported)")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--shape", choices=sorted(SHAPES), default="7b-layers", help="language-model layer shape (see SHAPES)"
    )
    parser.add_argument(
        "--layers", type=int, help="language-model depth (default: 32 on CUDA, 2 on CPU for 7b-layers)"
    )
    parser.add_argument("--max-eager-tokens", type=int, help="skip eager/nnsight/transformer-lens above this")
    parser.add_argument(
        "--worker", nargs=4, metavar=("METHOD", "LENGTH", "REPEATS", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.worker:
        method, length, repeats, out = args.worker
        worker(method, int(length), device, int(repeats), out, args.shape, args.layers)
        return
    lengths = args.lengths or ([600, 2000] if args.quick else [600, 2000, 8000])
    repeats = args.repeats or (1 if args.quick else 2)
    # eager-style backends hold heads x N^2 fp32 several times per layer; 23 GB shared CPU box: <= 4096
    max_eager = args.max_eager_tokens or (16384 if device == "cuda" else 4096)
    config = model_config(device, args.shape, args.layers).text_config
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} repeats={repeats} "
        f"shape={args.shape}: {config.num_hidden_layers} layers x width {config.hidden_size}, "
        f"{config.num_attention_heads} heads ({config.num_key_value_heads} KV), MLP {config.intermediate_size}"
    )
    header = f"| {'tokens':>6} | {'method':<16} | {'time s':>7} | {'time x':>6} | {'peak extra MB':>13} | {'mem x':>6} | {'process peak MB':>15} | {'peak x':>6} | {'max err vs eager':>16} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for length in lengths:
            results = {}
            for method in args.methods:
                if method in ("eager", "nnsight", "transformer-lens") and not eager_fits(
                    length, device, max_eager
                ):
                    results[method] = None
                    continue
                out = os.path.join(tmp, f"{method}-{length}.pt")
                cmd = [
                    sys.executable,
                    __file__,
                    "--device",
                    device,
                    "--shape",
                    args.shape,
                    *(["--layers", str(args.layers)] if args.layers else []),
                    "--worker",
                    method,
                    str(length),
                    str(repeats),
                    out,
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{method} at {length} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                    results[method] = None
                    continue
                results[method] = torch.load(out, weights_only=False)
            base = results.get("baseline")
            eager = results.get("eager")
            for method in args.methods:
                r = results.get(method)
                n = base["n_tokens"] if base else length
                if r is None:
                    line = f"| {n:>6} | {method:<16} | {'skipped (eager-style O(N^2) above --max-eager-tokens) or failed':>82} |"
                else:
                    tx = r["time"] / base["time"] if base else float("nan")
                    mx = max(r["extra"], 1) / max(base["extra"], 1) if base else float("nan")
                    px = r["total"] / base["total"] if base else float("nan")
                    err = (
                        stat_error(r["stats"], eager["stats"])
                        if (eager and r["stats"] and method != "eager")
                        else None
                    )
                    err_s = "-" if err is None else f"{err:.1e}"
                    line = (
                        f"| {r['n_tokens']:>6} | {method:<16} | {r['time']:>7.2f} | {tx:>6.2f} | "
                        f"{r['extra'] / 2**20:>13.0f} | {mx:>6.2f} | {r['total'] / 2**20:>15.0f} | {px:>6.2f} | {err_s:>16} |"
                    )
                print(line, flush=True)
                rows.append(line)


if __name__ == "__main__":
    main()
