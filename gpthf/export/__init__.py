"""Hugging Face model folders: `python -m gpthf export --ckpt RUN --out DIR` (gpthf.export.folder),
and such a folder read back by `--ckpt DIR` (gpthf.export.load).

A GPT goes out as a plain `LlamaForCausalLM` (gpthf.export.llama), every other kind as a
`trust_remote_code` folder running the installed gpthf (gpthf.export.remote_code). `prompt_ids`
tokenizes a text as gpthf's generator does, for `generate()` on either. Importing this package does
not import transformers: only writing a folder and running one in transformers need it.
"""

from __future__ import annotations

from gpthf.export.tokenizer import prompt_ids

EXPORT_DTYPES = ("fp32", "bf16")  # --dtype of the stored weights (gpthf.precision's names)

__all__ = ["EXPORT_DTYPES", "prompt_ids"]
