"""gpthf: train, serve and measure GPTHF (Generative Pretrained Thoughtformer) beside an equal-size GPT."""

from gpthf.errors import ConfigError, DataError, GpthfError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "GpthfError", "__version__"]
