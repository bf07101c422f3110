"""The two files a `trust_remote_code` folder carries, copied verbatim by `python -m gpthf export`.

They are modules of the package too, so tests import them and ruff checks them like any other code.
"""
