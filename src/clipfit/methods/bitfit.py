"""BitFit on CLIP and LayerNorms only: CLIPFit's Table 5 inherent-parameter strategies and a Table 6 ablation.

BitFit: Ben Zaken et al., "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked
Language-models" (ACL 2022), which trains the bias terms only; on CLIP as CLIPFit's Table 5 ran it (Li et
al., EMNLP 2024; minglllli/CLIPFit@4dde049): (a) every bias of both towers' blocks, (b) every bias of the
text blocks, (c) the text MLPs' biases, (d) the text MLPs' output-projection biases, each with the CE loss
alone, in CLIPFit's code and settings (the recipe: `recipes/clipfit_ablations.yaml`). `ln-only` trains the
image LayerNorms alone (CLIPFit Table 6).

Each is a preset of the `CLIPFit` class (its `text` / `image` selections and `regularizer`), registered
under a name of its own.
"""

from __future__ import annotations

from .clipfit import CLIPFit
from .registry import register_variant

# CLIPFit's Table 5 (BitFit strategies, trained with the CE loss alone) and Table 6's LayerNorms only.
register_variant(CLIPFit, "bitfit-all", "BitFit (a), CLIPFit Table 5: every bias in both towers' blocks, CE only",
                 text="bias", image="bias", regularizer="none")
register_variant(CLIPFit, "bitfit-text", "BitFit (b), CLIPFit Table 5: every bias in the text blocks, CE only",
                 text="bias", image="none", regularizer="none")
register_variant(CLIPFit, "bitfit-text-mlp", "BitFit (c), CLIPFit Table 5: the text MLPs' biases, CE only",
                 text="mlp-bias", image="none", regularizer="none")
register_variant(CLIPFit, "bitfit-text-proj",
                 "BitFit (d), CLIPFit Table 5: the text MLPs' output-projection biases, CE only",
                 text="mlp-output-bias", image="none", regularizer="none")
register_variant(CLIPFit, "ln-only", "CLIPFit Table 6: the image LayerNorms alone, CE only",
                 text="none", image="layernorm", regularizer="none")
