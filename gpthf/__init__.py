"""gpthf: train, serve and measure GPTHF (Generative Pretrained Thoughtformer) beside an equal-size GPT."""

from gpthf.errors import CheckpointError, ConfigError, DataError, GpthfError

__version__ = "0.1.0"
__all__ = ["CheckpointError", "ConfigError", "DataError", "GpthfError", "__version__"]
