"""Storage format plugins (one module each) and the checkpoint reader and writer."""

from ..registry import import_submodules
from .base import FORMATS, Encoded, Format, entropy_limit_bits

import_submodules(__name__, __path__)

__all__ = ["FORMATS", "Encoded", "Format", "entropy_limit_bits"]
