"""Bitwise generator (Infinity, arXiv 2412.04431, §3.2–3.4): next-scale transformer, BSC, sampling.

Everything imported here is pure torch. The Lightning shell ``GeneratorModule`` lives in
``infinity_lit.generator.module``; import it by its full path. ``load_generator``
(``infinity_lit.generator.checkpoint``) rebuilds a trained generator without Lightning.
"""

from .checkpoint import LoadedGenerator, load_generator
from .sampling import SampleOutput, ScaleAccumulator, sample
from .self_correction import BitwiseSelfCorrection, BSCOutput, self_correction_rate, teacher_forcing_inputs
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
    "LoadedGenerator",
    "MiniLMTextEncoder",
    "SampleOutput",
    "ScaleAccumulator",
    "T5TextEncoder",
    "TextEncoder",
    "TextFeatures",
    "TransformerConfig",
    "build_text_encoder",
    "load_generator",
    "next_scale_input",
    "sample",
    "self_correction_rate",
    "teacher_forcing_inputs",
]
