"""CLIPFit: parameter-efficient fine-tuning of CLIP-style vision-language models."""
