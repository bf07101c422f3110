"""The figures eval/compare.py derives from its timings: ratios of one model's row to another's, the
FLOPs tables, the memory peaks and the one-line headline. Plain functions of the rows, so they can be
checked without timing anything."""

from __future__ import annotations

import torch

from gpthf.measure import flops


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def find(decode: list[dict], model: str, strategy: str, context: int, batch: int) -> dict | None:
    """The decode row of that model and strategy at that cell of the grid, if it was timed."""
    return next(
        (
            r
            for r in decode
            if (r["model"], r["strategy"], r["context"], r["batch"]) == (model, strategy, context, batch)
        ),
        None,
    )


def state_budget_ratios(budget: list[dict], contexts: list[int]) -> dict[str, float | None]:
    """GPTHF's tokens/s over the GPT's, each at the batch the state budget grants it, per context."""
    ratios = {}
    for context in contexts if budget else []:
        pair = {r["model"]: r for r in budget if r["context"] == context}
        ratios[str(context)] = ratio(pair["gpthf"]["tokens_per_s"], pair["gpt"]["tokens_per_s"])
    return ratios


def flops_table(
    models: dict, vocab_size: int, contexts: list[int], seq_len: int, tokens_per_sentence: float
) -> dict:
    """Analytical FLOPs of every model: per generated token at each context, per training token."""
    return {
        "per_generated_token": {
            str(c): {
                k: flops.decode_flops(m.arch, vocab_size, c, tokens_per_sentence) for k, m in models.items()
            }
            for c in contexts
        },
        "per_training_token": {
            k: flops.training_flops_per_token(m.arch, vocab_size, seq_len, tokens_per_sentence)
            for k, m in models.items()
        },
    }


def memory_peaks(rows: list[dict], device: torch.device) -> dict[str, float]:
    """The largest host memory of any timing, and on a GPU its largest tensor memory."""
    memory = {"peak_rss_mb": max(r["peak_rss_mb"] for r in rows)}
    if device.type == "cuda":
        memory["peak_cuda_mb"] = max(r["peak_cuda_mb"] for r in rows)
    return memory


def headline(results: dict) -> dict:
    """The ratios at the largest (batch, context) of the grid, its tokens/s, the training ratios, the
    budget ratios and where they were measured: the one line a reader (or a CI log) keeps."""
    best = max(results["ratios"], key=lambda r: (r["batch"], r["context"]))
    training = results["training_tokens_per_s"]
    training_ratios = {
        f"training_{k}_over_gpt": training[k] / training["gpt"] for k in results["parameters"] if k != "gpt"
    }
    at_budget = {f"budget_gpthf_over_gpt_at_{c}": r for c, r in results["state_budget_ratios"].items()}
    cell = (best["context"], best["batch"])
    speeds = {
        f"{k}_tokens_per_s": find(results["decode"], k, "cached", *cell)["tokens_per_s"]
        for k in ("gpthf", "gpt")
    }
    where = {"device": results["device"], "machine": results["machine"]}
    line = {"arch": results["arch"], "dtype": results["dtype"], **where, **best, **speeds, **training_ratios}
    return {**line, **at_budget}
