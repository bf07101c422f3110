"""Measurement of GPTHF against the equal-size GPT: FLOPs, decode speed, state bytes, training speed."""
