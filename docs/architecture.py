"""Draw docs/architecture.png: GPTHF's encoder per sentence, sentence embeddings, body, and generation cache.

python docs/architecture.py                 # writes docs/architecture.png
python docs/architecture.py /tmp/arch.png   # writes somewhere else
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

# Three sentences of a packed row; the last one is in progress (generation) or simply the last (training).
SENTENCES = [["In", "the", "beginning", "<eos>"], ["And", "God", "said", "<eos>"], ["Let", "there", "be"]]
ENC_COLORS = ["#cfe2f3", "#d9ead3", "#fff2cc"]
BODY_COLOR = "#ead1dc"
CACHE_COLOR = "#f4cccc"


def box(ax, x, y, w, h, text, color, size=8, weight="normal"):
    ax.add_patch(
        FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec="#444")
    )
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, weight=weight)


def arrow(ax, start, end, color="#333", style="-|>", rad=0.0, lw=1.0, ls="-"):
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle=style,
            mutation_scale=9,
            color=color,
            lw=lw,
            ls=ls,
            connectionstyle=f"arc3,rad={rad}",
        )
    )


def draw_model(ax):
    """Left: the forward pass over one packed row (training, and prefill at generation)."""
    ax.set_title("GPTHF forward pass over one row", fontsize=11, weight="bold")
    x, token_x = 0.3, []
    for s, words in enumerate(SENTENCES):
        xs = []
        for word in words:
            box(ax, x, 0.3, 0.9, 0.5, word, "white", size=7)
            xs.append(x + 0.45)
            x += 1.0
        token_x.append(xs)
        # the encoder sees this sentence only
        left, right = xs[0] - 0.45, xs[-1] + 0.45
        box(
            ax,
            left,
            1.3,
            right - left,
            0.9,
            f"word-level encoder (n_enc blocks)\nsentence {s} only, causal",
            ENC_COLORS[s],
            7,
        )
        for tx in xs:
            arrow(ax, (tx, 0.8), (tx, 1.3))
        x += 0.3
    ax.text(
        0.3, 0.05, "RoPE position in the encoder = position inside the sentence", fontsize=7, style="italic"
    )

    # sentence embeddings at <eos>
    ends = []
    for s in range(len(SENTENCES) - 1):
        ex = token_x[s][-1]
        box(ax, ex - 0.7, 2.7, 1.4, 0.55, f"e{s}\n(state at <eos>)", "#ffffff", 7, "bold")
        arrow(ax, (ex, 2.2), (ex, 2.7))
        ends.append(ex)

    # the body: a token of the last sentence attends to e0, e1 and itself
    box(ax, 0.3, 3.8, x - 0.6, 0.9, "", BODY_COLOR)
    ax.text(
        x / 2,
        4.45,
        "sentence-level body (n_body blocks)",
        ha="center",
        va="center",
        fontsize=8,
        weight="bold",
    )
    q = token_x[2][1]
    arrow(ax, (q, 2.2), (q, 3.8), color="#a61c00", lw=1.4)
    for ex in ends:
        arrow(ax, (ex, 3.25), (q - 0.1, 3.8), color="#a61c00", rad=-0.15, lw=1.2, ls="--")
    ax.text(
        0.45,
        3.9,
        "a token of sentence k attends to the embeddings of sentences 0..k-1 and to itself;\n"
        "RoPE position in the body = sentence index",
        fontsize=7,
        color="#a61c00",
    )
    box(
        ax,
        0.3,
        5.0,
        x - 0.6,
        0.55,
        "final norm → tied output head → next-token logits at every position",
        "#eeeeee",
        8,
    )
    arrow(ax, (x / 2, 4.7), (x / 2, 5.0))
    ax.set_xlim(0, x)
    ax.set_ylim(0, 5.8)


def draw_cache(ax):
    """Right: what cached generation keeps, GPTHF against the equal-size GPT."""
    ax.set_title("What the generation cache keeps", fontsize=11, weight="bold")
    n_tokens = 11  # the row on the left
    # GPTHF body cache: one entry per finished sentence and body layer
    ax.text(0.2, 5.35, "GPTHF", fontsize=9, weight="bold")
    for layer in range(2):
        y = 4.6 - layer * 0.55
        ax.text(0.2, y + 0.2, f"body layer {layer}", fontsize=7)
        for s in range(2):
            box(ax, 1.8 + s * 0.75, y, 0.65, 0.4, f"e{s} K/V", BODY_COLOR, 6)
    ax.text(
        3.4,
        4.5,
        "one entry per finished sentence\n(n_body × S): a finished sentence\nnever enters the network again",
        fontsize=7,
    )
    for layer in range(3):
        y = 3.2 - layer * 0.55
        ax.text(0.2, y + 0.2, f"encoder layer {layer}", fontsize=7)
        for t, word in enumerate(SENTENCES[2]):
            box(ax, 1.8 + t * 0.75, y, 0.65, 0.4, word, ENC_COLORS[2], 6)
    ax.text(4.2, 2.5, "the sentence in progress only\n(n_enc × s), reset after its <eos>", fontsize=7)

    # GPT KV cache: every token, every layer
    ax.text(0.2, 1.3, "equal-size GPT", fontsize=9, weight="bold")
    for layer in range(2):
        y = 0.75 - layer * 0.6
        ax.text(0.2, y + 0.12, "layer 0" if layer == 0 else "last layer", fontsize=7)
        for t in range(n_tokens):
            box(ax, 2.1 + t * 0.4, y, 0.34, 0.35, "", CACHE_COLOR, 5)
    ax.text(6.6, 0.45, "K/V of every token\n((n_enc + n_body) × T)", fontsize=7)
    ax.set_xlim(0, 8.6)
    ax.set_ylim(0, 5.8)


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(__file__).with_name("architecture.png")
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5.2), gridspec_kw={"width_ratios": [1.45, 1]})
    for ax in (left, right):
        ax.axis("off")
    draw_model(left)
    draw_cache(right)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
