"""The special tokens, defined once: their strings and their ids.

The ids are the positions in `SPECIAL_TOKENS`; the tokenizer trainer is given the tokens in this order
so it assigns exactly these ids, and `gpthf.data.tokenizer` checks that it did.
"""

from __future__ import annotations

PAD = "<pad>"  # fills the tail of a packed row; never a training target
EOS = "<eos>"  # closes every sentence; its encoder state is the sentence embedding
EOD = "<eod>"  # closes every document, after its last <eos>
UNK = "<unk>"  # reserved; the byte-level BPE never needs it, but checkpoints keep the slot

SPECIAL_TOKENS: tuple[str, ...] = (PAD, EOS, EOD, UNK)

PAD_ID, EOS_ID, EOD_ID, UNK_ID = range(len(SPECIAL_TOKENS))

# Tokens after which a new sentence starts (the <eod> unit is a one-token sentence of its own).
SENTENCE_CLOSERS: tuple[int, ...] = (EOS_ID, EOD_ID)
