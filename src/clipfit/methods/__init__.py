"""Registered PEFT methods. Importing this package registers every built-in method."""

from . import adapters, clipfit, lora, maple, prompts, vpt, zeroshot  # noqa: F401  (registration side effect, in this order)  # noqa: F401,I001
from .base import (
                   METHODS,
                   NO_TRAINING,
                   Loss,
                   Method,
                   MethodConfig,
                   Regime,
                   build_method,
                   get_method,
                   method_config,
                   method_regime,
                   register_method,
)

__all__ = ["METHODS", "NO_TRAINING", "Loss", "Method", "MethodConfig", "Regime", "build_method", "get_method",
           "method_config", "method_regime", "register_method"]
