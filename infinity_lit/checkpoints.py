"""The checkpoint format: read and write the Lightning checkpoint layout without importing Lightning.

A ``.ckpt`` written by ``infinity-lit tokenizer|generator fit`` is a ``torch.save``d dict:

    hyper_parameters      the LightningModule's init arguments, plain types only (configs as dicts; paths
                          may be ``pathlib`` objects, which a data module stores). A model's marker key says
                          what it is: ``tokenizer`` (a TokenizerModule), ``transformer`` (a GeneratorModule).
    state_dict            the weights, keyed ``<sub-module>.<name>`` (``tokenizer.…``, ``transformer.…``);
                          the EMA average when the run used ``EMAWeightAveraging``
    current_model_state   only with EMA: the raw (not averaged) weights
    (trainer state)       optimizer_states, lr_schedulers, callbacks, loops, global_step, … (resume only)

Frozen stages (LPIPS, the generator's tokenizer and text encoder) are never in it: they are named by
reference in the hyper-parameters (``infinity_lit.training.frozen``).

Everything is read with ``torch.load(weights_only=True)`` plus the ``pathlib`` classes (``SAFE_GLOBALS``), so
loading a checkpoint never runs code from the file. ``write_checkpoint`` writes the same layout atomically.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from infinity_lit.runs import resolve_checkpoint

#: Classes besides plain data that a checkpoint may hold (data modules store paths among their init args).
SAFE_GLOBALS = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]

#: Exact container and leaf types ``write_checkpoint`` accepts (``torch.load(weights_only=True)`` reads them
#: back; subclasses such as Lightning's ``AttributeDict`` or an ``IntEnum`` it refuses), besides tensors.
_CONTAINERS = (dict, OrderedDict, list, tuple, set)
_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)


class CheckpointError(ValueError):
    """A file that cannot be read as a checkpoint of the expected kind (the message says what to do)."""


@dataclass(frozen=True)
class CheckpointKind:
    """What a model's checkpoint looks like and where it comes from.

    Attributes:
        name: "tokenizer" or "generator".
        marker: the hyper-parameter (a mapping) that only this kind has.
        prefix: the sub-module prefix of its weights in ``state_dict`` (with the dot).
        command: the command that writes it.
    """

    name: str
    marker: str
    prefix: str
    command: str


TOKENIZER = CheckpointKind(
    "tokenizer", marker="tokenizer", prefix="tokenizer.", command="infinity-lit tokenizer fit"
)
GENERATOR = CheckpointKind(
    "generator", marker="transformer", prefix="transformer.", command="infinity-lit generator fit"
)
KINDS = (TOKENIZER, GENERATOR)


# ---------------------------------------------------------------------------------------- reading


def load_file(path: str | Path, what: str = "checkpoint", missing_hint: str | None = None) -> Any:
    """``torch.load`` of a local file with ``weights_only=True`` and ``SAFE_GLOBALS``, tensors on the CPU
    (move the module built from them; a device error is then never mistaken for a corrupt file).

    Args:
        path: the file.
        what: what the file is, for error messages ("LPIPS weights", "tokenizer checkpoint", …).
        missing_hint: what to do when there is no file (appended to that error).

    Returns:
        the loaded object.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is truncated or corrupt, or holds objects a weights-only load refuses.
    """
    path = Path(path)
    if not path.is_file():
        hint = f"; {missing_hint}" if missing_hint else ""
        raise FileNotFoundError(f"{what}: no file at {str(path)!r}{hint}")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if refused is None:
            raise _corrupt(path, what, err) from err
        raise CheckpointError(
            f"{what} {str(path)!r} holds a {refused.group(1)} object, which a weights-only load refuses (only "
            "tensors, plain Python data and paths are read, so that loading runs no code from the file); "
            "re-save it with plain-type hyper-parameters (configs as dicts)"
        ) from None
    except PermissionError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        # A non-zip file that is not a legacy pickle either ends in a KeyError/IndexError from torch's reader.
        raise _corrupt(path, what, err) from err


def _corrupt(path: Path, what: str, err: BaseException) -> CheckpointError:
    text = str(err)
    unpickler = re.search(r"WeightsUnpickler error: *\n?(.+)", text)
    if isinstance(err, (KeyError, IndexError)):
        detail = "not a torch.save file"  # torch's legacy reader fails on arbitrary bytes this way
    else:
        detail = (
            unpickler.group(1).strip()
            if unpickler
            else (text.splitlines()[0] if text else type(err).__name__)
        )
    return CheckpointError(
        f"{what} {str(path)!r} is truncated or corrupt ({detail}); it was probably cut "
        "short while being written or copied (a killed job, a full disk): copy it again, or delete it and "
        "re-run the command that wrote it"
    )


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read by ``read_checkpoint``.

    Attributes:
        path: the ``.ckpt`` file read (a run folder resolved to its ``checkpoints/last.ckpt``).
        kind: its kind.
        hyper_parameters: the module's hyper-parameters (plain types).
        content: the whole loaded dict (``state_dict``, ``current_model_state``, trainer state, …).
    """

    path: Path
    kind: CheckpointKind
    hyper_parameters: dict[str, Any]
    content: dict[str, Any]

    @property
    def has_ema(self) -> bool:
        """True when ``state_dict`` holds EMA weights and ``current_model_state`` the raw ones."""
        return isinstance(self.content.get("current_model_state"), Mapping)

    def weights(self, use_ema: bool = True, prefix: str | None = None) -> dict[str, Tensor]:
        """The weights of one sub-module, with its prefix stripped.

        Args:
            use_ema: the EMA weights (``state_dict``) when the run averaged them; False: the raw ones
                (``current_model_state``). A checkpoint without EMA has only raw weights, in ``state_dict``,
                which either choice returns.
            prefix: sub-module prefix to select and strip ("" = every entry as is); default the kind's.

        Raises:
            CheckpointError: no ``state_dict``, or no entry with the prefix.
        """
        prefix = self.kind.prefix if prefix is None else prefix
        key = "state_dict" if use_ema or not self.has_ema else "current_model_state"
        state = self.content.get(key)
        if not isinstance(state, Mapping):
            raise CheckpointError(
                f"{str(self.path)!r} has no {key!r} weights; pass a checkpoint written by '{self.kind.command}'"
            )
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not weights:
            raise CheckpointError(
                f"{str(self.path)!r} has {self.kind.name} hyper-parameters but no '{prefix}*' weights in {key!r}; "
                f"pass a checkpoint written by '{self.kind.command}'"
            )
        return weights

    @property
    def global_step(self) -> int | None:
        """The optimiser step the checkpoint was written at (None when it records none)."""
        step = self.content.get("global_step")
        return int(step) if isinstance(step, int) else None

    def identity(self, use_ema: bool = True) -> dict[str, Any]:
        """What names these weights: ``{"path", "step", "weights_sha256"}`` (absolute path, global step,
        ``weights_digest`` of the kind's weights as ``weights(use_ema)`` returns them).

        A downstream stage records it (a generator its tokenizer's, a sample folder its generator's), so a
        file replaced by other weights under the same name is noticed instead of silently used.
        """
        return {
            "path": str(self.path.resolve()),
            "step": self.global_step,
            "weights_sha256": weights_digest(self.weights(use_ema=use_ema)),
        }


def weights_digest(state: Mapping[str, Tensor]) -> str:
    """SHA-256 hex digest of a state dict's content: every entry's key, dtype, shape and bytes, in key order.

    Two state dicts have the same digest exactly when they hold the same keys with bit-identical tensors;
    the file around them (trainer state, optimiser moments, the order of entries) does not matter. Tensors
    are read on the CPU (a copy for one on another device).
    """
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        digest.update(f"{key}\0".encode())
        if isinstance(value, Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{t.dtype}{tuple(value.shape)}\0".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def read_checkpoint(path: str | Path, kind: CheckpointKind) -> Checkpoint:
    """Read a ``kind`` checkpoint (weights-only, tensors on the CPU) and check that it is one.

    Args:
        path: a ``.ckpt`` file, or a run folder (``runs/<model>/<name>/…``), which stands for its
            ``checkpoints/last.ckpt`` (``infinity_lit.runs.resolve_checkpoint``).
        kind: ``TOKENIZER`` or ``GENERATOR``.

    Returns:
        the checkpoint (``.weights()`` picks EMA or raw weights of the kind's sub-module).

    Raises:
        FileNotFoundError: nothing at ``path``, or a run folder without ``checkpoints/last.ckpt``.
        CheckpointError: a truncated or corrupt file, or not a ``kind`` checkpoint (the message says which
            kind it is when it is another model's).
    """
    path = Path(path)
    what = f"{kind.name} checkpoint"
    if not path.exists():
        raise FileNotFoundError(
            f"no {what} at {str(path)!r}; pass the .ckpt written by '{kind.command}' or its run folder "
            f"(e.g. runs/{kind.name}/<name>, which stands for its checkpoints/last.ckpt)"
        )
    path = resolve_checkpoint(path)
    content = load_file(path, what)
    hparams = check_kind(path, kind, content)
    return Checkpoint(path, kind, dict(hparams), dict(content))


def check_kind(path: str | Path, kind: CheckpointKind, content: Any) -> Mapping[str, Any]:
    """The hyper-parameters of a loaded checkpoint ``content`` (from ``path``) of ``kind``.

    Raises:
        CheckpointError: not a ``kind`` checkpoint (the message says which kind it is when it is another
            model's).
    """
    hparams = content.get("hyper_parameters") if isinstance(content, Mapping) else None
    if not isinstance(hparams, Mapping) or not isinstance(hparams.get(kind.marker), Mapping):
        other = [
            k.name
            for k in KINDS
            if k is not kind and isinstance(hparams, Mapping) and isinstance(hparams.get(k.marker), Mapping)
        ]
        found = f"it is a {other[0]} checkpoint" if other else f"it has no {kind.marker!r} hyper-parameters"
        raise CheckpointError(
            f"{str(path)!r} is not a {kind.name} checkpoint ({found}); pass a checkpoint written by "
            f"'{kind.command}'"
        )
    return hparams


#: Top-level checkpoint entry naming the frozen stages a model was trained on (``frozen_reference``).
FROZEN_STAGES = "frozen_stages"

#: Top-level generator checkpoint entry: the scale schedules it was trained on, each a list of [h, w] pairs
#: (several for a run on aspect-ratio buckets). A checkpoint without it was trained on its config's schedule.
TRAINED_SCHEDULES = "trained_schedules"


def frozen_reference(identity: Mapping[str, Any], owner_dir: str | Path | None = None) -> dict[str, Any]:
    """The record by which a checkpoint names a frozen stage it was trained on (e.g. a generator its
    tokenizer): the frozen checkpoint's ``Checkpoint.identity()`` plus ``relative_path``, its path relative
    to ``owner_dir`` (the folder the owning checkpoint is written to; None: not recorded), so a run folder
    moved together with the file it refers to still finds it. Stored as ``content["frozen_stages"][name]``.
    """
    record = dict(identity)
    if owner_dir is not None:
        record["relative_path"] = os.path.relpath(record["path"], Path(owner_dir).resolve())
    return record


def locate_frozen(
    owner: Checkpoint,
    stage: str,
    kind: CheckpointKind,
    stored_path: str | Path | None,
    override: str | Path | None = None,
    option: str = "--tokenizer_checkpoint",
) -> Checkpoint:
    """Find the ``kind`` checkpoint that ``owner`` was trained on and check that it holds those weights.

    Looked for, in this order: ``override`` alone when given; else the path recorded relative to the
    owner's folder, the recorded absolute path, and ``stored_path`` (the hyper-parameter, which may be
    relative to the working directory of training). The first file whose ``weights_digest`` equals the
    recorded one is returned. A checkpoint written before references were recorded (no
    ``frozen_stages`` entry) is not checked: the first existing file is returned.

    Args:
        owner: the checkpoint that refers to the frozen stage.
        stage: its name in ``owner.content["frozen_stages"]`` ("tokenizer").
        kind: the frozen stage's checkpoint kind.
        stored_path: the path in the owner's hyper-parameters.
        override: a path given by the user instead (a ``.ckpt`` or its run folder).
        option: the option that passes ``override``, for messages.

    Raises:
        FileNotFoundError: no file at any of the paths (the message names them and ``option``).
        CheckpointError: the files found hold other weights (the message names the owner, the files, the
            recorded step and digest, and ``option``), or one of them is not a ``kind`` checkpoint.
    """
    frozen = owner.content.get(FROZEN_STAGES)
    reference = frozen.get(stage) if isinstance(frozen, Mapping) else None
    reference = reference if isinstance(reference, Mapping) else None
    if override is not None:
        candidates = [Path(override)]
    else:
        candidates = []
        if reference is not None and reference.get("relative_path"):
            candidates.append(owner.path.parent / reference["relative_path"])
        if reference is not None and reference.get("path"):
            candidates.append(Path(reference["path"]))
        if stored_path is not None:
            candidates.append(Path(stored_path))
    seen: set[Path] = set()
    tried: list[str] = []
    for candidate in candidates:
        key = candidate.resolve()
        if key in seen:
            continue
        seen.add(key)
        if not candidate.exists():
            tried.append(f"{candidate} (missing)")
            continue
        found = read_checkpoint(candidate, kind)
        if reference is None:
            return found
        digest = weights_digest(found.weights())
        if digest == reference.get("weights_sha256"):
            return found
        tried.append(f"{found.path} (other weights: step {found.global_step}, sha256 {digest[:12]}…)")
    expected = (
        f"the {kind.name} {reference.get('path')} at step {reference.get('step')} (weights sha256 "
        f"{str(reference.get('weights_sha256'))[:12]}…)"
        if reference is not None
        else f"the {kind.name} {stored_path}"
    )
    if all(t.endswith("(missing)") for t in tried):
        raise FileNotFoundError(
            f"{owner.path} was trained on {expected}, which is not at {', '.join(t[:-10] for t in tried)}; "
            f"pass {option} PATH with that {kind.name} checkpoint (or its run folder)"
        )
    raise CheckpointError(
        f"{owner.path} was trained on {expected}, but {'; '.join(tried)}; pass {option} PATH with the "
        f"{kind.name} it was trained on (a generator on other tokenizer weights decodes other images)"
    )


# ---------------------------------------------------------------------------------------- writing


def write_checkpoint(
    path: str | Path,
    hyper_parameters: Mapping[str, Any],
    state_dict: Mapping[str, Tensor],
    prefix: str = "",
    current_model_state: Mapping[str, Tensor] | None = None,
    **extra: Any,
) -> Path:
    """Write a checkpoint in the Lightning layout, atomically: a temporary file beside ``path``, then a rename,
    so ``path`` holds the old checkpoint or the complete new one, never a partial file.

    Args:
        path: the ``.ckpt`` to write (parent folders are created).
        hyper_parameters: plain types only (configs as dicts), as ``read_checkpoint`` reads them.
        state_dict: a sub-module's weights (e.g. ``BitwiseTokenizer.state_dict()``); ``prefix`` is put in front
            of every key (``"tokenizer."``); the EMA weights when ``current_model_state`` is given.
        prefix: sub-module prefix for the keys of both state dicts ("" = as given).
        current_model_state: the raw weights beside EMA ones (as ``EMAWeightAveraging`` stores them).
        **extra: further top-level entries (``global_step``, …).

    Returns:
        ``path``.

    Raises:
        TypeError: a value a weights-only load would refuse (the message gives its key path).
        OSError: writing failed; ``path`` is left as it was.
    """
    path = Path(path)
    content: dict[str, Any] = {
        "hyper_parameters": dict(hyper_parameters),
        "state_dict": {f"{prefix}{k}": v for k, v in state_dict.items()},
        **extra,
    }
    if current_model_state is not None:
        content["current_model_state"] = {f"{prefix}{k}": v for k, v in current_model_state.items()}
    _check_plain(content, "checkpoint")
    atomic_save(content, path)
    return path


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically: into a temporary file in the same folder (so on the
    same file system), flushed to disk (``fsync``), then renamed over ``path`` (``os.replace``). ``path``
    holds the old file or the complete new one, whatever happens on the way (a full disk, SIGKILL, a power
    cut); a failed write removes its temporary file. Parent folders are created.

    Raises:
        OSError: writing failed (e.g. ``errno.ENOSPC``); ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # the rename itself is durable once the folder's entry is on disk
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename is still atomic
    finally:
        os.close(folder)


def _check_plain(value: Any, where: str) -> None:
    kind = type(value)
    if kind in (dict, OrderedDict):
        for k, v in value.items():
            if type(k) not in (str, int):
                raise TypeError(f"{where} has a key of type {type(k).__name__}; use str keys")
            _check_plain(v, f"{where}[{k!r}]")
    elif kind in _CONTAINERS:
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not (isinstance(value, Tensor) or kind in _LEAVES or kind in SAFE_GLOBALS):
        raise TypeError(
            f"{where} is a {kind.__module__}.{kind.__qualname__}, which a weights-only load refuses; store plain "
            "types (numbers, strings, lists, dicts, tensors, paths), e.g. a config's to_dict()"
        )
