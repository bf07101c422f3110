"""`python eval/downstream.py --ckpt PATH --task sentiment|cloze|FILE.csv|FILE.jsonl|glue:sst2`

Finetunes the checkpoint with a linear classifier on the pooled last sentence-end state (GPTHF) or
last token (GPT), once per seed, and reports test accuracy and macro-F1 with median and spread;
`--task cloze` instead scores, zero-shot, the true next held-out sentence against sentences from
elsewhere. Prints a summary, then one JSON line.
"""

from __future__ import annotations

import json
import sys

from gpthf.cli import ArgumentParser, positive_float, positive_int, run_cli


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="downstream.py", description=__doc__)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=positive_int, default=2)
    parser.add_argument("--lr", type=positive_float, default=1e-4)
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument(
        "--max-train", type=positive_int, default=None, help="use only the first N training examples"
    )
    parser.add_argument(
        "--max-eval",
        type=positive_int,
        default=None,
        help="use only the first N test examples (cloze: examples)",
    )
    args = parser.parse_args(argv)

    from gpthf.data.splitter import build_splitter
    from gpthf.evaluation.downstream import cloze, finetune
    from gpthf.loading import load_model_from_checkpoint
    from gpthf.training.checkpoint import load_checkpoint_tokenizer

    model, meta, checkpoint = load_model_from_checkpoint(args.ckpt)
    tokenizer, splitter = (
        load_checkpoint_tokenizer(checkpoint, meta),
        build_splitter(meta.data["language"]),
    )
    max_sentence_len, max_len = meta.data["max_sentence_len"], meta.data["seq_len"]
    if args.task == "cloze":
        import itertools

        from gpthf.data.dataset import split_documents
        from gpthf.data.packing import sentence_units
        from gpthf.data.tokenizer import encode_sentences

        documents = list(itertools.islice(split_documents(meta.data, "test"), 10_000))
        encoded = [
            [u for t in encode_sentences(tokenizer, doc) for u in sentence_units(t, max_sentence_len)]
            for doc in documents
        ]
        result = cloze(model, encoded, n_examples=args.max_eval or 200)
        print(
            f"{meta.arch['model']} cloze: accuracy {result['accuracy']:.3f} over {result['examples']} examples (chance {result['chance']:.2f})"
        )
    else:
        from gpthf.evaluation.tasks import get_task

        task = get_task(args.task)
        result = finetune(
            model.train(),
            task,
            tokenizer,
            splitter,
            max_sentence_len,
            max_len,
            args.seeds,
            args.epochs,
            args.lr,
            args.batch_size,
            args.max_train,
            args.max_eval,
            progress=True,
        )
        print(
            f"{meta.arch['model']} {task.name}: accuracy median {result['accuracy_median']:.3f} (spread {result['accuracy_spread']:.3f}, "
            f"majority {result['majority_baseline']:.3f}), macro-F1 median {result['macro_f1_median']:.3f} over {len(args.seeds)} seeds"
        )
    from gpthf.evaluation.results import save_result

    summary = {"checkpoint": str(checkpoint), "model": meta.arch["model"], **result}
    print(json.dumps(summary))  # first: a result the disk has no room for is printed all the same
    save_result(checkpoint, f"downstream-{result['task']}", summary)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
