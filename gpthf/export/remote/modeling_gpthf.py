"""A gpthf model (GPTHF, linear attention, T2R, LSTM, Block-Recurrent) as a Hugging Face causal LM,
for `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`.

It imports the installed `gpthf` package instead of carrying a copy of the model. One model
definition (the one trained, tested and served here) means the folder's logits are ours by
construction, with nothing to keep in step, and `generate()` can run our own cached generation
(GPTHF's sentence cache, the recurrent kinds' fixed-size state) instead of a re-implementation of
it. The price is `pip install gpthf` wherever the folder is loaded; without it Hugging Face's
import check stops with "requires the following packages ...: gpthf".

`generate()`: the prompt goes through our strategy's `prefill` and every new token through its
`decode` (`gpthf.generation.strategies`): the strategy's state travels between the steps where
`generate()` keeps a cache (`GpthfCache`), so a finished sentence never enters the network again.
`use_cache=False` recomputes the whole context each step with the training forward (our `full`
strategy, the oracle; beam search, which reorders caches, needs it). A sentence that reaches the
training's `max_sentence_len` is closed with `<eos>` as our generator closes it (`SentenceLengthLimit`).
A plain call `model(input_ids)` returns the logits of every position, as the training forward does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, LogitsProcessorList, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from gpthf.export.hf_generation import SentenceLengthLimit
from gpthf.generation.strategies import get_strategy, pad_rows, sentence_ids_for
from gpthf.models import build_model

from .configuration_gpthf import GPTHFConfig

# Where the output carries the cache: `cache` from transformers 5, `past_key_values` before.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class GpthfCache:
    """Our strategy and its generation state, where `generate()` keeps a cache between steps."""

    is_compileable = False  # what `generate()` asks of a cache before it compiles or crops it
    is_croppable = False

    def __init__(self, strategy, state) -> None:
        self.strategy, self.state = strategy, state


def right_aligned(input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    """Rows as our strategies take them: real tokens first, then <pad>, and their lengths (B,).
    Hugging Face pads batched prompts on the left and masks the padding."""
    batch, length = input_ids.shape
    if attention_mask is None or bool(attention_mask.all()):
        return input_ids, torch.full((batch,), length, device=input_ids.device)
    rows = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]
    return pad_rows(rows, input_ids.device)


class GPTHFForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = GPTHFConfig
    base_model_prefix = "model"
    _tied_weights_keys = {"model.head.weight": "model.embed.weight"}  # the head is the embedding

    def __init__(self, config: GPTHFConfig):
        super().__init__(config)
        self.model = build_model(config.gpthf["arch"], config.gpthf["vocab_size"])
        self.post_init()

    def _init_weights(self, module) -> None:
        """Nothing: the weights come from the folder (gpthf's own init ran when the model was built)."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the state is ours (`GpthfCache`), made by the first forward

    def get_input_embeddings(self):
        return self.model.embed

    def get_output_embeddings(self):
        return self.model.head

    def _full_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, V) by the training forward, each row read without its padding."""
        tokens, lengths = right_aligned(input_ids, attention_mask)
        logits = self.model(tokens, sentence_ids_for(tokens, lengths))  # (B, T', V)
        if tokens is input_ids:
            return logits
        real = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
        out = logits.new_zeros(*input_ids.shape, logits.shape[-1])
        out[attention_mask.bool()] = logits[real]
        return out

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        past_key_values=None,
        use_cache: bool | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        state = cache if cache is not None else past_key_values
        loss = None
        if isinstance(state, GpthfCache):  # a decode step: the one new token of each row
            token = input_ids[:, -1]
            active = torch.ones_like(token, dtype=torch.bool)
            logits = state.strategy.decode(self.model, state.state, token, active)[:, None]  # (B, 1, V)
        elif use_cache:  # the prompt of a `generate()`: only its last position's logits are needed
            tokens, lengths = right_aligned(input_ids, attention_mask)
            strategy = get_strategy(self.model, "cached")
            last, prefilled = strategy.prefill(self.model, tokens, lengths)
            logits, state = last[:, None], GpthfCache(strategy, prefilled)
        else:
            logits, state = self._full_logits(input_ids, attention_mask), None
            if labels is not None:  # Hugging Face's convention: unshifted labels, -100 ignored
                loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        out = CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: state})
        return out if return_dict is not False else out.to_tuple()

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, use_cache=True, **kwargs):
        state = kwargs.get("cache", kwargs.get("past_key_values"))
        if isinstance(state, GpthfCache):
            return {"input_ids": input_ids[:, -1:], "cache": state, "use_cache": True}
        return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": use_cache}

    def generate(self, *args, logits_processor=None, **kwargs):
        """Hugging Face's `generate`, closing a sentence at the training's `max_sentence_len` as ours does."""
        limit = SentenceLengthLimit(self.config.gpthf["data"]["max_sentence_len"])
        processors = LogitsProcessorList([*(logits_processor or []), limit])
        return super().generate(*args, logits_processor=processors, **kwargs)
