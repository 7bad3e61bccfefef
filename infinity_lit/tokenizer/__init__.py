"""Bitwise multi-scale tokenizer (Infinity, arXiv 2412.04431, §3.1): networks, losses, checkpoint loading.

Everything imported here is pure torch. The Lightning shell ``TokenizerModule`` lives in
``infinity_lit.tokenizer.module``; import it by its full path
(``from infinity_lit.tokenizer.module import TokenizerModule``).
"""

from .discriminator import PatchDiscriminator
from .model import BitwiseTokenizer, TokenizerConfig, load_tokenizer
from .networks import Decoder, Encoder, straight_through_clamp

__all__ = [
    "BitwiseTokenizer",
    "Decoder",
    "Encoder",
    "PatchDiscriminator",
    "TokenizerConfig",
    "load_tokenizer",
    "straight_through_clamp",
]
