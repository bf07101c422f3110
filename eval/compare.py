"""`python eval/compare.py [--arch small] [--quick] [--ckpt PATH ...]`: GPTHF against the equal-size GPT.

In one run, on one machine and thread count (or on one GPU, `--device cuda`, timed by CUDA events):
analytical FLOPs per generated and per training token; decode tokens/s and ms/token of GPTHF and GPT
with the `cached` and `full` strategies at several context lengths and batch sizes (prompts from
real corpus text, prefill timed separately); bytes of generation state; peak RSS (and on a GPU its
peak tensor memory); Hugging Face `LlamaForCausalLM.generate` of the same shape as the outside peer
(if `transformers` is installed); training tokens/s of both. The other efficient generators
(--models: linear attention, T2R, LSTM, Block-Recurrent Transformer) get cached decode, state and
training rows beside them. Writes `compare.json` and `compare.png` to --out, prints a ratio table and
a per-model table, and, last, one JSON line with the headline ratios, the headline cell's tokens/s
and the device and machine they were measured on.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

from gpthf.atomic import atomic_write, save_figure
from gpthf.cli import ArgumentParser, byte_size, non_negative_int, positive_int, run_cli, writable_folder
from gpthf.measure import DEFAULT_DEVICE, DEVICE_HELP
from gpthf.measure.comparison import find, ratio
from gpthf.models import COMPARED, SPECS
from gpthf.precision import DEFAULT_DTYPE, DTYPE_NAMES


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="compare.py", description=__doc__)
    parser.add_argument(
        "--arch", default="small", help="size of the random-weight twins: gpthf-<arch> and gpt-<arch>"
    )
    parser.add_argument(
        "--ckpt",
        action="append",
        default=[],
        help="trained checkpoint(s) to use instead of random weights (at most one per model kind)",
    )
    parser.add_argument(
        "--models",
        nargs="*",
        default=list(ALTERNATIVES),
        choices=list(ALTERNATIVES),
        help="other generators measured beside GPTHF and GPT (cached decode and training only); "
        "--models alone: none",
    )
    parser.add_argument("--contexts", type=positive_int, nargs="+", default=[256, 1024, 2048, 4096])
    parser.add_argument("--batches", type=positive_int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--new-tokens", type=positive_int, default=16, help="timed decode steps of the cached strategies"
    )
    parser.add_argument(
        "--full-new-tokens", type=positive_int, default=2, help="timed decode steps of the full strategy"
    )
    parser.add_argument(
        "--max-full-tokens", type=non_negative_int, default=16384, help="skip `full` above context × batch"
    )
    parser.add_argument("--train-batch", type=positive_int, default=8)
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face peer")
    parser.add_argument(
        "--dtype", default=DEFAULT_DTYPE, choices=DTYPE_NAMES, help="weights and generation state"
    )
    parser.add_argument("--device", default=DEFAULT_DEVICE, help=DEVICE_HELP)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time GPTHF's and GPT's cached step compiled over static caches (torch.compile)",
    )
    parser.add_argument(
        "--no-pack",
        action="store_true",
        help="decode from the weights as stored, not packed for the CPU's matrix kernels "
        "(eval/formats.py compares both; nothing is packed on a GPU)",
    )
    parser.add_argument(
        "--state-budget",
        type=byte_size,
        default=None,
        help="also give GPTHF and GPT the largest batch whose generation state fits this (e.g. 4GiB)",
    )
    parser.add_argument(
        "--max-budget-batch",
        type=positive_int,
        default=512,
        help="cap on the batch the state budget grants (time per step grows with it)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny shape and a small grid: well under 2 minutes"
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/compare"))
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where the default data set is prepared (default: the config's cache_dir)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.arch, args.contexts, args.batches = "tiny", [128, 512], [1, 2]
        args.new_tokens, args.full_new_tokens, args.train_batch = 4, 1, 2
    return args


ALTERNATIVES = tuple(kind for kind in SPECS if kind not in COMPARED)  # every other registered kind


def load_models(args, vocab_size: int, device: torch.device) -> dict:
    from gpthf.config import load_config
    from gpthf.errors import ConfigError
    from gpthf.loading import load_model_from_checkpoint
    from gpthf.measure.scaling import arch_name
    from gpthf.models import build_model
    from gpthf.precision import torch_dtype

    models = {}
    for path in args.ckpt:
        model, meta, _ = load_model_from_checkpoint(path, device, dtype=args.dtype)
        models[meta.arch["model"]] = model
    for kind in ("gpthf", "gpt", *args.models):
        if kind not in models:
            torch.manual_seed(0)  # built on the CPU, so the same weights on every device
            models[kind] = (
                build_model(load_config([f"arch={arch_name(kind, args.arch)}"]).arch, vocab_size)
                .to(device, torch_dtype(args.dtype))
                .eval()
            )
    if models["gpthf"].num_parameters() != models["gpt"].num_parameters():
        raise ConfigError("the GPTHF and GPT being compared must have equal parameter counts")
    return models


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpthf.measure.styles import decode_styles

    batch = max(r["batch"] for r in results["decode"])
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4))
    for (model, strategy), style in decode_styles().items():
        rows = sorted(
            (r["context"], r)
            for r in results["decode"]
            if r["model"] == model and r["strategy"] == strategy and r["batch"] == batch
        )
        if rows:
            speed.plot(
                [c for c, _ in rows], [r["tokens_per_s"] for _, r in rows], style, label=f"{model} {strategy}"
            )
            if strategy != "full":
                memory.plot(
                    [c for c, _ in rows],
                    [r["state_bytes"] / 2**20 for _, r in rows],
                    style,
                    label=f"{model} {strategy}",
                )
    speed.set(
        xlabel="context tokens",
        ylabel="generated tokens/s",
        yscale="log",
        title=f"decode speed, batch {batch}",
    )
    memory.set(
        xlabel="context tokens", ylabel="generation state (MiB)", yscale="log", title="generation state"
    )
    for ax in (speed, memory):
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    where = f"{results['threads']} CPU threads" if results["device"] == "cpu" else results["machine"]
    fig.suptitle(f"GPTHF vs equal-size GPT and others ({results['arch']}, {where})")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plan_state_budget(args, models: dict, stream: list[int]) -> list[dict]:
    """Per context and model, the largest batch whose generation state fits --state-budget; checked
    before anything is timed, so a budget that holds no row fails at once."""
    from gpthf.errors import ConfigError
    from gpthf.measure.speed import batch_of_contexts, state_bytes_per_row

    plan = []
    for context in args.contexts:
        tokens = batch_of_contexts(stream, context, args.new_tokens, 1)
        for kind in ("gpthf", "gpt"):
            per_row = state_bytes_per_row(models[kind], tokens)
            fits = args.state_budget // per_row
            if fits < 1:
                raise ConfigError(
                    f"--state-budget {args.state_budget:,} bytes holds no row of {kind} at context {context} "
                    f"(one row needs {per_row:,}); give a larger budget or smaller --contexts"
                )
            plan.append(
                {"kind": kind, "context": context, "tokens": tokens, "per_row": per_row, "fits": fits}
            )
    return plan


def time_state_budget(args, models: dict, plan: list[dict], with_roofline) -> list[dict]:
    """Cached decode of each planned (model, context) at its batch (capped by --max-budget-batch)."""
    from gpthf.measure.speed import time_decode

    rows = []
    for item in plan:
        batch = min(item["fits"], args.max_budget_batch)
        kind, context = item["kind"], item["context"]
        row = time_decode(
            models[kind], kind, "cached", item["tokens"], context, tile_to=batch, pack=not args.no_pack
        ).as_dict()
        row.update(
            state_budget=args.state_budget, state_bytes_per_row=item["per_row"], batch_fits=int(item["fits"])
        )
        rows.append(with_roofline(row))
        print(f"  budget: {kind} at context {context}, batch {batch} (fits {item['fits']})", file=sys.stderr)
    return rows


def load_hf_peer(args, gpt, device: torch.device, dtype: torch.dtype):
    """Hugging Face's Llama of our GPT's shape on the same device and format, or None (skipped)."""
    from gpthf.measure.speed import hf_llama_twin

    if args.no_hf:
        return None
    if importlib.util.find_spec("transformers") is None:
        print(
            'transformers is not installed: skipping the Hugging Face peer (pip install ".[compare]")',
            file=sys.stderr,
        )
        return None
    torch.manual_seed(0)
    return hf_llama_twin(gpt).to(device, dtype)


def time_grid(args, models: dict, hf, stream: list[int], started: float) -> list[dict]:
    """Decode timings of every model and strategy at every (context, batch) of the grid."""
    from gpthf.measure.speed import batch_of_contexts, time_decode, time_hf_generate

    pack = not args.no_pack
    decode = []
    for context in args.contexts:
        for batch in args.batches:
            tokens = batch_of_contexts(stream, context, args.new_tokens, batch)
            for kind in ("gpthf", "gpt"):
                decode.append(time_decode(models[kind], kind, "cached", tokens, context, pack=pack).as_dict())
                if args.compile:
                    decode.append(
                        time_decode(
                            models[kind], kind, "cached", tokens, context, compile=True, pack=pack
                        ).as_dict()
                    )
                if context * batch <= args.max_full_tokens:
                    full_tokens = tokens[:, : context + args.full_new_tokens + 1]
                    decode.append(
                        time_decode(models[kind], kind, "full", full_tokens, context, warmup=1).as_dict()
                    )
            for kind in args.models:  # `full` is the oracle and the GPT's fallback; not needed here
                decode.append(time_decode(models[kind], kind, "cached", tokens, context, pack=pack).as_dict())
            if hf is not None:
                decode.append(time_hf_generate(hf, tokens, context).as_dict())
            print(
                f"  measured context {context}, batch {batch} ({time.time() - started:.0f} s)",
                file=sys.stderr,
            )
    return decode


def ratio_rows(args, decode: list[dict], models: dict, vocab: int, tokens_per_sentence: float) -> list[dict]:
    """Per (context, batch): GPTHF's and the others' speed and state over GPT's, and the FLOPs ratio."""
    from gpthf.measure import flops

    ratios = []
    for context in args.contexts:
        for batch in args.batches:
            ours, gpt, gpt_full, hf_row = (
                find(decode, "gpthf", "cached", context, batch),
                find(decode, "gpt", "cached", context, batch),
                find(decode, "gpt", "full", context, batch),
                find(decode, "hf-llama", "generate", context, batch),
            )
            ratios.append(
                {
                    "context": context,
                    "batch": batch,
                    "gpthf_cached_over_gpt_cached": ratio(ours["tokens_per_s"], gpt["tokens_per_s"]),
                    "gpthf_cached_over_gpt_full": ratio(
                        ours["tokens_per_s"], gpt_full and gpt_full["tokens_per_s"]
                    ),
                    "gpt_cached_over_hf": ratio(gpt["tokens_per_s"], hf_row and hf_row["tokens_per_s"]),
                    "gpthf_state_over_gpt_state": ratio(ours["state_bytes"], gpt["state_bytes"]),
                    "flops_gpthf_over_gpt": ratio(
                        flops.decode_flops(models["gpthf"].arch, vocab, context, tokens_per_sentence),
                        flops.decode_flops(models["gpt"].arch, vocab, context, tokens_per_sentence),
                    ),
                }
            )
            for kind in args.models:
                other = find(decode, kind, "cached", context, batch)
                ratios[-1][f"{kind}_cached_over_gpt_cached"] = ratio(
                    other["tokens_per_s"], gpt["tokens_per_s"]
                )
                ratios[-1][f"{kind}_state_over_gpt_state"] = ratio(other["state_bytes"], gpt["state_bytes"])
            if args.compile:
                compiled = {kind: find(decode, kind, "compiled", context, batch) for kind in ("gpthf", "gpt")}
                for kind, eager in (("gpthf", ours), ("gpt", gpt)):
                    ratios[-1][f"{kind}_compiled_over_eager"] = ratio(
                        compiled[kind]["tokens_per_s"], eager["tokens_per_s"]
                    )
                # Where launches bound the eager step (a GPU at small batches), the compiled pair
                # is the comparison of the models rather than of their Python overheads.
                ratios[-1]["gpthf_compiled_over_gpt_compiled"] = ratio(
                    compiled["gpthf"]["tokens_per_s"], compiled["gpt"]["tokens_per_s"]
                )
    return ratios


def print_tables(args, results: dict, models: dict, peaks) -> None:
    """The ratio table, the per-model table, the roofline and the state budget, for a reader."""
    decode, ratios, training = results["decode"], results["ratios"], results["training_tokens_per_s"]

    def fmt(value: float | None, digits: int = 2) -> str:
        return f"{value:.{digits}f}" if value is not None else "-"

    print(
        f"{'context':>8} {'batch':>6} {'GPTHF/GPT':>10} {'GPTHF/GPTfull':>14} {'GPT/HFllama':>12} {'state':>8} {'flops':>7}"
        "   (tokens/s, state and FLOPs ratios; GPTHF and GPT cached unless named)"
    )
    for r in ratios:
        print(
            f"{r['context']:>8} {r['batch']:>6} {fmt(r['gpthf_cached_over_gpt_cached']):>10} {fmt(r['gpthf_cached_over_gpt_full']):>14} "
            f"{fmt(r['gpt_cached_over_hf']):>12} {fmt(r['gpthf_state_over_gpt_state'], 4):>8} {fmt(r['flops_gpthf_over_gpt']):>7}"
        )
    batch = max(args.batches)
    print(f"\ncached decode at batch {batch}: generated tokens/s (generation state MiB)")
    print(
        f"{'model':>15} {'params':>12} "
        + " ".join(f"{c:>17}" for c in args.contexts)
        + f" {'train tok/s':>12}"
    )
    for kind, model in models.items():
        cells = []
        for context in args.contexts:
            row = find(decode, kind, "cached", context, batch)
            cells.append(
                f"{row['tokens_per_s']:>8.1f} ({row['state_bytes'] / 2**20:>6.2f})" if row else f"{'-':>17}"
            )
        print(f"{kind:>15} {model.num_parameters():>12,} " + " ".join(cells) + f" {training[kind]:>12.0f}")
    print(
        f"\nroofline of cached decode at batch {batch} ({args.dtype} on {results['machine']}; peaks measured now: copy "
        f"{peaks.copy_gb_s:.1f} GB/s, batch-8 matmul {peaks.matmul_b8_gflop_s:.0f}, square {peaks.matmul_square_gflop_s:.0f} GFLOP/s)"
    )
    print(
        f"{'model':>18} {'context':>8} {'ms/step':>8} {'MB/step':>8} {'GB/s':>6} {'%copy':>6} {'GFLOP/s':>8} {'%b8mm':>6}"
    )
    for row in decode:
        if row["batch"] == batch and row["strategy"] in ("cached", "compiled", "generate"):
            line = row["roofline"]
            label = f"{row['model']} (compiled)" if row["strategy"] == "compiled" else row["model"]
            print(
                f"{label:>18} {row['context']:>8} {row['ms_per_token']:>8.1f} {line['step_bytes'] / 1e6:>8.1f} "
                f"{line['achieved_gb_s']:>6.1f} {line['pct_of_copy_bandwidth']:>6.1f} {line['achieved_gflop_s']:>8.1f} "
                f"{line['pct_of_matmul_b8']:>6.1f}"
            )
    if results["state_budget"]:
        print(
            f"\nat a generation-state budget of {args.state_budget / 2**30:.2f} GiB (batch capped at {args.max_budget_batch})"
        )
        print(f"{'model':>8} {'context':>8} {'batch':>6} {'fits':>7} {'state/row MiB':>14} {'tokens/s':>9}")
        for row in results["state_budget"]:
            print(
                f"{row['model']:>8} {row['context']:>8} {row['batch']:>6} {row['batch_fits']:>7} "
                f"{row['state_bytes_per_row'] / 2**20:>14.3f} {row['tokens_per_s']:>9.1f}"
            )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    writable_folder(args.out)  # now, not after minutes of measuring
    from gpthf.training.distributed import resolve_device

    device = resolve_device(args.device, 0, setting="--device")  # and the format, before any work
    from gpthf.precision import resolve_dtype

    dtype = resolve_dtype(args.dtype, device)
    torch.set_num_threads(args.threads)
    from gpthf.measure.comparison import flops_table, headline, memory_peaks, state_budget_ratios
    from gpthf.measure.roofline import DecodeRoofline, measure_peaks
    from gpthf.measure.speed import time_training
    from gpthf.measure.timing import machine_name
    from gpthf.measure.workload import prepare_workload

    started = time.time()
    peaks = measure_peaks(dtype, args.dtype, device=device)  # this machine, these threads, this format
    print(f"  peaks ({args.dtype}, {machine_name(device)}): {peaks.describe()}", file=sys.stderr)
    work = prepare_workload(
        [f"cache_dir={args.cache_dir}"] if args.cache_dir else [],
        max(args.contexts),
        args.new_tokens,
        max(args.batches),
        train_rows=args.train_batch,
    )
    vocab, tokens_per_sentence = work.vocab_size, work.tokens_per_sentence
    models = load_models(args, vocab, device)
    plan = plan_state_budget(args, models, work.stream) if args.state_budget else []
    hf = load_hf_peer(args, models["gpt"], device, dtype)
    with_roofline = DecodeRoofline(models, vocab, tokens_per_sentence, peaks)

    decode = [with_roofline(row) for row in time_grid(args, models, hf, work.stream, started)]
    budget = time_state_budget(args, models, plan, with_roofline) if args.state_budget else []
    ratios = ratio_rows(args, decode, models, vocab, tokens_per_sentence)
    rows, sentence_ids = work.training_rows()
    training = {
        kind: time_training(models[kind], rows, sentence_ids, steps=1 if args.quick else 3)
        for kind in ("gpthf", "gpt", *args.models)
    }
    results = {
        "arch": args.arch,
        "parameters": {kind: model.num_parameters() for kind, model in models.items()},
        "threads": args.threads,
        "device": str(device),
        "machine": machine_name(device),
        "torch": torch.__version__,
        "tokens_per_sentence": tokens_per_sentence,
        "decode": decode,
        "ratios": ratios,
        "flops": flops_table(models, vocab, args.contexts, rows.shape[1], tokens_per_sentence),
        "training_tokens_per_s": training,
        "training_gpthf_over_gpt": training["gpthf"] / training["gpt"],
        "dtype": args.dtype,
        "packed": not args.no_pack,
        "peaks": peaks.as_dict(),
        "state_budget": budget,
        "state_budget_ratios": state_budget_ratios(budget, args.contexts),
        **memory_peaks(decode + budget, device),
        "seconds": time.time() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "compare.json", json.dumps(results, indent=2))
    plot(results, args.out / "compare.png")
    print_tables(args, results, models, peaks)
    print(f"written to {args.out}")
    print(json.dumps(headline(results)))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
