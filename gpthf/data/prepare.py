"""`python -m gpthf.data.prepare [data=NAME] [data.KEY=VALUE ...] [cache_dir=DIR]`

Builds (or finds) the prepared data set for a config and prints corpus statistics. Training calls the
same `prepare_data`, so running this first only moves the work out of the training budget. A build
streams the corpus (memory flat in its size) over `data.num_proc` workers; an interrupted build is
continued by the next run from its finished shards.
"""

from __future__ import annotations

import sys

from gpthf.cli import run_cli
from gpthf.config import load_config
from gpthf.data.dataset import SPLITS, prepare_data

_COLUMNS = (
    "documents",
    "sentences",
    "rows",
    "tokens",
    "tokens_per_sentence_mean",
    "tokens_per_sentence_p95",
    "bytes",
)


def format_stats(stats: dict) -> str:
    header = f"{'split':<11}" + "".join(
        f"{c.replace('tokens_per_sentence_', 'tok/sent '):>16}" for c in _COLUMNS
    )
    lines = [header]
    for split in SPLITS:
        row = stats["splits"][split]
        lines.append(
            f"{split:<11}"
            + "".join(
                f"{row[c]:>16,.1f}" if isinstance(row[c], float) else f"{row[c]:>16,}" for c in _COLUMNS
            )
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    cfg = load_config(argv)
    prepared = prepare_data(cfg)
    stats = prepared.stats
    size = sum(f.stat().st_size for f in prepared.path.rglob("*") if f.is_file())
    tokens = sum(s["tokens"] for s in stats["splits"].values())
    print(
        f"data set: {prepared.path}  (vocabulary {stats['vocab_size']}, {len(stats['shards'])} shard(s), "
        f"{size / 1e6:,.1f} MB on disk, {size / max(tokens, 1):.2f} bytes/token)"
    )
    print(format_stats(stats))
    skipped = sum(stats["skipped_records"].values())
    if skipped:
        print(f"skipped records: {', '.join(f'{n:,} {why}' for why, n in stats['skipped_records'].items())}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
