"""The `probe` command line. Each command parses options and calls one library function."""

from __future__ import annotations

import re
import signal
import sys
from functools import partial
from pathlib import Path

import click

from probe.errors import ProbeError

# Only click and probe.errors are imported here: torch and transformers load inside the commands that
# need them, so `probe --help` and `probe --version` answer at once.


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="probe-vlm", prog_name="probe", message="%(prog)s %(version)s")
def cli() -> None:
    """Interpretability and ablation toolkit for efficient vision-language models."""


ATTENTION_CHOICES = ["sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"]

TEMPLATE_OPTION = click.option(
    "--template",
    "template_spec",
    metavar="model|llava_v1|FILE",
    help="The conversation the prompt is rendered in: llava_v1 (LLaVA-v1.5's own, with its system prompt; "
    "the default for LLaVA-v1.5), model (the model's chat template; the default for LLaVA-NeXT, LLaVA-Mini "
    "and probe's built-in models) or a Jinja chat template file.",
)


def _quiet_libraries() -> None:
    """Our own progress bars are the ones that matter: hide transformers' weight-loading bar."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@cli.command("models")
def models_command() -> None:
    """List the model zoo's short names."""
    from probe.zoo import REGISTRY

    for spec in REGISTRY.values():
        click.echo(f"{spec.name:24s} {spec.family:12s} {spec.description}")


def _default_out(model: str, command: str = "attention") -> Path:
    """runs/<model>-<command>: the run directory a command uses when --out is not given."""
    return Path("runs") / (re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_") + f"-{command}")


DATASET_SOURCE_OPTIONS = [
    click.option(
        "--answers",
        type=click.Path(path_type=Path),
        help="LLaVA question file: gold answers by question id (JSONL / JSON, e.g. GQA's questions file).",
    ),
    click.option(
        "--image-folder",
        type=click.Path(path_type=Path),
        help="Where a LLaVA question file's (or a path column's) images are [default: next to the dataset].",
    ),
    click.option("--image-column", help="save_to_disk dataset: image (or image path) column [image]."),
    click.option("--question-column", help="save_to_disk dataset: question column [question]."),
    click.option("--answer-column", help="save_to_disk dataset: gold answer column [answer, if present]."),
    click.option(
        "--choices-column",
        help="save_to_disk dataset, multiple choice: one list column, or comma-separated option columns (A,B,C,D).",
    ),
    click.option("--split", "dataset_split", help="save_to_disk DatasetDict: the split to read."),
]


def _dataset_source_options(command):
    """Options that say how to read a --dataset that is not probe's JSONL (probe.dataset_formats)."""
    for option in reversed(DATASET_SOURCE_OPTIONS):
        command = option(command)
    return command


def _dataset_source(options: dict):
    """Pop the dataset-source options out of a command's keyword arguments into a `DatasetSource`."""
    from probe.dataset_formats import DatasetSource

    choices = options.pop("choices_column")
    return DatasetSource(
        answers=options.pop("answers"),
        image_folder=options.pop("image_folder"),
        image_column=options.pop("image_column"),
        question_column=options.pop("question_column"),
        answer_column=options.pop("answer_column"),
        choices_columns=[c.strip() for c in choices.split(",") if c.strip()] if choices else None,
        split=options.pop("dataset_split"),
    )


# Per-sample commands: shard the samples over Ray workers (probe.executors); the tables equal a local run's.
EXECUTOR_OPTION = click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: shard the samples over Ray workers (one GPU each on CUDA), merged into the same tables.",
)
ADDRESS_OPTION = click.option(
    "--address", help="Ray cluster address for --executor ray (default: local Ray)."
)


@cli.command("attention")
@click.option(
    "--model", "model_name", required=True, help="Zoo name (see `probe models`), hub id or local directory."
)
@click.option(
    "--image", "images", multiple=True, help="Image file or skimage:NAME; repeat for several images."
)
@click.option("--prompt", help="Prompt with one <image> slot per image, e.g. '<image> What is shown?'.")
@click.option("--response", help="Teacher-forced response whose tokens form the response role.")
@click.option(
    "--generate", type=click.IntRange(min=1), help="Generate up to N response tokens (greedy) instead."
)
@click.option(
    "--dataset", type=click.Path(path_type=Path), help="JSONL file: one {image(s), prompt, answer?} per line."
)
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N dataset samples.")
@_dataset_source_options
@click.option(
    "--response-from",
    type=click.Choice(["response", "answer", "none"]),
    help="Which key of each dataset line to teacher-force as the response [default: response, where a "
    "line has one]: 'answer' forces the dataset's answers, 'none' probes the prompts only.",
)
@click.option(
    "--backend",
    default="native",
    show_default=True,
    help="Statistics engine: native (streamed from the real SDPA/flash forward), eager (reference), nnsight, "
    "transformer-lens.",
)
@click.option(
    "--per-head", is_flag=True, help="Also write per-head rows (not the paper's quantity for entropy)."
)
@click.option(
    "--grid-queries",
    "grid_spec",
    metavar="SPEC",
    help="Also write the attention of these query tokens onto each image's patch grid (grid.parquet, grid.png; "
    "paper Fig. 4): comma list of token positions (negative = from the end, -1 = last) and/or roles "
    "'instruction', 'last' (the last prompt token), 'response'. Backends native and eager.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), help="Run directory [default: runs/<model>-attention]."
)
@click.option("--overwrite", is_flag=True, help="Replace a finished or different run in --out.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@click.option(
    "--dtype",
    default="auto",
    show_default=True,
    help="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16.",
)
@click.option(
    "--attn",
    type=click.Choice(ATTENTION_CHOICES),
    help="The language model's attention implementation [default: sdpa]; native statistics run inside it.",
)
@TEMPLATE_OPTION
@click.option("--seed", default=0, show_default=True, type=int)
@EXECUTOR_OPTION
@ADDRESS_OPTION
def attention_command(
    model_name,
    images,
    prompt,
    response,
    generate,
    dataset,
    limit,
    response_from,
    backend,
    per_head,
    grid_spec,
    out,
    overwrite,
    device,
    dtype,
    attn,
    template_spec,
    seed,
    executor,
    address,
    **source_options,
) -> None:
    """Per-layer attention mass and entropy on vision / instruction / response tokens (paper Figs. 2-3)."""
    from probe.attention_job import AttentionOptions, check_grid_options, run_attention
    from probe.engines import get_engine
    from probe.grid import parse_grid_queries
    from probe.inputs import make_sample, read_dataset
    from probe.provenance import command_line
    from probe.results import check_output_dir
    from probe.templates import parse_template
    from probe.zoo import load

    out = check_output_dir(out or _default_out(model_name))
    template = parse_template(template_spec)
    if response and generate:
        raise ProbeError("use either --response or --generate, not both")
    if response_from and dataset is None:
        raise ProbeError(
            "--response-from picks a key of each --dataset line; without --dataset use --response"
        )
    if response_from and generate:
        raise ProbeError("use either --response-from or --generate, not both")
    grid_queries = parse_grid_queries(grid_spec) if grid_spec is not None else None
    source = _dataset_source(source_options)
    if dataset is not None:
        if images or prompt:
            raise ProbeError("use either --dataset or --image/--prompt, not both")
        response_from = response_from or "response"
        samples = read_dataset(dataset, response_from, source, limit=limit)
    else:
        if source != type(source)():
            raise ProbeError("--answers, --image-folder and the column options describe a --dataset")
        if not images or prompt is None:
            raise ProbeError("give --image and --prompt (or --dataset)")
        samples = [make_sample(prompt, list(images), response=response)]
    get_engine(backend)
    options = AttentionOptions(
        backend=backend,
        per_head=per_head,
        generate=generate,
        seed=seed,
        grid_queries=grid_queries,
        response_from=response_from,
    )
    check_grid_options(options, samples)  # before the model loads
    _quiet_libraries()
    loaded = load(model_name, device=device, dtype=dtype, attn=attn, template=template)
    table = run_attention(
        loaded,
        samples,
        out,
        options,
        overwrite=overwrite,
        dataset=dataset,
        limit=limit,
        command=command_line(),
        executor=executor,
        reload=partial(load, model_name, device=device, dtype=dtype, attn=attn, template=template),
        address=address,
    )
    layers = ", ".join(
        f"{n} {stage}" for stage, n in table.groupby("stage", sort=False)["layer"].nunique().items()
    )
    click.echo(f"{out}/: {len(table)} rows ({len(samples)} sample(s); layers: {layers})")
    if grid_queries:
        click.echo(f"attention onto the image grid: {out}/grid.parquet, {out}/grid.png")


@cli.command("compression-map")
@click.option(
    "--model", "model_name", required=True, help="A LLaVA-Mini model (zoo name, hub id or directory)."
)
@click.option("--image", required=True, help="Image file, skimage:NAME, video file or folder of frames.")
@click.option("--prompt", default="<image> Describe the image.", show_default=True)
@click.option("--frame", default=0, show_default=True, type=click.IntRange(min=0), help="Frame of a video.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG to write.")
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
def compression_map_command(model_name, image, prompt, frame, out, device, dtype) -> None:
    """Where LLaVA-Mini's compression queries look on the 24 x 24 grid (paper Fig. 12)."""
    from analyses.compression_map import save_compression_maps
    from probe.inputs import make_sample
    from probe.results import check_output_file
    from probe.zoo import load

    out = check_output_file(out)
    sample = make_sample(prompt, [image])
    _quiet_libraries()
    loaded = load(model_name, device=device, dtype=dtype)
    if not hasattr(loaded.adapter, "compression_map"):
        raise ProbeError(f"'{model_name}' has no compressor: compression maps need a LLaVA-Mini model")
    loaded.adapter.validate(sample)
    weights = save_compression_maps(loaded.adapter, sample, out, frame=frame)
    click.echo(
        f"wrote {out} ({weights.shape[-3]} queries over a {weights.shape[-2]} x {weights.shape[-1]} grid)"
    )


# --- model organisms (issue 5) -------------------------------------------------------------------
@cli.group("organism")
def organism_group() -> None:
    """Model organisms: small LLaVA models trained on synthetic VQA that really use the image."""


@organism_group.command("data")
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Directory for <split>.jsonl + images/."
)
@click.option("--n-train", default=6000, show_default=True, type=click.IntRange(min=0))
@click.option("--n-val", default=200, show_default=True, type=click.IntRange(min=0))
@click.option("--n-test", default=300, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--n-heldout",
    default=300,
    show_default=True,
    type=click.IntRange(min=0),
    help="Images with colour x shape pairs never seen in training.",
)
@click.option("--seed", default=0, show_default=True, type=int)
def organism_data_command(out, n_train, n_val, n_test, n_heldout, seed) -> None:
    """Write the seeded synthetic VQA splits (PNG + `--dataset` JSONL)."""
    from probe.organism.data import write_dataset
    from probe.results import check_output_dir

    out = check_output_dir(out)
    sizes = {"train": n_train, "val": n_val, "test": n_test, "heldout": n_heldout}
    paths = write_dataset(out, seed=seed, sizes=sizes, progress=True)
    for split, path in paths.items():
        click.echo(f"{split}: {path}")


@organism_group.command("train")
@click.option(
    "--model",
    "model_name",
    default="organism-llava",
    show_default=True,
    help="organism-llava, organism-llava-mini (needs the llava_mini package) or organism-llava-instruct.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Run directory (rerun to resume)."
)
@click.option("--seed", default=0, show_default=True, type=int)
def organism_train_command(model_name, out, seed) -> None:
    """Train an organism LLaVA-style; killing and rerunning the command resumes from the last checkpoint."""
    from probe.organism.train import default_config, train
    from probe.results import check_output_dir

    out = check_output_dir(out)
    _quiet_libraries()
    config = default_config(model_name)
    config.seed = seed
    final = train(model_name, out, config)
    click.echo(f"trained weights: {final}")


@organism_group.command("eval")
@click.option(
    "--model", "model_name", default="organism-llava", show_default=True, help="Zoo name or directory."
)
@click.option(
    "--split",
    type=click.Choice(["train", "val", "test", "heldout"]),
    default="test",
    show_default=True,
    help="Split regenerated deterministically into $PROBE_HOME (ignored with --dataset).",
)
@click.option(
    "--dataset", type=click.Path(path_type=Path), help="A JSONL written by `probe organism data` instead."
)
@click.option(
    "--blank-image", is_flag=True, help="Replace every image by a blank one (should fall to chance)."
)
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate only the first N questions.")
@click.option("--seed", default=0, show_default=True, type=int, help="Data seed of the split.")
@click.option("--out", type=click.Path(path_type=Path), help="Write per-question predictions to this CSV.")
@click.option("--device", default="cpu", show_default=True)
def organism_eval_command(model_name, split, dataset, blank_image, limit, seed, out, device) -> None:
    """Exact-match accuracy of the generated first word, per question type, against chance."""
    from probe.inputs import read_dataset
    from probe.organism.data import ensure_split
    from probe.organism.evaluate import chance, evaluate, summarise
    from probe.results import atomic_write, check_output_file
    from probe.zoo import load

    if out is not None:
        out = check_output_file(out)
    path = dataset or ensure_split(split, seed=seed)
    samples = read_dataset(path)[:limit]
    _quiet_libraries()
    loaded = load(model_name, device=device, dtype="float32")
    results = evaluate(loaded, samples, blank=blank_image)
    if out is not None:
        atomic_write(out, lambda p: results.to_csv(p, index=False))
    table = summarise(results, chance(samples))
    label = "blank-image accuracy" if blank_image else "accuracy"
    click.echo(
        f"{model_name} on {path} ({len(samples)} questions){' with blank images' if blank_image else ''}"
    )
    click.echo(f"{'type':16s} {'n':>5s} {label:>22s} {'chance(uniform)':>16s} {'chance(majority)':>17s}")
    for row in table.itertuples():
        click.echo(f"{row.type:16s} {row.n:5d} {row.accuracy:22.3f} {row.uniform:16.3f} {row.majority:17.3f}")


@organism_group.command("ship")
@click.option(
    "--from", "source", type=click.Path(path_type=Path), required=True, help="A training run directory."
)
@click.option("--name", default="organism-llava", show_default=True)
def organism_ship_command(source, name) -> None:
    """Copy a finished run's weights into probe/organism/weights/ and update weights.sha256 (maintainers)."""
    from probe.organism.weights_io import ship

    final = source / "final" if (source / "final").is_dir() else source
    if not (final / "config.json").is_file():
        raise ProbeError(f"{final} holds no finished model (config.json missing)")
    click.echo(f"shipped to {ship(final, name)}")


# --- efficiency (issue 12) -----------------------------------------------------------------------
@cli.command("efficiency")
@click.option(
    "--model",
    "model_name",
    required=True,
    help="Shipped real config (llava-v1.5-7b, ...), zoo name or directory.",
)
@click.option("--compare", "compare", multiple=True, help="Another model at the same request; repeatable.")
@click.option(
    "--queries",
    type=int,
    help="LLaVA-Mini C (C x C tokens per image); on a LLaVA-v1.5 base builds the variant.",
)
@click.option("--prefusion", type=int, help="LLaVA-Mini pre-fusion layers N_fusion (0 = none).")
@click.option("--kind", help="LLaVA-Mini compression: query or pool.")
@click.option(
    "--resolution",
    default=336,
    show_default=True,
    type=int,
    help="336 or 672 px (Mini: 2x2 crops; v1.6: anyres).",
)
@click.option("--frames", default=1, show_default=True, type=int, help="Video frames (one image = 1).")
@click.option("--prompt-tokens", default=64, show_default=True, type=int, help="Text tokens L of the prompt.")
@click.option("--response-tokens", default=32, show_default=True, type=int, help="Generated tokens R.")
@click.option("--dtype", "dtypes", multiple=True, help="float16 (default), bfloat16, float32; repeatable.")
@click.option("--component", "components", multiple=True, help="Keep only these FLOPs components (+ total).")
@click.option(
    "--measure", is_flag=True, help="Also time prefill / decode of models with weights (CUDA peak memory)."
)
@click.option("--repeats", default=5, show_default=True, type=int, help="Timed repeats after one warm-up.")
@click.option("--device", default="auto", show_default=True, help="For --measure: cpu, cuda or auto.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory.")
def efficiency_command(
    model_name,
    compare,
    queries,
    prefusion,
    kind,
    resolution,
    frames,
    prompt_tokens,
    response_tokens,
    dtypes,
    components,
    measure,
    repeats,
    device,
    out,
) -> None:
    """FLOPs per component (meta device, no weights), memory per image / frame and latency (paper Figs. 7-9)."""
    from probe.efficiency.job import EfficiencyOptions, run_efficiency, summary_lines
    from probe.efficiency.setups import Request

    _quiet_libraries()
    options = EfficiencyOptions(
        models=[model_name, *compare],
        request=Request(resolution, frames, prompt_tokens, response_tokens),
        queries=queries,
        prefusion=prefusion,
        kind=kind,
        dtypes=list(dtypes) or ["float16"],
        components=list(components) or None,
        measure=measure,
        repeats=repeats,
        device=device,
    )
    table = run_efficiency(options, out)
    for line in summary_lines(table):
        click.echo(line)
    click.echo(f"wrote {len(table)} rows to {out}/efficiency.parquet (+ .csv, manifest.json, figures)")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's kill, `kill PID`), raised where the program is so it stops like Ctrl-C:
    finished samples are on disk, temporary files are removed, and the same command resumes."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


INTERRUPTED = "interrupted: rerun the same command to resume"


# --- interventions (issue 11): drop / knockout / prune -------------------------------------------
def _ablation_options(command):
    """Options every ablation command shares."""
    for option in reversed(
        [
            click.option(
                "--model",
                "model_name",
                required=True,
                help="Zoo name (see `probe models`), hub id or directory.",
            ),
            click.option(
                "--dataset",
                type=click.Path(path_type=Path),
                required=True,
                help="JSONL with an 'answer' per line, a LLaVA question file (+ --answers), an MMBench TSV "
                "or a save_to_disk directory (gold answers are needed by every metric).",
            ),
            click.option("--limit", type=click.IntRange(min=1), help="Use only the first N samples."),
            *DATASET_SOURCE_OPTIONS,
            click.option(
                "--max-new-tokens",
                default=8,
                show_default=True,
                type=click.IntRange(min=1),
                help="Answer length.",
            ),
            click.option(
                "--only-correct", is_flag=True, help="Summarise only the samples the baseline answers right."
            ),
            click.option(
                "--out",
                type=click.Path(path_type=Path),
                help="Run directory [default: runs/<model>-<command>].",
            ),
            click.option("--overwrite", is_flag=True, help="Replace a finished or different run in --out."),
            click.option("--device", default="auto", show_default=True),
            click.option("--dtype", default="auto", show_default=True),
            click.option(
                "--attn", type=click.Choice(ATTENTION_CHOICES), help="LLM attention [default: sdpa]."
            ),
            TEMPLATE_OPTION,
            click.option("--seed", default=0, show_default=True, type=int, help="Seed of the bootstrap."),
            EXECUTOR_OPTION,
            ADDRESS_OPTION,
        ]
    ):
        command = option(command)
    return command


def _run_ablation(command, model_name, dataset, limit, make_settings, spec, common) -> None:
    """Read the dataset (gold answers checked), load the model, build the settings, run, report."""
    from probe.inputs import read_dataset
    from probe.interventions.job import AblationOptions, run_ablation
    from probe.provenance import command_line
    from probe.results import check_output_dir
    from probe.templates import parse_template
    from probe.zoo import load

    out = check_output_dir(common["out"] or _default_out(model_name, command))
    template = parse_template(common["template_spec"])
    source = _dataset_source(common)
    samples = read_dataset(dataset, source=source, limit=limit)
    missing = [s.sample_id for s in samples if not (s.answer or "").strip()]
    if missing:
        raise ProbeError(
            f"{dataset} has no gold 'answer' for sample '{missing[0]}': the {command} metrics need one per sample"
        )
    _quiet_libraries()
    loaded = load(
        model_name,
        device=common["device"],
        dtype=common["dtype"],
        attn=common["attn"],
        template=template,
    )
    settings = make_settings(loaded.adapter)
    options = AblationOptions(
        command=command,
        max_new_tokens=common["max_new_tokens"],
        only_correct=common["only_correct"],
        seed=common["seed"],
        spec=spec,
        dataset=source.describe(dataset),
    )
    results = run_ablation(
        loaded,
        samples,
        settings,
        out,
        options,
        overwrite=common["overwrite"],
        dataset=dataset,
        limit=limit,
        command=command_line(),
        executor=common["executor"],
        reload=partial(
            load,
            model_name,
            device=common["device"],
            dtype=common["dtype"],
            attn=common["attn"],
            template=template,
        ),
        address=common["address"],
    )
    click.echo(
        f"wrote {len(results)} rows ({len(samples)} sample(s) x {len(settings) + 1} settings incl. baseline) to {out}/"
    )


@cli.command("drop")
@_ablation_options
@click.option("--window", type=int, help="Layers per window [default 4], windows every --stride layers.")
@click.option("--stride", type=int, help="Layers between window starts [default: --window].")
@click.option("--layers", "layer_spec", help="Explicit windows, e.g. 0-3,4-7 or 5 (0-based, inclusive).")
@click.option("--from-layer", type=int, help="One window from layer K to the last layer.")
@click.option(
    "--mode",
    type=click.Choice(["mask", "skip"]),
    default="mask",
    show_default=True,
    help="mask: no other token sees the vision tokens; skip: they leave the sequence for the window.",
)
@click.option(
    "--stage",
    type=click.Choice(["llm", "prefusion"]),
    default="llm",
    show_default=True,
    help="LLM layers, or LLaVA-Mini's pre-fusion layers (vision tokens = the vision tower's).",
)
def drop_command(
    model_name, dataset, limit, window, stride, layer_spec, from_layer, mode, stage, **common
) -> None:
    """Remove every vision token from a window of layers, window by window (paper Fig. 5)."""
    from probe.interventions.drop import DropVision, parse_layer_windows

    def settings(adapter):
        if stage not in adapter.stages:
            raise ProbeError(f"'{model_name}' has no {stage} stage (stages: {', '.join(adapter.stages)})")
        windows = parse_layer_windows(adapter.num_layers(stage), window, stride, layer_spec, from_layer)
        return [DropVision(w, mode=mode, stage=stage) for w in windows]

    spec = {
        "window": window,
        "stride": stride,
        "layers": layer_spec,
        "from_layer": from_layer,
        "mode": mode,
        "stage": stage,
    }
    _run_ablation("drop", model_name, dataset, limit, settings, spec, common)


@cli.command("knockout")
@_ablation_options
@click.option(
    "--block",
    "blocks",
    multiple=True,
    required=True,
    help="'SOURCE->TARGET' edges to cut (quoted; repeat for several lines): roles of the attention table "
    "(vision, instruction, response, system, image, ...), last (last prompt token) or positions (12, 12:20).",
)
@click.option(
    "--window", default=9, show_default=True, type=int, help="Layers per window, centred on each layer."
)
def knockout_command(model_name, dataset, limit, blocks, window, **common) -> None:
    """Attention knockout: cut SOURCE->TARGET edges in a window centred on each layer in turn."""
    from probe.interventions.knockout import Knockout, parse_block

    edges = [parse_block(b) for b in blocks]
    if window < 1:
        raise ProbeError("--window must be at least 1")

    def settings(adapter):
        n = adapter.num_layers("llm")
        return [Knockout(src, tgt, centre, window, n) for src, tgt in edges for centre in range(n)]

    _run_ablation(
        "knockout", model_name, dataset, limit, settings, {"block": list(blocks), "window": window}, common
    )


@cli.command("prune")
@_ablation_options
@click.option("--layer", "layer", required=True, type=int, help="K: prune from layer K on (ranked at K-1).")
@click.option(
    "--keep",
    "keeps",
    multiple=True,
    required=True,
    type=float,
    help="Fraction of image tokens kept, in (0, 1]; repeat.",
)
def prune_command(model_name, dataset, limit, layer, keeps, **common) -> None:
    """FastV: keep the image tokens the last prompt token attends to most at layer K-1, drop the rest."""
    from probe.interventions.prune import Prune, check_keep

    for keep in keeps:
        check_keep(keep)

    def settings(adapter):
        return [Prune(layer, keep, adapter.num_layers("llm")) for keep in keeps]

    _run_ablation(
        "prune", model_name, dataset, limit, settings, {"layer": layer, "keep": list(keeps)}, common
    )


@cli.command("sweep")
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), required=True, help="The sweep's YAML file."
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: cells one after another; ray: one Ray task per cell (one GPU each on CUDA).",
)
@click.option("--address", help="Ray cluster address (default: the one `ray start` left, or a local one).")
@click.option("--out", type=click.Path(path_type=Path), help="Sweep directory [runs/sweep-<config name>].")
def sweep_command(config_path, executor, address, out) -> None:
    """Train and evaluate LLaVA-Mini students over C x N_fusion x compression kind; rerun to resume."""
    from probe.sweep.config import read_config
    from probe.sweep.runner import run_sweep

    _quiet_libraries()
    config = read_config(config_path)
    out = out or Path("runs") / f"sweep-{config_path.stem}"
    table = run_sweep(config, out, executor=executor, address=address, command=" ".join(sys.argv))
    columns = ["cell", "vision_tokens", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "blank_accuracy"]
    click.echo(table[[c for c in columns if c in table]].to_string(index=False, float_format="%.3f"))
    click.echo(f"results: {out}")


# --- reports (issue 14): PDF from saved runs, and the paper's analyses in one command ------------------
@cli.command("report")
@click.argument("run_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="PDF to write.")
@click.option("--title", default="probe report", show_default=True, help="Title of the first page.")
def report_command(run_dirs, out, title) -> None:
    """A PDF of finished run directories (title page, every figure with its caption, the tables),
    redrawn from their saved tables."""
    from probe.report import write_report

    counts = write_report(list(run_dirs), out, title=title)
    click.echo(
        f"wrote {out}: {counts['pages']} pages ({counts['figures']} figures, {counts['tables']} tables)"
    )


@cli.command("paper")
@click.option("--model", "model_name", required=True, help="Zoo name, hub id or local directory.")
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Directory for the runs + report.pdf."
)
@click.option(
    "--dataset",
    type=click.Path(path_type=Path),
    help="JSONL with an 'answer' per line [default: the organism's test split].",
)
@click.option("--samples", "n_samples", default=16, show_default=True, type=int, help="Samples per analysis.")
@click.option("--max-new-tokens", default=8, show_default=True, type=int, help="Answer length (drop runs).")
@click.option("--compare", multiple=True, help="Another model for the efficiency figures; repeatable.")
@click.option("--sweep", type=click.Path(path_type=Path), help="A `probe sweep` run directory to include.")
@click.option("--per-head", is_flag=True, help="Also draw every head's token x token map (Fig. 4 per head).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
def paper_command(
    model_name, out, dataset, n_samples, max_new_tokens, compare, sweep, per_head, device, dtype
) -> None:
    """Every analysis of the paper's Sections 3 and 6 that applies to MODEL, then OUT/report.pdf."""
    from probe.paper import PaperOptions, check_paper_inputs, run_paper
    from probe.provenance import command_line

    options = PaperOptions(
        model=model_name,
        out=out,
        dataset=dataset,
        n_samples=n_samples,
        max_new_tokens=max_new_tokens,
        compare=list(compare),
        sweep=sweep,
        per_head=per_head,
        device=device,
        dtype=dtype,
        command=command_line(),
    )
    check_paper_inputs(options)
    _quiet_libraries()
    click.echo(f"wrote {run_paper(options)}")


def main() -> None:
    """Entry point: user errors are one line on stderr and exit code 2, never a traceback."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        cli.main(standalone_mode=False)
    except ProbeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        # click turns a KeyboardInterrupt (Terminated included) into Abort, keeping it as the cause
        terminated = isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated)
        click.echo(INTERRUPTED, err=True)
        sys.exit(128 + signal.SIGTERM if terminated else 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
