"""The config of a gpthf model exported as a Hugging Face `trust_remote_code` folder.

`gpthf` holds the checkpoint's own config.json (arch, vocabulary, data config, context): the model is
built from it by the installed `gpthf` package, exactly as `gpthf` builds it, so no field is
translated and nothing can drift. The other fields are what Hugging Face's tools read.
"""

from __future__ import annotations

from transformers import PretrainedConfig


class GPTHFConfig(PretrainedConfig):
    model_type = "gpthf"

    def __init__(self, gpthf: dict | None = None, **kwargs):
        self.gpthf = gpthf or {}
        super().__init__(**kwargs)
