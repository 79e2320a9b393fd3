"""Registered PEFT methods, one module per method (shared pieces: `base`, `registry`, `heads`,
`prompt_learner`, `frozen_features`). Importing this package registers every built-in method; their
listing order is the `METHODS` registry's own (`order=`), not this import order."""

from . import (  # noqa: F401  (registration side effect)
    bitfit,
    clip_adapter,
    clipfit,
    cocoop,
    coop,
    kgcoop,
    linear_probe,
    lora,
    maple,
    prograd,
    tip_adapter,
    vpt,
    zeroshot,
)
from .base import NO_TRAINING, Loss, Method, MethodConfig, Regime
from .heads import HEAD_TYPES, HeadConfig, HeadedMethod
from .registry import (
    METHODS,
    build_method,
    get_method,
    method_config,
    method_regime,
    register_method,
    register_variant,
)

__all__ = ["HEAD_TYPES", "METHODS", "NO_TRAINING", "HeadConfig", "HeadedMethod", "Loss", "Method", "MethodConfig",
           "Regime", "build_method", "get_method", "method_config", "method_regime", "register_method",
           "register_variant"]
