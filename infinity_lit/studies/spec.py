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
    arms:
      - {name: p00, value: 0.0, generator: {model: {max_flip_prob: 0.0}}}
      - {name: p30, value: 0.3, generator: {model: {max_flip_prob: 0.3}}}
      - {name: no_requant, value: 0.3, generator: generator/arms/bsc_no_requant.yaml}

A delta is a mapping (inline) or a YAML file path, or a list of them, stacked after the stage's recipe and
its study-wide ``overrides`` exactly as ``-c`` files are stacked on the command line. Recipe and delta
paths are looked up beside the spec, then among the shipped recipes (``infinity_lit.recipes.recipe_path``).
The evaluation settings belong to the study, never to an arm, so every arm is measured the same way.

``load_study`` validates the spec before anything runs: unknown keys, duplicate arm names, an empty seed
list, a baseline that is not an arm, a missing recipe or delta file, a delta for an unknown stage, an arm
that tries to change evaluation settings — each a one-line ``StudyError`` naming the file and the key.
``check_deltas`` (slower: it builds each stage's LightningCLI parser) also checks that every arm's
stacked config parses against its stage.

Stage keys: ``stage_key`` hashes a stage's stacked configuration (recipe and delta contents, not their
paths), the seed, the data settings and the keys of its upstream stages; two (arm, seed) whose keys are
equal share that stage, which runs once.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: The trainable stages, in order; each may have a base recipe and per-arm deltas.
TRAIN_STAGES = ("tokenizer", "generator")

_TOP_KEYS = {"name", "description", "variable", "baseline", "seeds", "data", "stages", "evaluation", "arms"}
_STAGE_KEYS = {"recipe", "overrides"}
_ARM_KEYS = {"name", "value", "description", *TRAIN_STAGES}
_DATA_KEYS = {"openmoji", "dir", "resolution"}
_OPENMOJI_KEYS = {"resolution", "limit"}


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
    """

    split: str = "val"
    num_images: int | None = None
    cfg: float = 3.0
    tau: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    clip_weights: str | None = None
    inception_weights: str | None = None

    def __post_init__(self) -> None:
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
        resolution: image side in pixels.
        openmoji_limit: with OpenMoji: render only this many emoji (None: all).
        dir: a shard folder (``infinity-lit data …``) instead of OpenMoji.
    """

    resolution: int = 64
    openmoji_limit: int | None = None
    dir: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"resolution": self.resolution, "openmoji_limit": self.openmoji_limit, "dir": self.dir}


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
    """

    name: str
    value: float | int | str | None
    deltas: Mapping[str, tuple[Mapping[str, Any], ...]]
    delta_files: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    description: str = ""


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
    from infinity_lit.recipes import recipe_path

    try:
        return Path(recipe_path(str(name)))
    except (FileNotFoundError, ValueError):
        raise FileNotFoundError(
            f"{name} (looked beside the spec in {spec_dir} and among the shipped recipes)"
        ) from None


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
        if isinstance(item, Mapping) and "evaluation" in item:
            raise _fail(
                path,
                f"{where}.evaluation",
                "arms may not change evaluation settings (set them once, at the top)",
            )
        item = _check_keys(path, where, item, _ARM_KEYS)
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
            )
        )
    baseline = str(raw["baseline"])
    if baseline not in {a.name for a in arms}:
        raise _fail(path, "baseline", f"{baseline!r} is not an arm (arms: {', '.join(a.name for a in arms)})")

    evaluation_raw = raw.get("evaluation") or {}
    allowed = set(EvaluationSettings.__dataclass_fields__)
    evaluation_raw = _check_keys(path, "evaluation", evaluation_raw, allowed)
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
    else:
        data = DataSettings(resolution=int(data_raw.get("resolution", 64)), dir=str(data_raw["dir"]))

    return Study(
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
    )


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
        else {"openmoji": {"resolution": study.data.resolution, "limit": study.data.openmoji_limit}},
        "stages": {
            name: {"recipe": str(stage.recipe.resolve()), "overrides": dict(stage.overrides)}
            for name, stage in study.stages.items()
        },
        "evaluation": {k: getattr(study.evaluation, k) for k in EvaluationSettings.__dataclass_fields__},
        "arms": [
            {
                "name": arm.name,
                "value": arm.value,
                "description": arm.description,
                **{stage: [dict(d) for d in deltas] for stage, deltas in arm.deltas.items()},
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
    under the same path give new keys and are not silently reused), the stage's name and the keys of the
    stages it consumes.
    """
    payload = {
        "stage": stage,
        "config": stacked_config(study, arm, stage) if stage in TRAIN_STAGES else None,
        "seed": seed,
        "data": study.data.as_dict(),
        "upstream": list(upstream),
    }
    if data_content is not None:
        payload["data_content"] = data_content
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def check_deltas(study: Study) -> None:
    """Check that every arm's stacked config parses against its stage's LightningCLI (no training).

    Raises:
        StudyError: the first arm and stage that does not parse, with the parser's message.
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
                        message = " ".join(err.getvalue().split())[-400:]
                        raise _fail(
                            study.path, f"arms[{arm.name}].{stage}", f"does not parse: {message}"
                        ) from None
