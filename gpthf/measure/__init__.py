"""Measurement of GPTHF against the equal-size GPT: FLOPs, decode speed, state bytes, training speed."""

# The benchmarks' `--device`: the CPU unless asked, so a figure never moves to a GPU because one
# happens to be present (its machine is named in every result; gpthf.measure.timing.machine_name).
DEFAULT_DEVICE = "cpu"
DEVICE_HELP = "where models, prompts and caches live: cpu (default), cuda, cuda:N, or auto"
