"""`python eval/seeds.py RUN_DIR... [--ood-data FILE] [--out DIR]`: the quality claim with error bars.

Give finished runs of the same token count that differ in `train.seed`, typically GPTHF and the GPT
at one size:

    for s in 0 1 2; do for kind in gpthf gpt; do
      python pretrain.py arch=$kind-5m train.max_tokens=1000000 train.seed=$s hydra.run.dir=outputs/seeds/$kind-s$s
    done; done
    python eval/seeds.py outputs/seeds/*

Each run's final checkpoint is scored in bits per byte on the test split of its own corpus (in
domain) and on --ood-data (out of domain; default: the shipped movie-review sentences, prose unlike
the training text). Runs group by model kind and size; each group gets its mean, sample standard
deviation and range. Writes seeds.json and seeds.md (the table) to --out and prints the table, then
one JSON line.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from gpthf.atomic import atomic_write
from gpthf.cli import ArgumentParser, positive_int, run_cli, writable_folder
from gpthf.errors import ConfigError

OOD_DATA = Path(__file__).resolve().parent / "tasks" / "data" / "gpthf_sentiment.jsonl"
EQUAL_TOKENS = 1.02  # runs compared must have trained on token counts within 2 % of each other
# What makes two runs the same recipe besides their seed: the model, the data, the start and the
# optimisation (not the cadence of logs, checkpoints and validation).
RECIPE_TRAIN_KEYS = (
    "batch_size", "micro_batch_size", "lr", "weight_decay", "beta1", "beta2", "grad_clip", "schedule",
    "warmup_fraction", "cooldown_fraction", "max_tokens",
)  # fmt: skip


@dataclass(frozen=True)
class RunFacts:
    """What a finished run says of itself, read without loading the model."""

    run: Path
    kind: str
    parameters: int
    seed: int
    tokens: int
    recipe: dict  # flattened "section.key" -> value: equal within a group


@dataclass(frozen=True)
class SeedRun:
    run: str
    kind: str
    parameters: int
    seed: int
    tokens: int
    test_bpb: float
    ood_bpb: float


def read_run(run_dir: Path) -> RunFacts:
    """A finished run's kind, size, seed, tokens and recipe; an error naming the folder if it is not one."""
    import torch
    from omegaconf import OmegaConf

    from gpthf.models import build_model
    from gpthf.training.checkpoint import FINAL, read_meta
    from gpthf.training.run_dir import CONFIG_FILE

    final = run_dir / "checkpoints" / FINAL
    if not (run_dir / CONFIG_FILE).is_file() or not final.is_dir():
        raise ConfigError(
            f"{run_dir} is not a finished run folder (no {CONFIG_FILE} or checkpoints/{FINAL}); "
            f"give folders of runs pretrain.py finished"
        )
    meta = read_meta(final)
    with torch.device("meta"):  # counted, not allocated
        parameters = build_model(meta.arch, meta.vocab_size).num_parameters()
    config = OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG_FILE))
    recipe = {f"arch.{k}": v for k, v in meta.arch.items()}
    recipe |= {f"data.{k}": v for k, v in meta.data.items()}
    recipe |= {f"train.{k}": config["train"].get(k) for k in RECIPE_TRAIN_KEYS}
    recipe["init_from"] = meta.init_from
    return RunFacts(
        run_dir, meta.arch["model"], parameters, int(config["train"]["seed"]), int(meta.tokens or 0), recipe
    )


def check_comparable(runs: list[RunFacts]) -> None:
    """Each run once, equal tokens across all runs, and within a group (kind, size) one recipe and no
    seed twice: else the spread would mix what differs with what the seed does."""
    folders = [r.run.resolve() for r in runs]
    twice = next((f for f in folders if folders.count(f) > 1), None)
    if twice is not None:
        raise ConfigError(f"run {twice} is given twice")
    tokens = [r.tokens for r in runs]
    if min(tokens) <= 0 or max(tokens) > EQUAL_TOKENS * min(tokens):
        raise ConfigError(
            f"the runs trained on {min(tokens):,} to {max(tokens):,} tokens; seeds compare at equal tokens "
            f"(within {EQUAL_TOKENS - 1:.0%}): train them all with the same train.max_tokens"
        )
    for members in by_group(runs).values():
        first = members[0]
        for i, r in enumerate(members):
            differs = next((k for k in first.recipe if first.recipe[k] != r.recipe.get(k)), None)
            if differs is not None:
                raise ConfigError(
                    f"{first.run} and {r.run} ({r.kind}, {r.parameters:,} parameters) differ in {differs} "
                    f"({first.recipe[differs]!r} vs {r.recipe.get(differs)!r}): runs of one group may "
                    f"differ in train.seed only"
                )
            if r.seed in {m.seed for m in members[:i]}:
                raise ConfigError(f"two runs of {r.kind} ({r.parameters:,} parameters) with seed {r.seed}")


def by_group(runs: list) -> dict[tuple[str, int], list]:
    """Runs (`RunFacts` or `SeedRun`) by (kind, parameters), each group and its runs in the order given."""
    groups: dict[tuple[str, int], list] = {}
    for r in runs:
        groups.setdefault((r.kind, r.parameters), []).append(r)
    return groups


def score_run(facts: RunFacts, ood_data: Path, max_rows: int | None) -> SeedRun:
    """Both bits per byte of one run's final checkpoint; an error naming the run if either is not finite."""
    from gpthf.evaluation.perplexity import evaluate_checkpoint
    from gpthf.training.checkpoint import FINAL

    final = facts.run / "checkpoints" / FINAL
    test = evaluate_checkpoint(final, split="test", samples=0, max_rows=max_rows)["bits_per_byte"]
    ood = evaluate_checkpoint(final, data=str(ood_data), samples=0, max_rows=max_rows)["bits_per_byte"]
    if not (math.isfinite(test) and math.isfinite(ood)):
        raise ConfigError(
            f"{facts.run} scores {test} bits per byte in domain and {ood} out of it: not a trained model"
        )
    return SeedRun(str(facts.run), facts.kind, facts.parameters, facts.seed, facts.tokens, test, ood)


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (None for one value), min and max."""
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def group_rows(runs: list[SeedRun]) -> list[dict]:
    """One row per (kind, size), in the order the runs were given."""
    return [
        {
            "kind": kind,
            "parameters": parameters,
            "seeds": [r.seed for r in members],
            "tokens": members[0].tokens,
            "test_bpb": [r.test_bpb for r in members],
            "ood_bpb": [r.ood_bpb for r in members],
            "test": spread([r.test_bpb for r in members]),
            "ood": spread([r.ood_bpb for r in members]),
        }
        for (kind, parameters), members in by_group(runs).items()
    ]


def markdown(rows: list[dict]) -> str:
    def mean_sd(stats: dict) -> str:
        return f"{stats['mean']:.4f}" + (f" ± {stats['sd']:.4f}" if stats["sd"] is not None else "")

    lines = [
        "| model | params | seeds | in domain: test bits/byte, each | mean ± sd | out of domain: bits/byte, each | mean ± sd |",
        "| --- | ---: | --- | --- | ---: | --- | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['kind']} | {row['parameters'] / 1e6:.2f}M | {', '.join(map(str, row['seeds']))} | "
            f"{', '.join(f'{v:.4f}' for v in row['test_bpb'])} | {mean_sd(row['test'])} | "
            f"{', '.join(f'{v:.4f}' for v in row['ood_bpb'])} | {mean_sd(row['ood'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="seeds.py", description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (pretrain.py's)")
    parser.add_argument(
        "--ood-data", type=Path, default=OOD_DATA, help="out-of-domain text (a jsonl/txt file)"
    )
    parser.add_argument("--max-rows", type=positive_int, default=None, help="score only the first N rows")
    parser.add_argument("--out", type=Path, default=Path("outputs/seed-spread"))
    args = parser.parse_args(argv)
    writable_folder(args.out)
    if not args.ood_data.is_file():
        raise ConfigError(f"--ood-data {args.ood_data} is not a file")

    facts = [read_run(run_dir) for run_dir in args.runs]  # every folder checked before any is scored
    check_comparable(facts)
    runs = []
    for i, run in enumerate(facts, 1):
        runs.append(score_run(run, args.ood_data, args.max_rows))
        print(f"  scored {i}/{len(facts)}: {run.run}", file=sys.stderr)
    rows = group_rows(runs)
    table = markdown(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"ood_data": str(args.ood_data), "runs": [asdict(r) for r in runs], "groups": rows}
    atomic_write(args.out / "seeds.json", json.dumps(results, indent=2))
    atomic_write(args.out / "seeds.md", table)
    print(table, end="")
    headline = {
        f"{row['kind']}_{row['parameters'] / 1e6:.2f}M_{name}": {
            key: row[name][key] for key in ("mean", "sd")
        }
        for row in rows
        for name in ("test", "ood")
    }
    print(json.dumps({"groups": len(rows), "runs": len(runs), **headline}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
