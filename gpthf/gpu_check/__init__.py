"""`python -m gpthf gpu-check`: the CUDA paths run and measured on one GPU (see `check.py`).

Imports nothing beyond the standard library until a GPU is asked for, so the command's own error
lines come before any package the box may lack is needed.
"""
