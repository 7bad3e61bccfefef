"""``TokenizerModule``: the Lightning shell that trains a ``BitwiseTokenizer`` (Infinity, arXiv 2412.04431, §3.1).

Loss of the tokenizer (generator side of the GAN):

    L = l1_weight·|x̂ − x|₁ + perceptual_weight·LPIPS(x̂, x) + gan_weight·(−D(x̂)) + commitment + BSQ entropy

(the commitment and entropy weights belong to the quantizer, ``TokenizerConfig.commit_weight`` /
``entropy_weight``). The PatchGAN discriminator is its own module with its own optimiser, trained with
the hinge loss plus ``lecam_weight``·LeCam; both the adversarial term and the discriminator updates
start at ``disc_start_step`` (counted in training batches). Optimisation is Lightning 2 manual
optimisation (the pattern of Lightning's GAN example); with ``gan_weight: 0`` no discriminator is built.

Optimiser: AdamW with the warm-up + cosine / constant schedule of ``model.optimizer``
(``infinity_lit.training.OptimizerConfig``; defaults ``TOKENIZER_OPTIMIZER``), stepped once per training
batch; the discriminator's optimiser shares it except for ``disc_learning_rate``.

The frozen LPIPS network is a frozen stage (``infinity_lit.training.FrozenStages``): saved by reference
(``lpips_weights``), never in the checkpoint.

EMA weights: add Lightning's ``EMAWeightAveraging`` callback (with ``use_buffers: false``); the checkpoint's
``state_dict`` then holds the averaged weights, which ``load_tokenizer`` reads.

Logged (TensorBoard): ``train/*`` and ``val/*`` (``test/*``) loss terms; ``val/psnr``, ``val/ssim`` (dB /
unitless, on [-1, 1] images through ``infinity_lit.metrics.reconstruction``, computed in fp32 whatever the
trainer's precision, so ``test`` equals ``eval recon`` on the same checkpoint and split); ``val/psnr_scale_k``
for decoding from the first k scales; ``val/bit_usage`` (histogram of P(bit = 1) per bit),
``val/bit_entropy_mean`` / ``_min`` (bits, at most 1); ``val/codebook_utilisation`` (distinct codes seen
/ min(2^d, positions)); ``data/skipped_samples`` when the data module counts them; an image grid of
originals (top row) and reconstructions from 1, 2, …, K scales (rows below). The ``val/*`` values are over
the whole split on several devices too: batch-size-weighted means summed over the ranks, bit statistics and
distinct codes gathered from every rank (the grid is rank 0's).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor

from infinity_lit.checkpoints import TOKENIZER
from infinity_lit.metrics.reconstruction import psnr, ssim
from infinity_lit.training.callbacks import (
    SKIPPED_LOGGED_AT,
    epoch_means,
    log_epoch_means,
    log_skipped_samples,
)
from infinity_lit.training.frozen import FrozenStages
from infinity_lit.training.optim import OptimizerConfig, trainable_parameters
from infinity_lit.training.seeding import RANDOM_STREAMS, RandomStreams, run_seed

from .discriminator import NormKind, PatchDiscriminator
from .losses import LPIPS, LeCamEMA, hinge_d_loss, hinge_g_loss
from .model import BitwiseTokenizer, TokenizerConfig

log = logging.getLogger(__name__)

#: The tokenizer's default optimiser: AdamW (0.5, 0.9), no weight decay, constant learning rate.
TOKENIZER_OPTIMIZER = OptimizerConfig(
    learning_rate=1e-4,
    betas=(0.5, 0.9),
    weight_decay=0.0,
    warmup_steps=0,
    lr_schedule="constant",
    decay_steps=None,
    min_lr_ratio=0.1,
)


class TokenizerModule(FrozenStages, pl.LightningModule):
    """Trains a ``BitwiseTokenizer`` with L1 (+ LPIPS) (+ PatchGAN hinge / LeCam) + commitment + entropy.

    Args:
        tokenizer: the architecture (``TokenizerConfig``; a mapping of its fields is accepted too, as stored
            in checkpoints).
        l1_weight: weight of the mean absolute error on [-1, 1] pixels.
        perceptual_weight: weight of LPIPS; used only when ``lpips_weights`` is given.
        lpips_weights: local file with LPIPS (VGG) weights (see ``LPIPS.from_weights``); unset = no
            perceptual loss (logged once).
        lpips_vgg_weights: local torchvision vgg16 state dict, when ``lpips_weights`` holds only the
            linear layers.
        gan_weight: weight of the generator hinge loss; 0 = no GAN (no discriminator is built).
        lecam_weight: weight of the LeCam regulariser in the discriminator loss (0 = off).
        lecam_decay: EMA decay of LeCam's running logit means.
        disc_start_step: training batch from which the adversarial term and discriminator updates run.
        disc_base_channels: PatchGAN width.
        disc_num_layers: PatchGAN stride-2 layers.
        disc_norm: PatchGAN normalisation ("group", "batch", "none").
        optimizer: AdamW and learning-rate schedule of both optimisers (``OptimizerConfig``; a mapping of
            its fields is accepted too, missing ones taken from ``TOKENIZER_OPTIMIZER``); its
            ``learning_rate`` is the tokenizer's, its ``weight_decay`` applies to every parameter. The
            cosine horizon is ``decay_steps`` or the trainer's total steps.
        disc_learning_rate: AdamW learning rate of the discriminator.
        grad_clip_norm: clip the global gradient norm of each optimiser to this value (None = no clipping).
        num_log_images: images in the validation / test reconstruction grid (0 = no grid).

    Raises:
        ValueError: negative weights or sizes, or an invalid ``optimizer`` (see ``OptimizerConfig``).
    """

    #: Frozen and saved by reference (``lpips_weights``); None when the perceptual loss is off.
    frozen_stages = ("perceptual",)
    #: What this module's checkpoints are (``--ckpt_path`` of another model's is refused by name).
    checkpoint_kind = TOKENIZER

    def __init__(
        self,
        tokenizer: TokenizerConfig | None = None,
        l1_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        lpips_weights: str | None = None,
        lpips_vgg_weights: str | None = None,
        gan_weight: float = 0.1,
        lecam_weight: float = 0.001,
        lecam_decay: float = 0.99,
        disc_start_step: int = 20_000,
        disc_base_channels: int = 64,
        disc_num_layers: int = 3,
        disc_norm: NormKind = "group",
        optimizer: OptimizerConfig = TOKENIZER_OPTIMIZER,
        disc_learning_rate: float = 1e-4,
        grad_clip_norm: float | None = None,
        num_log_images: int = 8,
    ) -> None:
        super().__init__()
        if tokenizer is None:
            tokenizer = TokenizerConfig()
        elif isinstance(tokenizer, Mapping):
            tokenizer = TokenizerConfig.from_dict(tokenizer)
        optimizer = OptimizerConfig.coerce(optimizer, TOKENIZER_OPTIMIZER)
        for name, value in (
            ("l1_weight", l1_weight),
            ("perceptual_weight", perceptual_weight),
            ("gan_weight", gan_weight),
            ("lecam_weight", lecam_weight),
            ("disc_start_step", disc_start_step),
            ("num_log_images", num_log_images),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.save_hyperparameters(ignore=["tokenizer", "optimizer"])
        # The configs are stored as plain types so that checkpoints load with weights_only=True.
        self.hparams["tokenizer"] = tokenizer.to_dict()
        self.hparams["optimizer"] = optimizer.to_dict()
        self.optimizer_config = optimizer
        self.automatic_optimization = False

        self.tokenizer = BitwiseTokenizer(tokenizer)
        self.discriminator = (
            PatchDiscriminator(disc_base_channels, disc_num_layers, disc_norm) if gan_weight > 0 else None
        )
        self.lecam = LeCamEMA(lecam_decay) if gan_weight > 0 and lecam_weight > 0 else None
        self.perceptual: LPIPS | None = None
        if perceptual_weight > 0 and lpips_weights is not None:
            self.perceptual = LPIPS.from_weights(lpips_weights, lpips_vgg_weights)
        elif perceptual_weight > 0:
            rank_zero_only(log.warning)(
                "perceptual (LPIPS) loss is off: perceptual_weight is %s but no lpips_weights path is given "
                "(nothing is downloaded); set model.lpips_weights to a local LPIPS state dict to use it, or "
                "perceptual_weight to 0 to silence this message",
                perceptual_weight,
            )
        #: The scale-dropping draw of every training batch, from the run's seed; saved in the checkpoint.
        self.random_streams = RandomStreams(("scale_drop",))
        self.freeze_stages()
        self._reset_eval_stats()
        # Validation / test metrics as batch-size-weighted epoch means that sum exactly over ranks
        # (``training.callbacks.log_epoch_means``); keyed "val_psnr" for "val/psnr" (a module name has no "/" or ".").
        names = ["l1", "commit", "entropy", "psnr", "ssim"] + (
            ["perceptual"] if self.perceptual is not None else []
        )
        names += [f"psnr_scale_{k}" for k in range(1, len(tokenizer.scale_schedule) + 1)]
        self.eval_means = epoch_means(names)

    # ------------------------------------------------------------------ set-up
    @property
    def config(self) -> TokenizerConfig:
        return self.tokenizer.config

    def on_fit_start(self) -> None:
        # The run's seed, unless a resumed checkpoint brought the streams' own.
        self.random_streams.start(run_seed(), self.global_rank)
        super().on_fit_start()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RANDOM_STREAMS] = self.random_streams.state_dict()
        checkpoint[SKIPPED_LOGGED_AT] = getattr(self, SKIPPED_LOGGED_AT, None)
        super().on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if isinstance(checkpoint.get(RANDOM_STREAMS), Mapping):
            self.random_streams.load_state_dict(checkpoint[RANDOM_STREAMS])
        setattr(self, SKIPPED_LOGGED_AT, checkpoint.get(SKIPPED_LOGGED_AT))
        super().on_load_checkpoint(checkpoint)

    def setup(self, stage: str) -> None:
        """Compare the data module's image resolution with the tokenizer's stride and schedule.

        Raises:
            ValueError: the resolution is not divisible by the stride or does not fit the schedule.
        """
        super().setup(stage)
        check_data_resolution(
            self.trainer if self._trainer is not None else None,
            self.tokenizer.stride,
            self.tokenizer.scale_schedule[-1],
            tuple(self.config.image_size),
            schedule_option="model.tokenizer.scale_schedule",
            stride_option="model.tokenizer.channel_multipliers",
        )
        check_bucket_sizes(self.trainer if self._trainer is not None else None, self.tokenizer)

    def configure_optimizers(self) -> Any:
        """AdamW for the tokenizer (and the discriminator), each with the ``optimizer`` schedule.

        Each takes its network's parameters as the strategy wrapped them (``trainable_parameters``).

        Raises:
            ValueError: a cosine schedule with neither ``optimizer.decay_steps`` nor a finite trainer horizon.
        """
        opt = self.optimizer_config
        optimizers = [opt.adamw([p for _, p in trainable_parameters(self.tokenizer)])]
        if self.discriminator is not None:
            optimizers.append(
                opt.adamw(
                    [p for _, p in trainable_parameters(self.discriminator)],
                    learning_rate=self.hparams.disc_learning_rate,
                )
            )
        total = opt.horizon(self._trainer)
        return optimizers, [opt.scheduler(o, total) for o in optimizers]

    # ------------------------------------------------------------------ training
    def _gan_active(self) -> bool:
        # global_step counts tokenizer updates = training batches done before this one.
        return self.discriminator is not None and self.global_step >= self.hparams.disc_start_step

    def _images(self, batch: Any) -> Tensor:
        images = batch["image"] if isinstance(batch, Mapping) else batch
        if not isinstance(images, Tensor):
            raise TypeError("a batch must be a dict with an 'image' tensor (B, 3, H, W) in [-1, 1]")
        return images

    def _reconstruction_losses(self, images: Tensor, recon: Tensor) -> dict[str, Tensor]:
        recon = recon.float()
        losses = {"l1": (recon - images.float()).abs().mean()}
        if self.perceptual is not None:
            losses["perceptual"] = self.perceptual(recon, images.float()).mean()
        return losses

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images = self._images(batch)
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        schedulers = self.lr_schedulers()
        schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
        hp = self.hparams
        gan_on = self._gan_active()

        opt_g = optimizers[0]
        self.random_streams.next_batch()
        with self.toggled_optimizer(opt_g):
            recon, q = self.tokenizer(images, generator=self.random_streams.generator("scale_drop"))
            terms = self._reconstruction_losses(images, recon)
            loss = hp.l1_weight * terms["l1"] + q.commit_loss + q.entropy_loss
            if "perceptual" in terms:
                loss = loss + hp.perceptual_weight * terms["perceptual"]
            if gan_on:
                terms["gan_g"] = hinge_g_loss(self.discriminator(recon))
                loss = loss + hp.gan_weight * terms["gan_g"]
            terms.update(commit=q.commit_loss, entropy=q.entropy_loss, loss=loss)
            self.loss_terms = terms  # what training.finite.NonFiniteGuard checks before each step
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            if hp.grad_clip_norm is not None:
                self.clip_gradients(
                    opt_g, gradient_clip_val=hp.grad_clip_norm, gradient_clip_algorithm="norm"
                )
            opt_g.step()
        schedulers[0].step()

        if gan_on:
            opt_d = optimizers[1]
            with self.toggled_optimizer(opt_d):
                logits_real = self.discriminator(images.detach())
                logits_fake = self.discriminator(recon.detach())
                d_loss = hinge_d_loss(logits_real, logits_fake)
                terms["disc"] = d_loss
                if self.lecam is not None:
                    terms["lecam"] = self.lecam(logits_real, logits_fake)
                    d_loss = d_loss + hp.lecam_weight * terms["lecam"]
                    # The running means follow the logits of all ranks (the global batch), so every rank
                    # keeps the same LeCam state (one process: the local logits as they are).
                    self.lecam.update(
                        self.all_gather(logits_real.detach()), self.all_gather(logits_fake.detach())
                    )
                self.loss_terms = {k: terms[k] for k in ("disc", "lecam") if k in terms}
                opt_d.zero_grad(set_to_none=True)
                self.manual_backward(d_loss)
                if hp.grad_clip_norm is not None:
                    self.clip_gradients(
                        opt_d, gradient_clip_val=hp.grad_clip_norm, gradient_clip_algorithm="norm"
                    )
                # Stepped through the strategy (precision plugin included) rather than ``opt_d.step()``: a
                # LightningOptimizer step adds 1 to ``global_step``, and ``global_step`` / ``max_steps`` /
                # checkpoint names should count training batches whether or not the discriminator runs.
                self.trainer.strategy.optimizer_step(opt_d.optimizer, closure=_no_closure)
            schedulers[1].step()
            terms["logits_real"] = logits_real.detach().float().mean()
            terms["logits_fake"] = logits_fake.detach().float().mean()

        batch_size = images.shape[0]
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in terms.items()}, prog_bar=False, batch_size=batch_size
        )
        self.log("train/loss_total", loss.detach(), prog_bar=True, batch_size=batch_size)
        self.log("train/lr", schedulers[0].get_last_lr()[0], batch_size=batch_size)
        return loss.detach()

    def on_train_epoch_end(self) -> None:
        log_skipped_samples(self)

    # ------------------------------------------------------------------ validation / test
    def _reset_eval_stats(self) -> None:
        self._bit_ones: Tensor | None = None
        self._bit_count = 0
        self._codes_seen: list[Tensor] = []
        self._grid_logged = False

    def on_validation_epoch_start(self) -> None:
        self._reset_eval_stats()

    def on_test_epoch_start(self) -> None:
        self._reset_eval_stats()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")
        log_skipped_samples(self)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def _eval_step(self, batch: Any, stage: str) -> None:
        # Validation and test run in fp32 whatever the trainer's precision, so that ``tokenizer test`` and
        # ``eval recon`` (``evaluation.recon``, fp32) give the same PSNR / SSIM for one checkpoint and split.
        with torch.autocast(self.device.type, enabled=False):
            self._eval_step_fp32(batch, stage)

    def _eval_step_fp32(self, batch: Any, stage: str) -> None:
        images = self._images(batch).float()
        batch_size = images.shape[0]
        recon, q = self.tokenizer(images)
        recon = recon.float()
        terms = self._reconstruction_losses(images, recon)
        terms.update(commit=q.commit_loss, entropy=q.entropy_loss)
        metrics = {f"{stage}/{k}": v for k, v in terms.items()}
        # Scored as saved: clamped to the image range, as ``eval recon`` does.
        metrics[f"{stage}/psnr"] = psnr(recon.clamp(-1, 1), images)
        metrics[f"{stage}/ssim"] = ssim(recon.clamp(-1, 1), images)

        # Progressive decoding: the first k scales' codes are the same whatever follows them.
        K = len(q.codes)
        progressive = []
        hw = q.quantized.shape[-2:]  # the latent grid of this batch (an aspect-ratio bucket's own)
        for k in range(1, K + 1):
            recon_k = (
                recon
                if k == K
                else self.tokenizer.decode(
                    self.tokenizer.quantizer.codes_to_quantized(q.codes[:k], hw)
                ).float()
            )
            metrics[f"{stage}/psnr_scale_{k}"] = psnr(recon_k.clamp(-1, 1), images)
            progressive.append(recon_k)
        log_epoch_means(self, self.eval_means, metrics, batch_size)

        bits = torch.cat(q.bits, dim=1)  # (B, Σ h_k·w_k, d)
        ones = bits.sum(dim=(0, 1)).double()
        self._bit_ones = ones if self._bit_ones is None else self._bit_ones + ones
        self._bit_count += bits.shape[0] * bits.shape[1]
        if self.tokenizer.codebook_dim <= 63:
            self._codes_seen.append(torch.unique(self.tokenizer.quantizer.bsq.bits_to_indices(bits)))

        if not self._grid_logged and self.hparams.num_log_images > 0:
            self._log_grid(images, progressive, stage)
            self._grid_logged = True

    def _eval_epoch_end(self, stage: str) -> None:
        if self._bit_ones is None:
            return
        ones, count = (
            self._bit_ones,
            torch.tensor(float(self._bit_count), dtype=torch.float64, device=self.device),
        )
        if self.trainer.world_size > 1:
            ones = self.all_gather(ones).sum(0)
            count = self.all_gather(count).sum()
        p = (ones / count).float()  # (d,) P(bit = 1)
        entropy = -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p)) / torch.log(torch.tensor(2.0))  # bits
        self.log(f"{stage}/bit_entropy_mean", entropy.mean(), rank_zero_only=True)
        self.log(f"{stage}/bit_entropy_min", entropy.min(), rank_zero_only=True)
        self.log(f"{stage}/bit_usage_min", p.min(), rank_zero_only=True)
        self.log(f"{stage}/bit_usage_max", p.max(), rank_zero_only=True)
        if self._codes_seen:
            codes = torch.unique(torch.cat(self._codes_seen))
            if self.trainer.world_size > 1:
                # The distinct codes of all ranks: each rank's list padded with -1 to the longest one
                # (all_gather needs equal shapes).
                longest = int(self.all_gather(torch.tensor(codes.numel(), device=codes.device)).max())
                padded = torch.full((longest,), -1, dtype=codes.dtype, device=codes.device)
                padded[: codes.numel()] = codes
                codes = torch.unique(self.all_gather(padded))
                codes = codes[codes >= 0]
            unique = codes.numel()
            possible = min(2**self.tokenizer.codebook_dim, int(count.item()))
            self.log(f"{stage}/codebook_utilisation", unique / possible, rank_zero_only=True)
            self.log(f"{stage}/codebook_unique_codes", float(unique), rank_zero_only=True)
        experiment = self._tensorboard()
        if experiment is not None:
            experiment.add_histogram(f"{stage}/bit_usage", p.cpu(), self.global_step)

    def _tensorboard(self) -> Any:
        if self.logger is None or self.trainer.sanity_checking:
            return None
        experiment = getattr(self.logger, "experiment", None)
        return experiment if hasattr(experiment, "add_image") else None

    def _log_grid(self, images: Tensor, progressive: list[Tensor], stage: str) -> None:
        experiment = self._tensorboard()
        if experiment is None:
            return
        n = min(self.hparams.num_log_images, images.shape[0])
        grid = reconstruction_grid(images[:n], [r[:n] for r in progressive])
        experiment.add_image(f"{stage}/reconstructions", grid, self.global_step)


def _no_closure() -> None:
    return None


def reconstruction_grid(images: Tensor, reconstructions: list[Tensor]) -> Tensor:
    """Grid image: originals in the top row, then one row per reconstruction.

    Args:
        images: (n, 3, H, W) in [-1, 1].
        reconstructions: list of (n, 3, H, W) in [-1, 1] (e.g. from 1, 2, …, K scales).

    Returns:
        (3, H', W') float in [0, 1] (torchvision ``make_grid``, 2-pixel padding).
    """
    from torchvision.utils import make_grid

    rows = torch.cat([images.float(), *(r.float() for r in reconstructions)], dim=0)
    return make_grid((rows.clamp(-1, 1) + 1) / 2, nrow=images.shape[0], padding=2, pad_value=1.0)


def check_bucket_sizes(trainer: Any, tokenizer: BitwiseTokenizer) -> None:
    """Check, before training, that every aspect-ratio bucket of the data module (``bucket_sizes``) has a
    scale schedule in ``tokenizer`` (``BitwiseTokenizer.check_bucket_sizes``).

    Raises:
        ValueError: naming the bucket, its size and the sizes that would fit.
    """
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    tokenizer.check_bucket_sizes(getattr(datamodule, "bucket_sizes", None) or {}, "the data")


def check_data_resolution(
    trainer: Any,
    stride: int,
    last: Sequence[int],
    image_size: tuple[int, int],
    schedule_option: str | None,
    stride_option: str | None,
) -> None:
    """Compare the data module's image resolution with a tokenizer's stride and last scale, before training.

    Args:
        trainer: the Trainer whose ``datamodule`` has a ``resolution`` (None, or no resolution: no check).
        stride: the tokenizer's downsampling factor; ``last``: the (h, w) of its schedule's last scale.
        image_size: the (H, W) the tokenizer was built for (``last`` × ``stride``).
        schedule_option / stride_option: the options that set them, for the message (None: they come from a
            checkpoint and cannot be changed here).

    Raises:
        ValueError: the resolution is not divisible by the stride or does not give the schedule's last grid;
            the message says which option to set.
    """
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    resolution = getattr(datamodule, "resolution", None)
    if resolution is None:
        resolution = getattr(datamodule, "hparams", {}).get("resolution")
    if resolution is None:
        return
    h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    fit_h, fit_w = image_size
    fit = fit_h if fit_h == fit_w else f"{fit_h}×{fit_w}"
    last = tuple(last)
    source = "" if stride_option is None else f" ({stride_option})"
    if h % stride or w % stride:
        raise ValueError(
            f"data resolution {h}×{w} is not divisible by the tokenizer stride {stride}{source}; set "
            f"data.resolution to {fit} for the scale schedule ending at {last}"
        )
    if (h // stride, w // stride) != last:
        where = schedule_option or "the tokenizer checkpoint's scale schedule"
        change = f" or end the schedule at [{h // stride}, {w // stride}]" if schedule_option else ""
        raise ValueError(
            f"data resolution {h}×{w} gives a {h // stride}×{w // stride} latent grid at stride {stride}, but "
            f"{where} ends at {last[0]}×{last[1]}; set data.resolution to {fit}{change}"
        )
