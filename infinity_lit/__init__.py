"""infinity-lit: bitwise visual autoregressive modelling (Infinity, arXiv 2412.04431) with PyTorch Lightning.

The package is built in floors; a module imports only from its own floor or below (the import contract
in pyproject.toml, checked by the tests):

    6  cli/          argv only: the ``infinity-lit`` dispatcher and one module per command group
    5  studies/      study spec, resumable stages, runner and launchers, comparison; the quickstart
    4  evaluation/   sample a checkpoint to a folder, score it, reconstruction records, reports
    3  generator/    text encoders, BitwiseTransformer (IVC), self-correction, sampling, GeneratorModule
    2  tokenizer/    networks, losses, BitwiseTokenizer, TokenizerModule, load_tokenizer
    1  quantizer/    BSQ / LFQ, MultiScaleBSQ and its residual step, scale schedules (pure torch)
       data/         shard builders and ShardDataModule
       metrics/      PSNR / SSIM, Inception, FID / KID, CLIP score (numbers only)
       training/     the Lightning glue both modules share (CLI set-up, callbacks, optimiser, frozen stages)
       runs.py, checkpoints.py, recipes.py   run-folder layout; checkpoint format; shipped recipes
"""

__version__ = "0.1.0"
