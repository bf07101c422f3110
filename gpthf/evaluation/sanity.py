"""Cheap checks of sampled text: does the model end its sentences, and does it repeat itself?"""

from __future__ import annotations

from gpthf.data.special_tokens import EOD_ID, EOS_ID, SPECIAL_TOKENS


def generation_sanity(samples: list[list[int]], max_sentence_len: int) -> dict:
    """`closed_share`: generated sentences the model closed with <eos> itself, before the length limit
    forced it (a forced close is exactly max_sentence_len tokens long; an unfinished tail counts as not
    closed). `distinct_n`: distinct n-grams / all n-grams of the ordinary tokens, n = 1, 2, 3."""
    closed = total = 0
    ngrams: dict[int, list[tuple]] = {1: [], 2: [], 3: []}
    for tokens in samples:
        length = 0
        for token in tokens:
            length += 1
            if token in (EOS_ID, EOD_ID):
                total += 1
                closed += int(length < max_sentence_len)
                length = 0
        total += int(length > 0)
        words = [t for t in tokens if t >= len(SPECIAL_TOKENS)]
        for n in ngrams:
            ngrams[n].extend(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return {
        "sentences": total,
        "closed_share": closed / total if total else 0.0,
        "distinct_n": {str(n): len(set(g)) / len(g) if g else 0.0 for n, g in ngrams.items()},
    }
