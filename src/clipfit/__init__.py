"""CLIPFit: parameter-efficient fine-tuning of CLIP-style vision-language models."""

__version__ = "0.1.0"
