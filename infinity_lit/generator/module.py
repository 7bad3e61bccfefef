"""``GeneratorModule``: the Lightning shell that trains a ``BitwiseTransformer`` (Infinity, arXiv 2412.04431).

One training step (§3.2–3.4):

    images (B,3,H,W) in [-1,1] ──frozen tokenizer.encode──► F (B,d,h,w)
    F ──BitwiseSelfCorrection(max_flip_prob)──► targets (B,L,d), next-scale inputs (B,L−1,d), flips
    captions ──frozen text encoder──► tokens / mask / pooled ──CFG dropout (→ learned null text)──►
    transformer(inputs, text) ──► logits (B,L,d,2) ──per-bit cross-entropy──► loss (nats per bit)

Frozen stages, in the open (``infinity_lit.training.FrozenStages``): the tokenizer (from
``tokenizer_checkpoint``) and the text encoder (from its kind and path) are in eval mode with
``requires_grad`` False, are not given to the optimiser and are left out of ``state_dict()`` and so of
every checkpoint; the checkpoint names them by reference (the path and kind in the hyper-parameters) and
``load_from_checkpoint`` / ``load_generator`` rebuild them.
``codebook_dim`` and the scale schedule are read from the tokenizer checkpoint; a different value in the
generator's ``transformer`` config is an error.

Optimiser: AdamW with the warm-up + cosine / constant schedule of ``model.optimizer``
(``infinity_lit.training.OptimizerConfig``; defaults ``GENERATOR_OPTIMIZER``), stepped once per training
batch; weight decay on matrices only.

Multi-device (``experiments/trainer/ddp.yaml``, ``fsdp.yaml``): the optimiser takes the transformer's
parameters as the strategy wrapped them, and the validation sample grid runs on every rank through the
wrapped model's forward (a sharded model cannot sample on one rank alone); rank 0 logs it. Under FSDP the
frozen stages stay whole on every rank, outside the sharded units (``FrozenStages``).

EMA weights: add Lightning's ``EMAWeightAveraging`` callback (``use_buffers: false``); the checkpoint's ``state_dict`` then holds
the averaged weights (used for validation samples too) and ``current_model_state`` the raw ones.

Logged (TensorBoard): ``train/loss`` and ``val/loss`` (nats per bit, teacher-forced; chance is ln 2),
``*/loss_ln2`` (the same in units of ln 2: 1 = chance), ``*/bit_acc``, per scale ``*/loss_scale_k`` and
``*/bit_acc_scale_k`` (k = 1..K), ``train/flip_prob`` (mean drawn flip probability),
``train/self_correction_rate`` and ``train/self_correction_baseline`` (see
``infinity_lit.generator.self_correction.self_correction_rate``), ``train/lr``, and at each validation a grid of
samples (images in [0,1] for display) for ``val_prompts``. The ``val/*`` / ``test/*`` values are
batch-size-weighted means over the whole split, summed over the ranks on several devices.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from infinity_lit.checkpoints import (
    FROZEN_STAGES,
    GENERATOR,
    TOKENIZER,
    TRAINED_SCHEDULES,
    CheckpointError,
    frozen_reference,
    read_checkpoint,
)
from infinity_lit.quantizer import ScaleSchedule, scale_bounds
from infinity_lit.tokenizer import load_tokenizer
from infinity_lit.tokenizer.module import check_bucket_sizes, check_data_resolution
from infinity_lit.training.callbacks import (
    SKIPPED_LOGGED_AT,
    epoch_means,
    log_epoch_means,
    log_skipped_samples,
)
from infinity_lit.training.frozen import FrozenStages
from infinity_lit.training.optim import OptimizerConfig, trainable_parameters
from infinity_lit.training.seeding import RANDOM_STREAMS, RandomStreams, run_seed

from .sampling import sample
from .self_correction import BitwiseSelfCorrection, BSCOutput, self_correction_rate
from .text_encoders import TextEncoderKind, build_text_encoder
from .transformer import BitwiseTransformer, TransformerConfig

#: The generator's default optimiser: AdamW (0.9, 0.97), weight decay 0.05, 100 warm-up steps, then cosine
#: decay to 0.1·lr over the trainer's total steps.
GENERATOR_OPTIMIZER = OptimizerConfig(
    learning_rate=3e-4,
    betas=(0.9, 0.97),
    weight_decay=0.05,
    warmup_steps=100,
    lr_schedule="cosine",
    decay_steps=None,
    min_lr_ratio=0.1,
)

DEFAULT_VAL_PROMPTS = [
    "grinning face",
    "red apple",
    "cat face",
    "sun with face",
    "red heart",
    "rocket",
    "pizza",
    "flag, Japan",
]


def transformer_config_to_dict(config: TransformerConfig) -> dict[str, Any]:
    """Plain-type dict (lists, no tuples) for hyper-parameters and checkpoints."""
    out = asdict(config)
    if out["scale_schedule"] is not None:
        out["scale_schedule"] = [list(hw) for hw in out["scale_schedule"]]
    return out


class GeneratorModule(FrozenStages, pl.LightningModule):
    """Trains a ``BitwiseTransformer`` on a frozen tokenizer's bits with BSC and CFG dropout.

    Args:
        tokenizer_checkpoint: path of the frozen tokenizer's ``.ckpt`` (from ``infinity-lit tokenizer fit``).
        transformer: the architecture; leave ``codebook_dim`` / ``scale_schedule`` / ``text_dim`` unset
            (they come from the tokenizer checkpoint and the text encoder).
        text_encoder: ``minilm`` (bundled offline, default), ``t5`` or ``clip``.
        text_encoder_path: local model directory (required for t5 / clip).
        text_max_length: text token limit.
        text_cache: keep each caption's text features in memory (a frozen encoder gives them once).
        text_cache_dir: also cache them on disk, keyed by the encoder's identity.
        cfg_dropout: probability that a caption is replaced by the learned null text (reference 0.1).
        max_flip_prob: BSC p_max in [0, 1], a multiple of 0.01 (reference 0.3; 0 = plain teacher forcing).
        bsc_requantize: True: BSC re-quantises the targets (the method); False: the "flip without
            re-quantisation" ablation.
        optimizer: AdamW and learning-rate schedule (``OptimizerConfig``; a mapping of its fields is
            accepted too, missing ones taken from ``GENERATOR_OPTIMIZER``); its ``weight_decay`` applies to
            matrices only (not to biases, norms or other 1-D parameters). The cosine horizon is
            ``decay_steps`` or the trainer's total steps (``max_steps`` or epochs × batches).
        val_prompts: prompts of the sample grid logged at each validation (empty = no grid).
        val_cfg: guidance scale of that grid.
        val_tau: temperature of that grid.
        val_top_p: top-p of that grid.
        val_seed: seed of that grid (image i uses val_seed + i).

    Raises:
        ValueError: bad probabilities or sizes; an invalid ``optimizer`` (see ``OptimizerConfig``); a
            transformer config that conflicts with the tokenizer.
        FileNotFoundError: no tokenizer checkpoint at the path.
    """

    #: Frozen and saved by reference (``tokenizer_checkpoint``; ``text_encoder`` + ``text_encoder_path``).
    frozen_stages = ("tokenizer", "text_encoder")
    #: What this module's checkpoints are (``--ckpt_path`` of another model's is refused by name).
    checkpoint_kind = GENERATOR

    def __init__(
        self,
        tokenizer_checkpoint: str,
        transformer: TransformerConfig | Mapping[str, Any] | None = None,
        text_encoder: TextEncoderKind = "minilm",
        text_encoder_path: str | None = None,
        text_max_length: int = 64,
        text_cache: bool = True,
        text_cache_dir: str | None = None,
        cfg_dropout: float = 0.1,
        max_flip_prob: float = 0.3,
        bsc_requantize: bool = True,
        optimizer: OptimizerConfig = GENERATOR_OPTIMIZER,
        val_prompts: list[str] | None = None,
        val_cfg: float = 4.0,
        val_tau: float = 1.0,
        val_top_p: float = 1.0,
        val_seed: int = 0,
    ) -> None:
        super().__init__()
        if transformer is None:
            transformer = TransformerConfig()
        elif isinstance(transformer, Mapping):
            transformer = TransformerConfig(**dict(transformer))
        optimizer = OptimizerConfig.coerce(optimizer, GENERATOR_OPTIMIZER)
        if not 0.0 <= cfg_dropout < 1.0:
            raise ValueError(f"cfg_dropout must be in [0, 1), got {cfg_dropout}")
        if val_prompts is None:
            val_prompts = list(DEFAULT_VAL_PROMPTS)

        # Frozen stages first: their values complete the transformer config.
        tokenizer_source = read_checkpoint(tokenizer_checkpoint, TOKENIZER)
        self.tokenizer = load_tokenizer(tokenizer_source)
        #: Path, step and weights digest of the tokenizer, recorded in every checkpoint (``frozen_stages``).
        self.tokenizer_identity = tokenizer_source.identity()
        del tokenizer_source
        self.text_encoder = build_text_encoder(
            text_encoder, text_encoder_path, text_max_length, cache=text_cache, cache_dir=text_cache_dir
        )
        config = transformer.complete(
            self.tokenizer.codebook_dim, self.tokenizer.scale_schedule, self.text_encoder.dim
        )
        self.transformer = BitwiseTransformer(config)
        self.bsc = BitwiseSelfCorrection(self.tokenizer.quantizer, max_flip_prob, requantize=bsc_requantize)
        #: The method's random draws (BSC flips, CFG caption dropout), per training batch from the run's seed;
        #: saved in the checkpoint, so a resumed run draws what an uninterrupted one would.
        self.random_streams = RandomStreams(("bsc", "cfg_dropout"))
        self.freeze_stages()
        # Weight decay goes to matrices. Told apart here, by name: under FSDP every parameter the optimiser
        # sees is a flat 1-D shard (see ``trainable_parameters``).
        self._is_matrix = {name: p.ndim >= 2 for name, p in self.transformer.named_parameters()}
        names = ["loss", "loss_ln2", "bit_acc"]
        names += [
            f"{m}_scale_{k}" for k in range(1, len(config.scale_schedule) + 1) for m in ("loss", "bit_acc")
        ]
        # Validation / test metrics as batch-size-weighted epoch means that sum exactly over ranks
        # (``training.callbacks.log_epoch_means``); keyed "val_loss" for "val/loss" (a module name has no "/" or ".").
        self.eval_means = epoch_means(names)

        self.save_hyperparameters(ignore=["transformer", "optimizer"])
        # Plain types, so that checkpoints load with weights_only=True.
        self.hparams["transformer"] = transformer_config_to_dict(config)
        self.hparams["optimizer"] = optimizer.to_dict()
        self.hparams["val_prompts"] = list(val_prompts)
        self.optimizer_config = optimizer

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> Any:
        """AdamW over the transformer (weight decay on matrices only) with the ``optimizer`` schedule,
        stepped per batch.

        The parameters are those the strategy has wrapped (``trainable_parameters``; under FSDP views into
        this rank's shard, which needs FSDP's ``use_orig_params``, Lightning's default). Which of them are
        matrices was recorded when the module was built, as a sharded parameter is flat.

        Raises:
            ValueError: a cosine schedule with neither ``optimizer.decay_steps`` nor a finite trainer horizon.
        """
        opt = self.optimizer_config
        decay, no_decay = [], []
        for name, p in trainable_parameters(self.transformer):
            if name not in self._is_matrix:
                raise RuntimeError(
                    f"transformer parameter {name!r} did not exist when the module was built; a strategy or "
                    "callback that adds parameters must do so before configure_optimizers knows their weight decay"
                )
            (decay if self._is_matrix[name] else no_decay).append(p)
        optimizer = opt.adamw(
            [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        )
        scheduler = opt.scheduler(optimizer, opt.horizon(self._trainer))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's clipping (``trainer.gradient_clip_val``), except clipping by norm under FSDP.

        There the norm is of the whole model, from all ranks' shards: FSDP's own ``clip_grad_norm_`` on the
        root module, called on every rank (Lightning refuses norm clipping with FSDP, as its per-rank norm
        would be of a shard only).
        """
        model = self.trainer.model
        if model is not self and gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            from torch.distributed.fsdp import FullyShardedDataParallel

            if isinstance(model, FullyShardedDataParallel):
                model.clip_grad_norm_(gradient_clip_val)
                return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ------------------------------------------------------------------ steps
    def _unpack(self, batch: Any) -> tuple[Tensor, list[str]]:
        if not isinstance(batch, Mapping) or "image" not in batch or "caption" not in batch:
            raise TypeError(
                "a generator batch must be a dict with 'image' (B, 3, H, W) in [-1, 1] and 'caption' list[str]"
            )
        return batch["image"], list(batch["caption"])

    def _teacher_forced(
        self, images: Tensor, captions: list[str], flips: bool, drop_text: bool
    ) -> tuple[BSCOutput, Tensor, ScaleSchedule]:
        # The batch's schedule: the tokenizer's own, or the aspect-ratio template of a bucket's image size.
        schedule = self.tokenizer.check_image_size(images.shape[-2], images.shape[-1])
        with torch.no_grad():
            latent = self.tokenizer.encode(images)
        if flips:
            g = self.random_streams.generator("bsc", latent.device)
            out = self.bsc(latent, generator=g, scale_schedule=schedule)
        else:
            out = BitwiseSelfCorrection(self.tokenizer.quantizer, 0.0)(latent, scale_schedule=schedule)
        text = self.text_encoder(captions)
        if drop_text and self.hparams.cfg_dropout > 0:
            g = self.random_streams.generator("cfg_dropout", self.device)
            drop = torch.rand(len(captions), generator=g, device=self.device) < self.hparams.cfg_dropout
            text = self.transformer.drop_text(text, drop)
        logits = self.transformer(out.inputs, text, schedule=schedule)
        return out, logits, schedule

    def _metrics(
        self, stage: str, out: BSCOutput, logits: Tensor, schedule: ScaleSchedule
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        per_token = self.transformer.loss(logits, out.targets, reduction="none")  # (B, L)
        loss = per_token.mean()
        with torch.no_grad():
            predicted = self.transformer.predict_bits(logits)
            correct = (predicted == out.targets).float().mean(-1)  # (B, L)
            metrics = {
                f"{stage}/loss": loss.detach(),
                f"{stage}/loss_ln2": loss.detach() / math.log(2),
                f"{stage}/bit_acc": correct.mean(),
            }
            for k, (a, b) in enumerate(scale_bounds(schedule), start=1):
                metrics[f"{stage}/loss_scale_{k}"] = per_token[:, a:b].mean().detach()
                metrics[f"{stage}/bit_acc_scale_{k}"] = correct[:, a:b].mean()
        return loss, metrics, predicted

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, captions = self._unpack(batch)
        self.random_streams.next_batch()
        out, logits, schedule = self._teacher_forced(images, captions, flips=True, drop_text=True)
        self._record_schedule(schedule)
        loss, metrics, predicted = self._metrics("train", out, logits, schedule)
        # What training.finite.NonFiniteGuard checks before the step: the loss and each scale's part.
        scale_terms = {k[6:]: v for k, v in metrics.items() if k.startswith("train/loss_scale")}
        self.loss_terms = {"loss": loss, **scale_terms}
        metrics["train/flip_prob"] = out.flip_probs.mean()
        if out.flips.any():
            rate, baseline = self_correction_rate(out.flips, out.targets, predicted, schedule)
            if not torch.isnan(rate):
                metrics["train/self_correction_rate"] = rate
            if not torch.isnan(baseline):
                metrics["train/self_correction_baseline"] = baseline
        metrics["train/lr"] = torch.tensor(self.lr_schedulers().get_last_lr()[0])
        prog_bar = metrics.pop("train/loss_ln2")
        self.log_dict(metrics, batch_size=images.shape[0])
        self.log("train/loss_ln2", prog_bar, prog_bar=True, batch_size=images.shape[0])
        return loss

    def _eval_step(self, batch: Any, stage: str) -> None:
        images, captions = self._unpack(batch)
        out, logits, schedule = self._teacher_forced(images, captions, flips=False, drop_text=False)
        _, metrics, _ = self._metrics(stage, out, logits, schedule)
        log_epoch_means(self, self.eval_means, metrics, images.shape[0])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        """Sample one image per caption of the batch with the ``val_*`` settings.

        Returns:
            {"images": (B, 3, H, W) float in [-1, 1], "caption": list[str], "key": list[str] | None}.
        """
        captions = list(batch["caption"]) if isinstance(batch, Mapping) else list(batch)
        seed = self.hparams.val_seed + batch_idx * len(captions)
        images = self.generate(captions, seed=seed)
        return {
            "images": images,
            "caption": captions,
            "key": batch.get("key") if isinstance(batch, Mapping) else None,
        }

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        cfg: float | Sequence[float] | None = None,
        tau: float | Sequence[float] | None = None,
        top_p: float | None = None,
        seed: int | Sequence[int] | None = None,
        aspect_ratio: float | None = None,
    ) -> Tensor:
        """Images (N, 3, H, W) float32 in [-1, 1] for ``prompts``; unset settings use the ``val_*`` ones.

        ``aspect_ratio``: a template h/w the model was trained on (``generator.sample``); default the model's
        own schedule, or the first trained one when training has seen only other aspect ratios."""
        hp = self.hparams
        was_training = self.transformer.training
        out = sample(
            self.transformer,
            self.tokenizer,
            self.text_encoder,
            list(prompts),
            cfg=hp.val_cfg if cfg is None else cfg,
            tau=hp.val_tau if tau is None else tau,
            top_p=hp.val_top_p if top_p is None else top_p,
            seed=hp.val_seed if seed is None else seed,
            schedule=self._grid_schedule() if aspect_ratio is None else None,
            aspect_ratio=aspect_ratio,
        )
        self.transformer.train(was_training)
        return out.images

    def _in_forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, run inside the forward of the model as the strategy wrapped it.

        Lightning runs the steps that way, and in its precision context; code outside them (the validation
        sample grid) must do the same under FSDP, which gathers a sharded unit's parameters only inside that
        unit's forward, and in bf16 (autocast lets the fp32 frozen stages' outputs meet them). The gathers
        are collective, so every rank has to call this with the same work. Single device: a plain call.
        """
        wrapper = self.trainer.model
        if wrapper is None or wrapper is self:
            return fn(*args)

        def forward(*inner: Any) -> Any:
            del self.forward  # back to the class's forward before anything runs
            return fn(*inner)

        self.forward = forward
        try:
            with self.trainer.precision_plugin.forward_context():
                return wrapper(*args)
        finally:
            self.__dict__.pop("forward", None)

    def _record_schedule(self, schedule: ScaleSchedule) -> None:
        """Add a training batch's schedule to ``transformer.trained_schedules`` (saved with the checkpoint)."""
        trained = self.transformer.trained_schedules
        if trained is None:
            trained = self.transformer.trained_schedules = []
        if list(schedule) not in trained:
            trained.append(list(schedule))
            trained.sort(key=lambda t: t[-1][0] / t[-1][1])

    def _grid_schedule(self) -> ScaleSchedule | None:
        """The schedule of the validation sample grid: the model's own, unless training has seen only others
        (a run on non-square buckets), then the first of those."""
        trained = self.transformer.trained_schedules
        if not trained or list(self.transformer.scale_schedule) in trained:
            return None
        return trained[0]

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Name the tokenizer by its path (absolute and relative to the checkpoint folder), step and weights
        digest (``checkpoints.frozen_reference``), so ``load_generator`` finds it from anywhere and notices
        a file replaced by other weights."""
        callback = getattr(self._trainer, "checkpoint_callback", None) if self._trainer is not None else None
        owner_dir = getattr(callback, "dirpath", None)
        checkpoint[FROZEN_STAGES] = {"tokenizer": frozen_reference(self.tokenizer_identity, owner_dir)}
        checkpoint[RANDOM_STREAMS] = self.random_streams.state_dict()
        checkpoint[SKIPPED_LOGGED_AT] = getattr(self, SKIPPED_LOGGED_AT, None)
        trained = self.transformer.trained_schedules
        checkpoint[TRAINED_SCHEDULES] = [[list(hw) for hw in t] for t in trained] if trained else None
        super().on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume on other tokenizer weights than the run was trained on.

        Raises:
            CheckpointError: the recorded tokenizer digest differs from that of ``tokenizer_checkpoint``.
        """
        frozen = checkpoint.get(FROZEN_STAGES)
        recorded = frozen.get("tokenizer") if isinstance(frozen, Mapping) else None
        if (
            isinstance(recorded, Mapping)
            and recorded.get("weights_sha256") != self.tokenizer_identity["weights_sha256"]
        ):
            raise CheckpointError(
                f"this generator run was trained on the tokenizer {recorded.get('path')} at step "
                f"{recorded.get('step')} (weights sha256 {str(recorded.get('weights_sha256'))[:12]}…), but "
                f"model.tokenizer_checkpoint {self.tokenizer_identity['path']} holds other weights (step "
                f"{self.tokenizer_identity['step']}, sha256 {self.tokenizer_identity['weights_sha256'][:12]}…); "
                "pass --model.tokenizer_checkpoint with the tokenizer it was trained on, or start a new run"
            )
        if isinstance(checkpoint.get(RANDOM_STREAMS), Mapping):
            self.random_streams.load_state_dict(checkpoint[RANDOM_STREAMS])
        setattr(self, SKIPPED_LOGGED_AT, checkpoint.get(SKIPPED_LOGGED_AT))
        if checkpoint.get(TRAINED_SCHEDULES):
            self.transformer.trained_schedules = [
                [(int(h), int(w)) for h, w in t] for t in checkpoint[TRAINED_SCHEDULES]
            ]
        super().on_load_checkpoint(checkpoint)

    def setup(self, stage: str) -> None:
        """Check, before training, that the data module's resolution gives the frozen tokenizer's last grid.

        Raises:
            ValueError: it does not (the message says which ``data.resolution`` to set).
        """
        super().setup(stage)
        check_data_resolution(
            self.trainer if self._trainer is not None else None,
            self.tokenizer.stride,
            self.tokenizer.scale_schedule[-1],
            tuple(self.tokenizer.config.image_size),
            schedule_option=None,
            stride_option=None,
        )
        check_bucket_sizes(self.trainer if self._trainer is not None else None, self.tokenizer)

    def on_fit_start(self) -> None:
        # The run's seed, unless a resumed checkpoint brought the streams' own.
        self.random_streams.start(run_seed(), self.global_rank)
        super().on_fit_start()

    def on_train_epoch_end(self) -> None:
        log_skipped_samples(self)

    def on_validation_epoch_end(self) -> None:
        log_skipped_samples(self)
        prompts = self.hparams.val_prompts
        if not prompts or self.trainer.sanity_checking or self.logger is None:
            return
        # Rank 0 holds the real logger (the others a no-op stand-in), so its answer holds for every rank:
        # all of them take part in the sampling, which a sharded model cannot run on one rank alone.
        experiment = getattr(self.logger, "experiment", None) if self.global_rank == 0 else None
        if not self.trainer.strategy.broadcast(hasattr(experiment, "add_image")):
            return
        from torchvision.utils import make_grid

        images = self._in_forward(self.generate, prompts)
        if self.global_rank != 0:
            return
        images = (images.float().cpu() + 1) / 2  # [-1,1] → [0,1]
        grid = make_grid(images, nrow=min(8, len(prompts)), padding=2)
        experiment.add_image("val/samples", grid.clamp(0, 1), self.global_step)
        experiment.add_text("val/sample_prompts", " | ".join(prompts), self.global_step)
