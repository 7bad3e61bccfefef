"""infinity-lit: bitwise visual autoregressive modelling (Infinity, arXiv 2412.04431) with PyTorch Lightning.

Sub-packages:
    quantizer   BSQ / LFQ and the multi-scale residual quantizer (pure torch).
    tokenizer   Encoder / decoder / discriminator networks and ``TokenizerModule``.
    generator   ``BitwiseTransformer`` (IVC head), Bitwise Self-Correction, sampling, ``GeneratorModule``.
    data        OpenMoji / image-folder shard builders and the webdataset ``ShardDataModule``.
    evaluation  FID / KID, CLIP score, PSNR / SSIM and reports.
"""

__version__ = "0.1.0"
