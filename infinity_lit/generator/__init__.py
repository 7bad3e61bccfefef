"""Bitwise generator (Infinity, arXiv 2412.04431, §3.2–3.4): next-scale transformer, BSC, sampling.

Everything imported here is pure torch. The Lightning shell ``GeneratorModule`` lives in
``infinity_lit.generator.module`` and the CLIs in ``infinity_lit.generator.cli`` (``infinity-lit generator``)
and ``infinity_lit.generator.sample_cli`` (``infinity-lit sample``); import them by their full path.
"""

from .bsc import BitwiseSelfCorrection, BSCOutput, self_correction_rate, teacher_forcing_inputs
from .sampling import SampleOutput, ScaleAccumulator, sample
from .text_encoders import (
    CLIPTextEncoder,
    MiniLMTextEncoder,
    T5TextEncoder,
    TextEncoder,
    TextFeatures,
    build_text_encoder,
)
from .transformer import PRESETS, BitwiseTransformer, TransformerConfig, next_scale_input

__all__ = [
    "PRESETS",
    "BSCOutput",
    "BitwiseSelfCorrection",
    "BitwiseTransformer",
    "CLIPTextEncoder",
    "MiniLMTextEncoder",
    "SampleOutput",
    "ScaleAccumulator",
    "T5TextEncoder",
    "TextEncoder",
    "TextFeatures",
    "TransformerConfig",
    "build_text_encoder",
    "next_scale_input",
    "sample",
    "self_correction_rate",
    "teacher_forcing_inputs",
]
