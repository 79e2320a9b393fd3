"""Registered PEFT methods. Importing this package registers every built-in method."""

from . import clipfit, maple, prompts, zeroshot  # noqa: F401  (registration side effect, in this order)
from . import adapters, lora, vpt  # noqa: F401,I001
from .base import METHODS, Method, MethodConfig, build_method, get_method, method_config, register_method

__all__ = ["METHODS", "Method", "MethodConfig", "build_method", "get_method", "method_config", "register_method"]
