"""What makes Hugging Face's `generate()` stop and close sentences where ours does.

Our generator (gpthf.generation.slots) ends a row at `<eod>` (the document's end; `<eos>` only
ends a sentence), and closes a sentence with a forced `<eos>` once it holds `max_sentence_len - 1`
tokens, as packing chunked the training text. In Hugging Face's terms: `eos_token_id` is `<eod>`,
padding is `<pad>`, and the forced `<eos>` is a logits processor (`SentenceLengthLimit`), which the
`trust_remote_code` model adds by itself and a user of the plain Llama folder passes to `generate()`.
There is no beginning-of-text token in our data: a document follows the previous one's `<eod>`, so
`<eod>` is the `bos_token_id` `generate()` starts from when it is given no prompt at all.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from gpthf.data.special_tokens import EOD_ID, EOS_ID, PAD_ID, SENTENCE_CLOSERS

# generation_config.json's content, and the same ids in config.json. No `max_length`: transformers
# warns at every `generate(max_new_tokens=...)` call when the folder sets one.
GENERATION_IDS = {"bos_token_id": EOD_ID, "eos_token_id": EOD_ID, "pad_token_id": PAD_ID}


class SentenceLengthLimit(LogitsProcessor):
    """Forces `<eos>` where the sentence in progress holds `max_sentence_len - 1` tokens: a row's
    tokens after its last `<eos>`/`<eod>`, not counting the left padding of a batch."""

    def __init__(self, max_sentence_len: int) -> None:
        self.max_sentence_len = max_sentence_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        closes = torch.zeros_like(input_ids, dtype=torch.bool)
        for closer in SENTENCE_CLOSERS:
            closes |= input_ids == closer
        index = torch.arange(input_ids.shape[1], device=input_ids.device)
        last_close = torch.where(closes, index, -1).amax(1, keepdim=True)  # (B, 1)
        open_tokens = ((index > last_close) & (input_ids != PAD_ID)).sum(1)  # (B,)
        forced = torch.full_like(scores, -float("inf"))
        forced[:, EOS_ID] = 0.0
        return torch.where((open_tokens >= self.max_sentence_len - 1)[:, None], forced, scores)
