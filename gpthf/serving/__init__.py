"""Serving: the engine (the one decoding loop, gpthf.generation.engine) behind an HTTP server."""
