"""A study spec: base recipes per stage, arms (a studied value and small config deltas), seeds, evaluation.

A study is a YAML file (``experiments/studies/*.yaml``)::

    name: bit_flip_rate
    description: Bitwise Self-Correction's flip probability (Infinity §3.4, Table 5).
    variable: max_flip_prob                # the studied variable: the x axis of the comparison plots
    baseline: p00                          # the arm every other arm is compared against
    seeds: [0, 1, 2]                       # each (arm, seed) is one run of every stage
    data: {openmoji: {resolution: 64}}     # or {dir: path/to/shards, resolution: 64}
    stages:
      tokenizer: {recipe: tokenizer/openmoji64.yaml, overrides: {trainer: {max_steps: 800}}}
      generator: {recipe: generator/openmoji64.yaml}
    evaluation: {split: val, num_images: 200, cfg: 3.0, tau: 1.0, top_p: 1.0, seed: 0}
    slurm: {partition: gpu, gpus_per_node: 1, timeout_min: 120}   # optional: SLURM jobs' settings
    arms:
      - {name: p00, value: 0.0, generator: {model: {max_flip_prob: 0.0}}}
      - {name: p30, value: 0.3, generator: {model: {max_flip_prob: 0.3}}, slurm: {timeout_min: 240}}
      - {name: no_requant, value: 0.3, generator: generator/arms/bsc_no_requant.yaml}

A delta is a mapping (inline) or a YAML file path, or a list of them, stacked after the stage's recipe and
its study-wide ``overrides`` exactly as ``-c`` files are stacked on the command line. Recipe and delta
paths are looked up beside the spec, then among the shipped recipes (``infinity_lit.recipes.recipe_path``).
The evaluation settings belong to the study, never to an arm, so every arm is measured the same way.

Aspect ratios (optional): ``data: {openmoji: {resolution: 64, aspect_ratios: [0.5, 1, 2], stride: 8}}``
builds OpenMoji on canvases of those template aspect ratios h/w (one bucket each, sized as ``data openmoji
--aspect_ratios … --stride …`` sizes them; ``stride`` defaults to the study's tokenizer recipe's), and a
``data: {dir: …}`` built with ``--aspect_ratios`` has its buckets in its manifest. Every arm's tokenizer must
have a schedule for every bucket (its own for the square one, the method's template with as many scales for
the others, as a fit checks): an arm that has none is a one-line error naming the arm and the bucket.
``evaluation: {aspect_ratios: [0.5, 1, 2]}`` then samples each bucket's held-out captions at that bucket's
aspect ratio and scores FID / KID per bucket and pooled (``studies.runner``); each must be a bucket of the
data. Without these keys a study, its stage keys and its folders are as they always were.

``slurm`` (optional, at the top and per arm) holds the SLURM parameters of the jobs ``study run --launcher
slurm`` submits through submitit (``SlurmExecutor.update_parameters``' names: ``partition``,
``gpus_per_node``, ``timeout_min``, ``cpus_per_task``, ``mem_gb``, ``account``, ``qos``,
``additional_parameters``, …; a ``slurm_`` prefix is allowed). An arm's mapping is stacked on the study's and
the command line's ``--slurm`` on both (``slurm_parameters``); they choose where a stage runs, not what it
computes, so they are in no stage key. A stage shared by several arms runs once, with the parameters of the
first arm in spec order that needs it (the arm whose folder computes it). The other launchers ignore them.

``load_study`` validates the spec before anything runs: unknown keys, duplicate arm names, an empty seed
list, a baseline that is not an arm, a missing recipe or delta file, a delta for an unknown stage, an arm
that tries to change evaluation settings, an unknown SLURM parameter — each a one-line ``StudyError`` naming
the file and the key (an arm by its name once it has one: ``arms[p30].generator``).
``check_deltas`` (slower: it builds each stage's LightningCLI parser) also checks that every arm's
stacked config parses against its stage; its error names the arm, the stage, the offending key with its
value and which layer set it (the recipe, the study's overrides or the arm's delta), without the parser's
usage text.

Stage keys: ``stage_key`` hashes a stage's stacked configuration (recipe and delta contents, not their
paths), the seed, the data settings and the keys of its upstream stages; two (arm, seed) whose keys are
equal share that stage, which runs once.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from infinity_lit.tokenizer.model import TokenizerConfig

#: The trainable stages, in order; each may have a base recipe and per-arm deltas.
TRAIN_STAGES = ("tokenizer", "generator")

_TOP_KEYS = {
    "name",
    "description",
    "variable",
    "baseline",
    "seeds",
    "data",
    "stages",
    "evaluation",
    "arms",
    "slurm",
}
_STAGE_KEYS = {"recipe", "overrides"}
_ARM_KEYS = {"name", "value", "description", "slurm", *TRAIN_STAGES}
_DATA_KEYS = {"openmoji", "dir", "resolution"}
_OPENMOJI_KEYS = {"resolution", "limit", "aspect_ratios", "stride"}


class StudyError(ValueError):
    """A study spec that cannot run; the message names the file and the key."""


@dataclass(frozen=True)
class EvaluationSettings:
    """How every arm is measured (the same for all arms of a study).

    Attributes:
        split: held-out shard split whose captions are sampled and whose images are the FID reference.
        num_images: at most this many held-out images / captions (None: the whole split).
        cfg: classifier-free guidance scale of the samples (1 = no guidance).
        tau: sampling temperature, > 0.
        top_p: nucleus mass over the two bit values, in (0, 1].
        seed: sampling seed (image i uses seed + i), the same for every arm and training seed.
        clip_weights: local CLIP weights for the CLIP score (None: reported as not computed).
        inception_weights: FID Inception weights (None: the converted offline weights).
        aspect_ratios: template aspect ratios h/w (buckets of the data) to sample and score one by one and
            pooled (None: one square sample folder, as without buckets). With them, ``num_images`` caps the
            captions sampled and the reference images of each bucket; the pooled score takes the whole
            held-out split as its reference.
    """

    split: str = "val"
    num_images: int | None = None
    cfg: float = 3.0
    tau: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    clip_weights: str | None = None
    inception_weights: str | None = None
    aspect_ratios: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.aspect_ratios is not None:
            ratios = self.aspect_ratios
            if (
                not isinstance(ratios, (list, tuple))
                or not ratios
                or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in ratios)
            ):
                raise StudyError(
                    f"evaluation.aspect_ratios must be a non-empty list of h/w numbers, got {ratios!r}"
                )
            object.__setattr__(self, "aspect_ratios", tuple(float(r) for r in ratios))
        if self.num_images is not None and self.num_images < 2:
            raise StudyError(
                f"evaluation.num_images must be >= 2 (FID needs two images), got {self.num_images}"
            )
        if self.tau <= 0 or not 0 < self.top_p <= 1:
            raise StudyError(f"evaluation: tau must be > 0 and top_p in (0, 1], got {self.tau}, {self.top_p}")


@dataclass(frozen=True)
class DataSettings:
    """The study's images: the built-in OpenMoji shards or a shard folder of one's own.

    Attributes:
        resolution: image side in pixels (of the square bucket, with aspect ratios).
        openmoji_limit: with OpenMoji: render only this many emoji (None: all).
        dir: a shard folder (``infinity-lit data …``) instead of OpenMoji.
        aspect_ratios: with OpenMoji: the template aspect ratios h/w of its buckets (None: square images).
        stride: with ``aspect_ratios``: the tokenizer's stride the bucket sizes are built for.
    """

    resolution: int = 64
    openmoji_limit: int | None = None
    dir: str | None = None
    aspect_ratios: tuple[float, ...] | None = None
    stride: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The settings a stage key hashes (the bucket settings only when there are buckets, so that a
        square study's keys are what they were before buckets existed)."""
        out: dict[str, Any] = {
            "resolution": self.resolution,
            "openmoji_limit": self.openmoji_limit,
            "dir": self.dir,
        }
        if self.aspect_ratios is not None:
            out.update(aspect_ratios=list(self.aspect_ratios), stride=self.stride)
        return out


@dataclass(frozen=True)
class StageSpec:
    """A trainable stage of the study: its base recipe and the study-wide overrides stacked on it.

    Attributes:
        recipe: the LightningCLI YAML recipe (resolved path).
        overrides: a mapping stacked after the recipe for every arm (e.g. a step budget).
    """

    recipe: Path
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Arm:
    """One arm: a name, the studied variable's value, and config deltas per stage.

    Attributes:
        name: unique within the study; a folder name (letters, digits, ``_``, ``-``, ``.``).
        value: the studied variable's value (a number for plots; a string for a categorical arm).
        deltas: stage → mappings stacked after the stage's recipe and overrides (files already loaded).
        delta_files: stage → the files the deltas came from (for the record; inline deltas have none).
        description: free text.
        slurm: SLURM parameters of this arm's stages, stacked on the study's (``slurm_parameters``).
    """

    name: str
    value: float | int | str | None
    deltas: Mapping[str, tuple[Mapping[str, Any], ...]]
    delta_files: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    description: str = ""
    slurm: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    """A validated study spec (``load_study``).

    Attributes:
        name: the study's name (its output folder is ``runs/studies/<name>`` by default).
        path: the spec file.
        variable: name of the studied variable.
        baseline: name of the arm the others are compared against.
        seeds: training seeds; each (arm, seed) runs every stage.
        arms: the arms, in spec order.
        stages: the trainable stages' recipes.
        evaluation: how every arm is measured.
        data: the images.
        description: free text.
        slurm: study-wide SLURM parameters of the stages' jobs (``slurm_parameters``; no stage key holds them).
    """

    name: str
    path: Path
    variable: str
    baseline: str
    seeds: tuple[int, ...]
    arms: tuple[Arm, ...]
    stages: Mapping[str, StageSpec]
    evaluation: EvaluationSettings
    data: DataSettings
    description: str = ""
    slurm: Mapping[str, Any] = field(default_factory=dict)

    def arm(self, name: str) -> Arm:
        """The arm called ``name``.

        Raises:
            KeyError: no such arm.
        """
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(
            f"study {self.name!r} has no arm {name!r} (arms: {', '.join(a.name for a in self.arms)})"
        )

    def stage_configs(self, arm: Arm, stage: str) -> list[Mapping[str, Any]]:
        """The mappings stacked for ``stage`` of ``arm`` after its recipe: the study's overrides, then the
        arm's deltas."""
        configs: list[Mapping[str, Any]] = []
        if self.stages[stage].overrides:
            configs.append(self.stages[stage].overrides)
        return configs + list(arm.deltas.get(stage, ()))

    def slurm_parameters(self, arm: str, command_line: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The SLURM parameters of ``arm``'s jobs: the study's, then the arm's, then ``command_line`` (the
        ``--slurm`` of ``study run``), each stacked on the one before (``merge``: a mapping such as
        ``additional_parameters`` merges key by key); names without a ``slurm_`` prefix.

        Raises:
            StudyError: an unknown parameter or a wrong type in ``command_line``.
        """
        merged = merge(self.slurm, self.arm(arm).slurm)
        if command_line:
            merged = merge(merged, check_slurm(command_line, "--slurm"))
        return merged


# ------------------------------------------------------------------------------------------ loading


def _fail(path: Path, key: str, message: str) -> StudyError:
    return StudyError(f"{path}: {key}: {message}")


def _check_keys(path: Path, where: str, mapping: Any, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(mapping, Mapping):
        raise _fail(path, where or "(top level)", f"expected a mapping, got {type(mapping).__name__}")
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        prefix = f"{where}." if where else ""
        raise _fail(path, f"{prefix}{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
    return mapping


def find_config(name: str | Path, spec_dir: Path) -> Path:
    """A recipe or delta path from a spec: beside the spec first, then among the shipped recipes.

    Raises:
        FileNotFoundError: found in neither place.
    """
    candidate = Path(name)
    if candidate.is_absolute() and candidate.is_file():
        return candidate
    if (spec_dir / candidate).is_file():
        return spec_dir / candidate
    from infinity_lit.recipes import recipe_path, recipes_dir

    try:
        return Path(recipe_path(str(name)))
    except ValueError:  # absolute, or leaving the recipes folder: not a shipped recipe's name
        shipped = "it names no shipped recipe"
    except FileNotFoundError:
        shipped = f"no shipped recipe {candidate.as_posix()} in {recipes_dir()}"
    # Where it looked, as the spec names it: relative to the spec's folder (absolute when given so).
    beside = candidate.as_posix() if candidate.is_absolute() else os.path.normpath(candidate.as_posix())
    raise FileNotFoundError(f"{name}: no file {beside} beside the spec, and {shipped}") from None


def _load_yaml(path: Path) -> Mapping[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise StudyError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from err
    return data if data is not None else {}


def _deltas(path: Path, key: str, raw: Any) -> tuple[tuple[Mapping[str, Any], ...], tuple[str, ...]]:
    items = raw if isinstance(raw, list) else [raw]
    deltas, files = [], []
    for i, item in enumerate(items):
        where = f"{key}[{i}]" if isinstance(raw, list) else key
        if isinstance(item, Mapping):
            deltas.append(dict(item))
        elif isinstance(item, str):
            try:
                file = find_config(item, path.parent)
            except FileNotFoundError as err:
                raise _fail(path, where, f"delta file not found: {err}") from None
            loaded = _load_yaml(file)
            if not isinstance(loaded, Mapping):
                raise _fail(path, where, f"{file} does not hold a mapping")
            deltas.append(dict(loaded))
            files.append(str(file))
        else:
            raise _fail(path, where, f"a delta is a mapping or a YAML file path, got {type(item).__name__}")
    return tuple(deltas), tuple(files)


@functools.lru_cache(maxsize=1)
def slurm_parameter_types() -> dict[str, tuple[type, ...] | None]:
    """The SLURM parameters ``study run --launcher slurm`` can pass on, with the types they take (None: any
    scalar, written to the job's ``#SBATCH`` lines as it is).

    The names are those submitit's ``AutoExecutor.update_parameters`` takes for SLURM: its generic ones
    (``timeout_min``, ``mem_gb``, ``gpus_per_node``, ``cpus_per_task``, ``nodes``, ``tasks_per_node``,
    ``name``, ``stderr_to_stdout``) and ``SlurmExecutor``'s own (``partition``, ``account``, ``qos``,
    ``constraint``, ``gres``, ``mem``, ``time``, ``exclude``, ``setup``, ``additional_parameters``, …), read
    from the installed submitit.
    """
    import submitit

    types: dict[str, tuple[type, ...] | None] = dict.fromkeys(submitit.SlurmExecutor._valid_parameters())
    for name, kind in submitit.AutoExecutor._typed_parameters().items():
        types[name] = (int, float) if kind is float else (kind,)
    types["additional_parameters"] = (Mapping,)
    for name in ("setup", "teardown", "srun_args"):
        if name in types:
            types[name] = (list,)
    return types


def check_slurm(raw: Any, where: str, path: Path | None = None) -> dict[str, Any]:
    """SLURM parameters (a spec's ``slurm`` mapping, or ``--slurm``) checked against submitit's names and
    types, with any ``slurm_`` prefix dropped.

    Args:
        raw: the mapping (None: no parameters).
        where: its key path for errors (``slurm``, ``arms[p30].slurm``, ``--slurm``).
        path: the spec file, named first in errors.

    Raises:
        StudyError: one line naming the file, the key and what is wrong with it.
    """

    def fail(key: str, message: str) -> StudyError:
        return _fail(path, key, message) if path is not None else StudyError(f"{key}: {message}")

    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise fail(where, f"expected a mapping of SLURM parameters, got {type(raw).__name__}")
    types = slurm_parameter_types()
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).removeprefix("slurm_")
        if name not in types:
            close = difflib.get_close_matches(name, types, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise fail(
                f"{where}.{key}",
                f"unknown SLURM parameter ({hint}submitit takes: {', '.join(sorted(types))})",
            )
        if name in out:
            raise fail(f"{where}.{key}", f"{name!r} is given twice (with and without the slurm_ prefix)")
        kinds = types[name]
        if kinds is None:
            ok = isinstance(value, (str, int, float, bool))
            wanted = "a single value (text or number)"
        else:
            ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
            wanted = " or ".join("mapping" if k is Mapping else k.__name__ for k in kinds)
        if not ok:
            raise fail(f"{where}.{key}", f"expected {wanted}, got {value!r} ({type(value).__name__})")
        out[name] = copy.deepcopy(value)
    return out


def load_study(path: str | Path) -> Study:
    """Read and validate a study spec.

    Args:
        path: the spec YAML (``experiments/studies/NAME.yaml`` or a file of one's own; a bare
            ``studies/NAME.yaml`` is also looked up among the shipped recipes).

    Returns:
        the ``Study``.

    Raises:
        FileNotFoundError: no spec file.
        StudyError: an invalid spec (one line naming the file and the key).
    """
    path = Path(path)
    if not path.is_file():
        try:
            path = find_config(path, Path.cwd())
        except FileNotFoundError:
            raise FileNotFoundError(f"no study spec at {str(path)!r}") from None
    raw = _check_keys(path, "", _load_yaml(path), _TOP_KEYS)
    for key in ("name", "variable", "baseline", "seeds", "stages", "arms"):
        if key not in raw:
            raise _fail(path, key, "missing (required)")
    name = str(raw["name"])
    if not name or any(c in name for c in "/\\ "):
        raise _fail(
            path, "name", f"must be a non-empty folder name without '/', '\\' or spaces, got {name!r}"
        )

    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds:
        raise _fail(path, "seeds", "must be a non-empty list of integers")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise _fail(path, "seeds", f"must be integers, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise _fail(path, "seeds", f"repeated seed in {seeds}")

    stages_raw = _check_keys(path, "stages", raw["stages"], set(TRAIN_STAGES))
    stages: dict[str, StageSpec] = {}
    for stage in TRAIN_STAGES:
        if stage not in stages_raw:
            raise _fail(path, f"stages.{stage}", "missing (a study trains the tokenizer and the generator)")
        spec = _check_keys(path, f"stages.{stage}", stages_raw[stage], _STAGE_KEYS)
        if "recipe" not in spec:
            raise _fail(path, f"stages.{stage}.recipe", "missing (required)")
        try:
            recipe = find_config(spec["recipe"], path.parent)
        except FileNotFoundError as err:
            raise _fail(path, f"stages.{stage}.recipe", f"recipe not found: {err}") from None
        overrides = spec.get("overrides") or {}
        if not isinstance(overrides, Mapping):
            raise _fail(path, f"stages.{stage}.overrides", "must be a mapping of config keys")
        stages[stage] = StageSpec(recipe=recipe, overrides=dict(overrides))

    arms_raw = raw["arms"]
    if not isinstance(arms_raw, list) or not arms_raw:
        raise _fail(path, "arms", "must be a non-empty list")
    arms: list[Arm] = []
    for i, item in enumerate(arms_raw):
        where = f"arms[{i}]"
        if not isinstance(item, Mapping):
            raise _fail(path, where, f"expected a mapping, got {type(item).__name__}")
        if "name" not in item:
            raise _fail(path, f"{where}.name", "missing (required)")
        if not isinstance(item["name"], str):
            raise _fail(
                path,
                f"{where}.name",
                f"must be a string; YAML read {item['name']!r} ({type(item['name']).__name__}): quote it",
            )
        arm_name = item["name"]
        if not arm_name or not all(c.isalnum() or c in "_-." for c in arm_name):
            raise _fail(
                path, f"{where}.name", f"must be a folder name (letters, digits, _ - .), got {arm_name!r}"
            )
        if any(a.name == arm_name for a in arms):
            raise _fail(path, f"{where}.name", f"duplicate arm name {arm_name!r}")
        where = f"arms[{arm_name}]"  # from here on, the arm by its name
        if "evaluation" in item:
            raise _fail(
                path,
                f"{where}.evaluation",
                "arms may not change evaluation settings (set them once, at the top)",
            )
        item = _check_keys(path, where, item, _ARM_KEYS)
        deltas, files = {}, {}
        for stage in TRAIN_STAGES:
            if item.get(stage) is not None:
                deltas[stage], files[stage] = _deltas(path, f"{where}.{stage}", item[stage])
        arms.append(
            Arm(
                name=arm_name,
                value=item.get("value"),
                deltas=deltas,
                delta_files=files,
                description=str(item.get("description", "")),
                slurm=check_slurm(item.get("slurm"), f"{where}.slurm", path),
            )
        )
    baseline = str(raw["baseline"])
    if baseline not in {a.name for a in arms}:
        raise _fail(path, "baseline", f"{baseline!r} is not an arm (arms: {', '.join(a.name for a in arms)})")

    evaluation_raw = raw.get("evaluation") or {}
    allowed = set(EvaluationSettings.__dataclass_fields__)
    evaluation_raw = _check_keys(path, "evaluation", evaluation_raw, allowed)
    if evaluation_raw.get("aspect_ratios") is not None:
        # Checked here, so that the error names its own key (the others' are checked by the dataclass).
        try:
            EvaluationSettings(aspect_ratios=evaluation_raw["aspect_ratios"])
        except StudyError as err:
            raise _fail(path, "evaluation.aspect_ratios", str(err).split(" ", 1)[1]) from None
    try:
        evaluation = EvaluationSettings(**evaluation_raw)
    except (StudyError, TypeError) as err:
        raise _fail(path, "evaluation", str(err)) from None

    data_raw = _check_keys(path, "data", raw.get("data") or {"openmoji": {}}, _DATA_KEYS)
    if ("openmoji" in data_raw) == ("dir" in data_raw):
        raise _fail(path, "data", "give exactly one of 'openmoji: {...}' or 'dir: SHARD_DIR'")
    if "openmoji" in data_raw:
        om = _check_keys(path, "data.openmoji", data_raw["openmoji"] or {}, _OPENMOJI_KEYS)
        data = DataSettings(resolution=int(om.get("resolution", 64)), openmoji_limit=om.get("limit"))
        if om.get("aspect_ratios") is not None:
            data = _bucketed_openmoji(path, data, om, stages)
        elif om.get("stride") is not None:
            raise _fail(path, "data.openmoji.stride", "sizes aspect-ratio buckets: give aspect_ratios too")
    else:
        data = DataSettings(resolution=int(data_raw.get("resolution", 64)), dir=str(data_raw["dir"]))

    study = Study(
        name=name,
        path=path,
        variable=str(raw["variable"]),
        baseline=baseline,
        seeds=tuple(seeds),
        arms=tuple(arms),
        stages=stages,
        evaluation=evaluation,
        data=data,
        description=str(raw.get("description", "")),
        slurm=check_slurm(raw.get("slurm"), "slurm", path),
    )
    buckets = data_buckets(study.data)
    if buckets:
        _check_arm_buckets(study, buckets)
    if evaluation.aspect_ratios is not None:
        study = replace(study, evaluation=_checked_evaluation_ratios(path, evaluation, study.data, buckets))
    return study


# ------------------------------------------------------------------------------------------ buckets

#: A data set's aspect-ratio buckets: bucket name ("0.5", "1", "2") → (template h/w, (height, width) pixels).
Buckets = dict[str, tuple[float, tuple[int, int]]]


def _tokenizer_node(config: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``model.tokenizer`` mapping of a stacked tokenizer-stage config (its ``init_args`` when it names a
    class; empty when it names none); None when it is not a mapping."""
    model = config.get("model")
    node = model.get("tokenizer") if isinstance(model, Mapping) else None
    node = {} if node is None else node
    if isinstance(node, Mapping) and "init_args" in node:
        node = node.get("init_args") or {}
    return node if isinstance(node, Mapping) else None


def tokenizer_config(config: Mapping[str, Any]) -> TokenizerConfig | None:
    """The ``TokenizerConfig`` a stacked tokenizer-stage config builds (its ``model.tokenizer``, the fields'
    defaults where it names none; keys that are no field are left out: ``check_deltas`` names those with the
    layer that set them); None when ``model.tokenizer`` is not a mapping.

    Raises:
        ValueError, TypeError: values that break a rule of ``TokenizerConfig`` (a schedule that does not
            grow, per-shape schedules of another scale count, …).
    """
    node = _tokenizer_node(config)
    if node is None:
        return None
    from dataclasses import fields as dataclass_fields

    from infinity_lit.tokenizer.model import TokenizerConfig

    names = {f.name for f in dataclass_fields(TokenizerConfig)}
    return TokenizerConfig(**{k: v for k, v in node.items() if k in names})


def bucket_schedule(tokenizer: TokenizerConfig, size: tuple[int, int]) -> list[tuple[int, int]] | None:
    """The scale schedule a tokenizer of config ``tokenizer`` uses for images of ``size`` (height, width)
    pixels, as ``BitwiseTokenizer.schedule_for`` picks it (``quantizer.schedule_for_grid``): its own for its
    own size, else its configured schedule of that shape, else the method's template of that aspect ratio
    with as many scales if it ends at the latent grid; None when none fits.

    Example: stride 8 and [1, 2, 4, 6, 8] (5 scales) give [(1,1), (2,2), (2,4), (3,6), (5,10)] for 40×80 px
    images and None for 24×48 px ones (the 0.5 template ends at 3×6 with 4 scales, not 5)."""
    from infinity_lit.quantizer.schedules import schedule_for_grid

    height, width = size
    stride = tokenizer.stride
    if height % stride or width % stride:
        return None
    return schedule_for_grid(
        (height // stride, width // stride), tokenizer.scale_schedule, tokenizer.aspect_ratio_schedules
    )


def data_buckets(data: DataSettings) -> Buckets | None:
    """The aspect-ratio buckets of the study's data: those ``data.openmoji.aspect_ratios`` builds, or those
    a ``data.dir``'s manifest records; empty for square data; None for a ``data.dir`` with no readable
    manifest yet (its buckets are then checked when the stages read it)."""
    if data.dir is None:
        if data.aspect_ratios is None:
            return {}
        from infinity_lit.data.shards import bucket_name, template_buckets

        return {
            bucket_name(r): (r, size)
            for r, size in template_buckets(list(data.aspect_ratios), data.resolution, int(data.stride or 0))
        }
    manifest = Path(data.dir) / "manifest.json"
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8")).get("buckets")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(recorded, Mapping):
        return {}  # a square data set
    return {
        str(name): (float(b["aspect_ratio"]), (int(b["size"][0]), int(b["size"][1])))
        for name, b in recorded.items()
    }


def _bucketed_openmoji(
    path: Path, data: DataSettings, om: Mapping[str, Any], stages: Mapping[str, StageSpec]
):
    """``data`` with the OpenMoji buckets of ``om`` (``aspect_ratios``, ``stride``: by default the stride of
    the study's tokenizer recipe with its overrides), checked as ``data openmoji`` checks them."""
    ratios = om["aspect_ratios"]
    if (
        not isinstance(ratios, list)
        or not ratios
        or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in ratios)
    ):
        raise _fail(
            path, "data.openmoji.aspect_ratios", f"must be a non-empty list of h/w numbers, got {ratios!r}"
        )
    stride = om.get("stride")
    if stride is None:
        config = dict(_load_yaml(stages["tokenizer"].recipe))
        if stages["tokenizer"].overrides:
            config = merge(config, stages["tokenizer"].overrides)
        try:
            tokenizer = tokenizer_config(config)
        except (TypeError, ValueError):  # the arms' checks name what is wrong with it
            tokenizer = None
        if tokenizer is None:
            raise _fail(
                path, "data.openmoji.stride", "missing, and the tokenizer recipe does not say its stride"
            )
        stride = tokenizer.stride
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise _fail(path, "data.openmoji.stride", f"must be a positive integer, got {stride!r}")
    from infinity_lit.data.shards import template_buckets

    try:
        buckets = template_buckets([float(r) for r in ratios], data.resolution, stride)
    except ValueError as err:
        key = "stride" if "resolution / stride" in str(err) else "aspect_ratios"
        raise _fail(path, f"data.openmoji.{key}", str(err)) from None
    return replace(data, aspect_ratios=tuple(r for r, _ in buckets), stride=stride)


def _check_arm_buckets(study: Study, buckets: Buckets) -> None:
    """Every arm's tokenizer has a schedule for every bucket (``bucket_schedule``), as a fit checks before
    it starts; else a one-line ``StudyError`` naming the arm, the bucket and the scale count that fits it (or
    the rule its tokenizer config breaks)."""
    from infinity_lit.quantizer.schedules import shape_schedule_for, template_scale_count

    for arm in study.arms:
        tokenizer = _check_tokenizer_values(study, arm)
        if tokenizer is None:
            continue
        stride, schedule = tokenizer.stride, tokenizer.scale_schedule
        for name, (_, (height, width)) in buckets.items():
            if bucket_schedule(tokenizer, (height, width)) is not None:
                continue
            latent = f"{height / stride:g}×{width / stride:g}"
            fitting = (
                template_scale_count((height // stride, width // stride))
                if height % stride == 0 and width % stride == 0
                else None
            )
            own_shape = shape_schedule_for(height / width, tokenizer.aspect_ratio_schedules)
            if own_shape is not None:
                gh, gw = own_shape[-1]
                needs = f"its model.tokenizer.aspect_ratio_schedules entry for h/w {name} ends at {gh}×{gw}"
            elif fitting is not None:
                needs = f"the method's template for h/w {name} ends there with {fitting} scales"
            else:
                needs = "no template of the method ends there"
            raise _fail(
                study.path,
                _tokenizer_where(arm),
                f"the tokenizer's scale_schedule {[list(hw) for hw in schedule]} ({len(schedule)} scales, stride "
                f"{stride}) has no schedule for the data's bucket {name} ({height}×{width} px, latent {latent}): "
                f"{needs}; a non-square bucket is trained on the template with as many scales as the tokenizer's "
                f"own schedule, or on a schedule of model.tokenizer.aspect_ratio_schedules ending at {latent} "
                "(which then replaces that aspect ratio's template)",
            )


def _checked_evaluation_ratios(
    path: Path, evaluation: EvaluationSettings, data: DataSettings, buckets: Buckets | None
) -> EvaluationSettings:
    """``evaluation`` with its aspect ratios as the data's template values (4/3 → 1.333), each checked to be
    a template and one of the data's buckets."""
    from infinity_lit.data.shards import bucket_name
    from infinity_lit.quantizer.schedules import aspect_ratio_schedule, nearest_aspect_ratio

    key = "evaluation.aspect_ratios"
    if buckets is not None and not buckets:
        where = f"the data set in {data.dir}" if data.dir is not None else "the OpenMoji data"
        raise _fail(
            path,
            key,
            f"{where} has no aspect-ratio buckets (give data.openmoji.aspect_ratios, or a data.dir built with "
            "--aspect_ratios)",
        )
    ratios: list[float] = []
    for ratio in evaluation.aspect_ratios or ():
        try:
            aspect_ratio_schedule(ratio, 1)
        except ValueError as err:
            raise _fail(path, key, str(err)) from None
        template = nearest_aspect_ratio(ratio)
        if template in ratios:
            raise _fail(path, key, f"{ratio:g} is given twice (template {template:g})")
        if buckets is not None and bucket_name(template) not in buckets:
            raise _fail(
                path, key, f"{ratio:g} is not a bucket of the data (its buckets: {', '.join(buckets)})"
            )
        ratios.append(template)
    return replace(evaluation, aspect_ratios=tuple(ratios))


def _openmoji_spec(data: DataSettings) -> dict[str, Any]:
    out: dict[str, Any] = {"resolution": data.resolution, "limit": data.openmoji_limit}
    if data.aspect_ratios is not None:
        out.update(aspect_ratios=list(data.aspect_ratios), stride=data.stride)
    return out


def evaluation_settings(evaluation: EvaluationSettings) -> dict[str, Any]:
    """The evaluation settings as plain data, for the spec as run, the evaluation stages' keys and the
    fingerprints: every field, ``aspect_ratios`` (as a list) only when given, so that a study without it
    keeps the keys it had before it existed."""
    out = {k: getattr(evaluation, k) for k in EvaluationSettings.__dataclass_fields__}
    if out["aspect_ratios"] is None:
        del out["aspect_ratios"]
    else:
        out["aspect_ratios"] = list(out["aspect_ratios"])
    return out


def resolved_spec(study: Study) -> dict[str, Any]:
    """The spec as plain data that stands alone: absolute recipe paths and every delta inline (written to a
    study's output folder, so that ``status`` / ``report`` need nothing else). ``load_study`` reads it back
    to an equal study."""
    return {
        "name": study.name,
        "description": study.description,
        "variable": study.variable,
        "baseline": study.baseline,
        "seeds": list(study.seeds),
        "data": {"dir": study.data.dir, "resolution": study.data.resolution}
        if study.data.dir is not None
        else {"openmoji": _openmoji_spec(study.data)},
        "stages": {
            name: {"recipe": str(stage.recipe.resolve()), "overrides": dict(stage.overrides)}
            for name, stage in study.stages.items()
        },
        "evaluation": evaluation_settings(study.evaluation),
        "slurm": copy.deepcopy(dict(study.slurm)),
        "arms": [
            {
                "name": arm.name,
                "value": arm.value,
                "description": arm.description,
                **{stage: [dict(d) for d in deltas] for stage, deltas in arm.deltas.items()},
                **({"slurm": copy.deepcopy(dict(arm.slurm))} if arm.slurm else {}),
            }
            for arm in study.arms
        ],
    }


# ------------------------------------------------------------------------------------------ stage keys


def merge(base: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """``delta`` stacked on ``base`` as stacked config files are: mappings merge key by key, anything else
    (lists included) is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in delta.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def stacked_config(study: Study, arm: Arm, stage: str) -> dict[str, Any]:
    """The stage's recipe with the study's overrides and the arm's deltas stacked on it (plain data)."""
    config = dict(_load_yaml(study.stages[stage].recipe))
    for delta in study.stage_configs(arm, stage):
        config = merge(config, delta)
    return config


def stage_key(
    study: Study,
    arm: Arm,
    seed: int,
    stage: str,
    upstream: Sequence[str] = (),
    data_content: str | None = None,
) -> str:
    """12 hex digits identifying what ``stage`` of (``arm``, ``seed``) computes: equal keys share a stage.

    Hashes the stacked configuration (contents, not file paths), the seed, the data settings, the content
    of a ``data.dir`` (``data_content``: ``data.shards_digest``, as ``plan`` passes it; so shards rebuilt
    under the same path give new keys and are not silently reused), the stage's name, the keys of the
    stages it consumes and, for a training stage whose configs name no ``trainer.precision``, the precision
    it trains in on this machine (``precision.training_precision_of``).
    """
    config = stacked_config(study, arm, stage) if stage in TRAIN_STAGES else None
    payload = {
        "stage": stage,
        "config": config,
        "seed": seed,
        "data": study.data.as_dict(),
        "upstream": list(upstream),
    }
    if config is not None and not (config.get("trainer") or {}).get("precision"):
        # The recipe names no precision: the fit trains in this machine's fast one, which the key must say.
        from infinity_lit.precision import training_precision_of

        payload["precision"] = training_precision_of(config.get("trainer"))
    if data_content is not None:
        payload["data_content"] = data_content
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def parser_error(text: str) -> tuple[str | None, str]:
    """The offending key (dotted, None when the message names none) and the reason, in one line, of what
    LightningCLI's parser wrote on a config that does not parse: its ``error:`` part, without the usage
    lines and the ``tip:`` before it; an error inside a ``class_path`` (``model.tokenizer``, ``data``) is
    followed down to the key that failed, the alternatives it also tried (``NoneType``) left out."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("error:")), None)
    if start is None:  # no error line: whatever is not usage text
        kept = [
            line
            for line in lines
            if line.strip() and not line.startswith(("usage:", "tip:")) and not line.startswith(" ")
        ]
        return None, " ".join(" ".join(kept).split())[:300] or "the parser gave no reason"
    message = " ".join(" ".join([lines[start].removeprefix("error:"), *lines[start + 1 :]]).split())
    message = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", message)
    message = re.sub(r"Expected an? (\w+)\. Got value: ", r"expected \1, got ", message)
    key: str | None = None
    if m := re.match(r'Parser key "([^"]+)": (.*)', message):
        key, message = m[1], m[2]
        classes = []
        while m := re.search(r"Problem with given class_path '([^']+)': (.*)", message):
            classes.append(m[1])
            message = m[2]
            if inner := re.match(r'Parser key "([^"]+)": (.*)', message):
                key, message = f"{key}.{inner[1]}", inner[2]
            elif inner := re.match(r"Group '([^']+)' does not accept option '([^']+)'", message):
                key, message = f"{key}.{inner[2]}", f"{inner[1]} has no option {inner[2]!r}"
                break
            elif inner := re.match(r"Option '([^']+)' is not accepted", message):
                key, message = f"{key}.{inner[1]}", "no such option"
                break
        message = re.split(r" - | Given value type:", message)[0].strip()
        if classes:
            message += f" (in {classes[-1]})"
    elif m := re.match(r"Group '([^']+)' does not accept option '([^']+)'", message):
        key, message = f"{m[1]}.{m[2]}", f"{m[1]} has no option {m[2]!r}"
    elif m := re.match(r"Option '([^']+)' is not accepted", message):
        key, message = m[1], "no such option"
    return key, message[:300]


def _lookup(config: Any, key: str) -> tuple[str, Any] | None:
    """(its path as the config spells it, value) of a dotted ``key`` in a config mapping, also through
    ``init_args`` levels (``data.batch_size`` is found as ``data.init_args.batch_size``); None if absent."""
    parts = key.split(".")

    def walk(node: Any, i: int, path: tuple[str, ...]) -> tuple[str, Any] | None:
        if i == len(parts):
            return ".".join(path), node
        if isinstance(node, Mapping):
            if parts[i] in node:
                found = walk(node[parts[i]], i + 1, (*path, parts[i]))
                if found is not None:
                    return found
            if isinstance(node.get("init_args"), Mapping):
                return walk(node["init_args"], i, (*path, "init_args"))
        return None

    return walk(config, 0, ())


def _delta_error(study: Study, arm: Arm, stage: str, text: str) -> StudyError:
    """The one-line error of ``arm``'s ``stage`` config that does not parse: the key, its value and which
    layer set it (the last that does: the arm's delta, the study's overrides or the recipe)."""
    key, reason = parser_error(text)
    where = f"arms[{arm.name}].{stage}"
    if key is None:
        return _fail(study.path, where, f"does not parse: {reason}")
    layers = [(f"the recipe {study.stages[stage].recipe.name}", _load_yaml(study.stages[stage].recipe))]
    if study.stages[stage].overrides:
        layers.append((f"stages.{stage}.overrides", study.stages[stage].overrides))
    layers += [(f"this arm's {stage} delta", delta) for delta in arm.deltas.get(stage, ())]
    for source, config in reversed(layers):
        found = _lookup(config, key)
        if found is not None:
            shown = json.dumps(found[1], default=str)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            return _fail(
                study.path, where, f"does not parse: {found[0]} = {shown} (set by {source}): {reason}"
            )
    return _fail(study.path, where, f"does not parse: {key}: {reason}")


def _tokenizer_where(arm: Arm) -> str:
    """The spec key that sets an arm's tokenizer: its own delta, else the stage's recipe and overrides."""
    return f"arms[{arm.name}].tokenizer" if arm.deltas.get("tokenizer") else "stages.tokenizer"


def _check_tokenizer_values(study: Study, arm: Arm) -> TokenizerConfig | None:
    """The arm's ``TokenizerConfig`` (``tokenizer_config``), built to run the rules it checks when it is
    built (a schedule that does not grow, per-shape schedules of another scale count, …), which parsing alone
    does not run; a one-line ``StudyError`` when it breaks one."""
    try:
        return tokenizer_config(stacked_config(study, arm, "tokenizer"))
    except (TypeError, ValueError) as err:
        raise _fail(study.path, f"{_tokenizer_where(arm)}: model.tokenizer", str(err)) from None


def check_deltas(study: Study) -> None:
    """Check that every arm's stacked config parses against its stage's LightningCLI (no training).

    Raises:
        StudyError: the first arm and stage that does not parse: one line naming the file, the arm, the
            stage, the offending key with its value and the layer that set it, and the parser's reason
            (``parser_error``; never its usage text); or a tokenizer config whose values break a rule
            ``TokenizerConfig`` checks when it is built (``_check_tokenizer_values``).
    """
    import contextlib
    import io
    import tempfile

    from infinity_lit.studies.stages import module_class
    from infinity_lit.training import run_cli

    parsed: set[tuple[str, str]] = set()
    with tempfile.TemporaryDirectory() as tmp:
        for arm in study.arms:
            for stage in TRAIN_STAGES:
                deltas = study.stage_configs(arm, stage)
                key = (stage, yaml.safe_dump([dict(d) for d in deltas]))
                if key in parsed:  # arms that share a stage's config (one tokenizer for several) parse once
                    continue
                parsed.add(key)
                files = [str(study.stages[stage].recipe)]
                for i, delta in enumerate(deltas):
                    file = Path(tmp) / f"{arm.name}-{stage}-{i}.yaml"
                    file.write_text(yaml.safe_dump(dict(delta)), encoding="utf-8")
                    files.append(str(file))
                args = ["fit", *[a for f in files for a in ("-c", f)], "--print_config"]
                err = io.StringIO()
                try:
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                        run_cli(module_class(stage), args, tmp)
                except SystemExit as exit_:
                    if exit_.code not in (0, None):
                        raise _delta_error(study, arm, stage, err.getvalue()) from None
                if stage == "tokenizer":
                    _check_tokenizer_values(study, arm)
