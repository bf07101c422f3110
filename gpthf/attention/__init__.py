"""Attention patterns of GPT and GPTHF and the backends that compute them."""

from gpthf.attention.backends import ATTENTION_BACKENDS, backend_unavailable_reason, get_backend
from gpthf.attention.body import attend_to_sentence_ends

__all__ = ["ATTENTION_BACKENDS", "attend_to_sentence_ends", "backend_unavailable_reason", "get_backend"]
