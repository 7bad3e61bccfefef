"""The study runner: every (arm, seed) of a study through the stages, shared where equal, resumable.

    OUT/                                   runs/studies/<study> by default
      study.yaml                           the spec as run
      data/                                the shards (built once)
      stages.json                          stage key → the folder that computes it
      <arm>/seed_<s>/tokenizer/            fit (TensorBoard run in run/, checkpoints in run/checkpoints/)
      <arm>/seed_<s>/generator/            fit on that tokenizer
      <arm>/seed_<s>/recon/                reconstruction metrics of the tokenizer (held-out split)
      <arm>/seed_<s>/samples/              one sample per held-out caption (PNGs + metadata.jsonl)
      <arm>/seed_<s>/score/                FID / KID / CLIP score of those samples (metrics.json)
      <arm>/seed_<s>/hparams/              TensorBoard HParams session: studied variable + final metrics
      report/                              the comparison (comparison.html, comparison.md, assets/, records.json)

With ``evaluation.aspect_ratios`` (a study on data with aspect-ratio buckets), ``samples/ar<bucket>/``
holds one sample per held-out caption of that bucket at its aspect ratio, ``score/ar<bucket>/metrics.json``
scores it against that bucket's held-out images and ``score/metrics.json`` all of them pooled against the
whole held-out split; the report has ``fid@ar<bucket>`` (``kid@…``) beside the pooled ``fid`` (``kid``), and
the fingerprint says which buckets each number covers (``stages.sample_buckets``, ``stages.score_buckets``).

Each stage has a key (``spec.stage_key``: its stacked config, seed, data and upstream keys). The first
(arm, seed) in spec order that needs a key computes it in its own folder; every other (arm, seed) with
that key gets a symbolic link to that folder (e.g. the bit-flip arms share one tokenizer per seed). A
finished stage leaves ``DONE.json``; a failed one ``FAILED.json`` with the error, and its downstream
stages are marked failed too while the other (arm, seed) carry on. A stage in progress holds ``RUNNING``,
naming the process that runs it (pid and host), so that a stage whose process was killed reads as
"interrupted" rather than "running". Running again skips finished stages, resumes interrupted fits from
``last.ckpt`` and retries failed ones.

Stages are taken seed by seed (``seed_major``: for the first seed every arm's tokenizer fit, generator fit and
evaluations, then the next seed), so every arm has a comparable first seed early:
``launcher="local"`` runs them one after the other in this process; ``"parallel"`` and ``"slurm"`` hand
each stage to submitit (its local executor on this machine, SLURM on a cluster), which is also the path
the tests exercise with ``"submitit-local"``. Those keep ``jobs`` stages in flight at once as a rolling
pool (``run_pool``): a stage starts as soon as a slot is free and the stages it reads have ended, so a slow
stage holds up only what is downstream of it. On this machine, slot ``k`` of the pool gets the CUDA device
``k mod n`` of the ``n`` visible ones (``cuda_devices``), so parallel stages do not share a GPU while
there are enough. With SLURM, each job gets the SLURM parameters of its task's arm (the spec's study-wide
``slurm``, the arm's ``slurm``, then ``--slurm``: ``stage_executors``); a stage shared by several arms is
submitted once, for the first arm in spec order that needs it, with that arm's parameters. They are in no
stage key: where a stage ran does not change what it computed.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from infinity_lit import runs

from .spec import (
    TRAIN_STAGES,
    Arm,
    Study,
    check_deltas,
    check_slurm,
    evaluation_settings,
    load_study,
    resolved_spec,
    stage_key,
)

#: Stages of one (arm, seed), in order; each consumes the ones named in ``UPSTREAM``.
STAGES = ("tokenizer", "generator", "recon", "samples", "score")
UPSTREAM = {
    "tokenizer": (),
    "generator": ("tokenizer",),
    "recon": ("tokenizer",),
    "samples": ("generator",),
    "score": ("samples",),
}
#: Default parent folder of study outputs.
STUDIES_DIR = runs.RUNS_ROOT / "studies"
FAILED = "FAILED.json"
#: Marker of a stage in progress: JSON {"since", "pid", "host", "process_start"} of the process running it.
RUNNING = "RUNNING"
#: What ``format_status`` says of a stage whose process is gone.
RESUME_HINT = "(re-run `study run` to resume)"
#: File holding the stage key a folder was computed for (an edited spec changes it: the stage reruns).
KEY = "STAGE_KEY"

Launcher = Literal["local", "parallel", "slurm", "submitit-local"]


@dataclass(frozen=True)
class Task:
    """One stage of one (arm, seed).

    Attributes:
        stage: one of ``STAGES``.
        arm: the arm's name.
        seed: the training seed.
        key: the stage key (equal keys compute the same thing).
        folder: this (arm, seed)'s folder of the stage, relative to the study output.
        owner: the folder that computes the key (equal to ``folder`` for the first (arm, seed) needing it).
        upstream: the tasks' folders this stage reads, by stage name (owner folders).
    """

    stage: str
    arm: str
    seed: int
    key: str
    folder: str
    owner: str
    upstream: dict[str, str] = field(default_factory=dict)

    @property
    def shared(self) -> bool:
        return self.folder != self.owner


def run_folder(arm: str, seed: int) -> str:
    """``<arm>/seed_<seed>`` (relative to the study output)."""
    return f"{arm}/seed_{seed}"


def data_content(study: Study) -> str | None:
    """What the study's ``data.dir`` holds (``data.shards_digest``); None for the OpenMoji data the study
    builds itself from its settings, or a folder that holds no readable shard set (the run then stops with
    the data's own error)."""
    if study.data.dir is None:
        return None
    from infinity_lit.data.shards import shards_digest

    try:
        return shards_digest(study.data.dir)
    except (FileNotFoundError, ValueError):
        return None


def plan(study: Study) -> list[Task]:
    """Every stage of every (arm, seed), in spec order (seeds outer, arms inner), with keys and owners.

    The keys (``stage_key``) include the content of a ``data.dir``: shards changed under the same path make
    every stage "stale" (set aside and run again), never silently reused."""
    eval_settings = evaluation_settings(study.evaluation)
    content = data_content(study)
    owners: dict[str, str] = {}
    tasks: list[Task] = []
    for seed in study.seeds:
        for arm in study.arms:
            keys: dict[str, str] = {}
            owner_of: dict[str, str] = {}
            for stage in STAGES:
                upstream_keys = [keys[u] for u in UPSTREAM[stage]]
                if stage in TRAIN_STAGES:
                    key = stage_key(study, arm, seed, stage, upstream_keys, content)
                else:
                    key = stage_key(
                        study,
                        _NO_DELTAS,
                        0,
                        f"{stage}:{json.dumps(eval_settings, sort_keys=True)}",
                        upstream_keys,
                        content,
                    )
                keys[stage] = key
                folder = f"{run_folder(arm.name, seed)}/{stage}"
                owner = owners.setdefault(key, folder)
                owner_of[stage] = owner
                tasks.append(
                    Task(stage, arm.name, seed, key, folder, owner, {u: owner_of[u] for u in UPSTREAM[stage]})
                )
    return tasks


#: An arm without deltas, for the evaluation stages' keys (they depend on their upstream keys only).
_NO_DELTAS = Arm(name="-", value=None, deltas={})


# ------------------------------------------------------------------------------------------ state


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first; the process's start time,
    in clock ticks since boot, at index 19), or None where there is no such file (no such process, or no
    ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def mark_running(folder: Path) -> dict[str, Any]:
    """Write ``folder/RUNNING``: when the stage started and the process that runs it (pid, host name and
    the process's start time where ``/proc`` gives it), so that ``stage_state`` can tell a stage in
    progress from one whose process was killed.

    Returns:
        the record written.
    """
    pid = os.getpid()
    stat = _proc_stat(pid)
    record = {
        "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "pid": pid,
        "host": socket.gethostname(),
        "process_start": stat[19] if stat is not None and len(stat) > 19 else None,
    }
    runs.atomic_write_text(folder / RUNNING, json.dumps(record))
    return record


def process_alive(record: dict[str, Any]) -> bool | None:
    """Whether the process a ``RUNNING`` record names still runs: False when it is gone (no such process,
    a zombie, or its pid now belongs to a later process), None when this machine cannot tell (a marker
    from another host, or one without a pid)."""
    pid = record.get("pid")
    if not isinstance(pid, int) or record.get("host") != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a process of another user: it exists
    except OSError:
        return None
    stat = _proc_stat(pid)
    if stat is not None:
        if stat[0] in ("Z", "X"):  # ended, not yet reaped by its parent
            return False
        started = record.get("process_start")
        if started is not None and len(stat) > 19 and stat[19] != started:
            return False
    return True


def _running_record(marker: Path) -> dict[str, Any] | None:
    """A ``RUNNING`` marker's record (``{"since": text}`` for a marker without a process), None if absent."""
    try:
        text = marker.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        record = None
    return record if isinstance(record, dict) else {"since": text}


def stage_state(out: Path, task: Task) -> dict[str, Any]:
    """{"state": "done"|"failed"|"running"|"interrupted"|"stale"|"pending", ...the marker's record} of a
    task's owner folder. "interrupted": a stage marked running whose process is gone (``process_alive``;
    killed, or its machine restarted); running the study again resumes it. A stage marked running on
    another host (a SLURM node), or by a marker that names no process, cannot be checked from here: it
    reads as "running" with ``"checked": False`` (``format_status`` says so, with the host, pid and
    start); ``"checked": True`` where this machine saw the process alive."""
    folder = out / task.owner
    key_file = folder / KEY
    if key_file.is_file() and key_file.read_text(encoding="utf-8").strip() != task.key:
        # The folder holds this stage as computed from another configuration (the spec was edited).
        return {"state": "stale", "key": key_file.read_text(encoding="utf-8").strip()}
    done = runs.read_done(folder)
    if done is not None:
        return {"state": "done", **done}
    failed = folder / FAILED
    if failed.is_file():
        return {"state": "failed", **json.loads(failed.read_text(encoding="utf-8"))}
    record = _running_record(folder / RUNNING)
    if record is not None:
        alive = process_alive(record)
        if alive is False:
            return {"state": "interrupted", **record}
        return {"state": "running", **record, "checked": alive is True}
    return {"state": "pending"}


def _link_shared(out: Path, task: Task) -> None:
    link = out / task.folder
    if not task.shared or link.exists() or link.is_symlink():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(out / task.owner, link.parent), target_is_directory=True)


def _prepare(study: Study, out: Path, tasks: Sequence[Task]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_text(out / "study.yaml", yaml.safe_dump(resolved_spec(study), sort_keys=False))
    registry = {t.key: {"stage": t.stage, "folder": t.owner} for t in tasks}
    runs.atomic_write_text(out / "stages.json", json.dumps(registry, indent=2, sort_keys=True))
    for task in tasks:
        (out / task.owner).mkdir(parents=True, exist_ok=True)
    for task in tasks:
        _link_shared(out, task)


# ------------------------------------------------------------------------------------------ one stage


def upstream_failure(out: Path, task: Task) -> dict[str, Any] | None:
    """When an upstream stage of ``task`` has not finished: mark ``task`` failed and return its state."""
    for name, upstream in task.upstream.items():
        if runs.read_done(out / upstream) is None:
            record = {"stage": task.stage, "error": f"upstream stage {name} ({upstream}) did not finish"}
            runs.atomic_write_text(out / task.owner / FAILED, json.dumps(record, indent=2))
            return {"state": "failed", **record}
    return None


def execute(spec_path: str, out: str, task: Task, data_dir: str) -> dict[str, Any]:
    """Run one stage (in this process) unless it is done; writes ``DONE.json`` or ``FAILED.json``.

    While it runs, the stage holds a ``RUNNING`` marker (``mark_running``), removed when it finishes or
    fails; a stage stopped by a signal (SIGTERM, Ctrl+C: ``SystemExit`` / ``KeyboardInterrupt``, raised
    again) keeps it, and reads "interrupted" once this process has ended.

    A module-level function of plain arguments, so that submitit can pickle it.

    Returns:
        the stage's state record (``stage_state``).
    """
    from . import stages

    study = load_study(spec_path)
    root = Path(out)
    folder = root / task.owner
    state = stage_state(root, task)
    if state["state"] == "done":
        return state
    blocked = upstream_failure(root, task)
    if blocked is not None:
        return blocked
    if state["state"] == "stale":
        # Keep what the old configuration produced beside it, and compute this one afresh.
        folder.rename(folder.with_name(f"{folder.name}.stale-{state['key']}"))
        folder.mkdir(parents=True)
    runs.atomic_write_text(folder / KEY, task.key)
    (folder / FAILED).unlink(missing_ok=True)
    mark_running(folder)
    arm = study.arm(task.arm)
    ev = study.evaluation
    start = time.time()
    stopped = False
    try:
        if task.stage in TRAIN_STAGES:
            overrides = ["--seed_everything", str(task.seed)]
            if task.stage == "generator":
                tokenizer = runs.last_checkpoint(root / task.upstream["tokenizer"] / runs.STAGE_RUN)
                overrides += ["--model.tokenizer_checkpoint", str(tokenizer.resolve())]
            stages.fit(
                task.stage,
                recipe=study.stages[task.stage].recipe,
                configs=stages.write_deltas(folder / "config", study.stage_configs(arm, task.stage)),
                out=folder.parent,
                data_dir=Path(data_dir),
                resolution=study.data.resolution,
                overrides=overrides,
                hparams_session=False,  # the study's own session per (arm, seed): write_hparams
            )
        elif task.stage == "recon":
            tokenizer = runs.last_checkpoint(root / task.upstream["tokenizer"] / runs.STAGE_RUN)
            record = stages.reconstruction(
                tokenizer, Path(data_dir), folder, ev.num_images, ev.inception_weights
            )
            runs.mark_done(folder, {"metrics": record["metrics"], "seconds": round(time.time() - start, 1)})
        elif task.stage == "samples":
            generator = runs.last_checkpoint(root / task.upstream["generator"] / runs.STAGE_RUN)
            if ev.aspect_ratios:
                # The captions of each bucket as prompts files in one place for every (arm, seed).
                prompts = root / "data" / "prompts"
                result = stages.sample_buckets(generator, folder, Path(data_dir), ev, prompts)
            else:
                result = stages.sample(generator, folder, Path(data_dir), ev)
            runs.mark_done(
                folder, {**result, "checkpoint": str(generator), "seconds": round(time.time() - start, 1)}
            )
        elif task.stage == "score":
            if ev.aspect_ratios:
                record = stages.score_buckets(root / task.upstream["samples"], folder, Path(data_dir), ev)
            else:
                record = stages.score(root / task.upstream["samples"], folder, Path(data_dir), ev)
            covered = {"buckets": record["buckets"]} if "buckets" in record else {}
            runs.mark_done(
                folder, {"metrics": record["metrics"], **covered, "seconds": round(time.time() - start, 1)}
            )
        else:  # pragma: no cover - STAGES is closed
            raise ValueError(f"unknown stage {task.stage!r}")
    except Exception as err:  # a failed stage is recorded; the study goes on with the others
        record = {
            "stage": task.stage,
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
            "seconds": round(time.time() - start, 1),
        }
        runs.atomic_write_text(folder / FAILED, json.dumps(record, indent=2))
        return {"state": "failed", **record}
    except BaseException:
        # Stopped (SIGTERM, Ctrl+C), not failed: the marker stays, so that the stage reads "interrupted"
        # once this process has ended.
        stopped = True
        raise
    finally:
        if not stopped:
            (folder / RUNNING).unlink(missing_ok=True)
    return stage_state(root, task)


# ------------------------------------------------------------------------------------------ launching


def _owner_tasks(tasks: Sequence[Task]) -> list[Task]:
    return [t for t in tasks if not t.shared]


def _submitit_executor(out: Path, launcher: Launcher, threads: int | None, slurm: dict[str, Any] | None):
    """A submitit executor for ``launcher`` whose jobs are named after the study, with a day's time limit and
    ``threads`` CPUs; with "slurm", ``slurm`` (SLURM parameters, ``spec.check_slurm``'s names) on top."""
    import submitit

    cluster = {"parallel": "local", "submitit-local": "local", "slurm": "slurm"}[launcher]
    executor = submitit.AutoExecutor(folder=out / "_submitit" / "%j", cluster=cluster)
    params: dict[str, Any] = {"timeout_min": 24 * 60, "name": f"study-{out.name}"}
    if threads is not None:
        params["cpus_per_task"] = threads
    if launcher == "slurm":
        params.update(
            {f"slurm_{k}" if not k.startswith("slurm_") else k: v for k, v in (slurm or {}).items()}
        )
    executor.update_parameters(**params)
    return executor


def stage_executors(
    out: Path, launcher: Launcher, threads: int | None, study: Study, slurm: dict[str, Any] | None = None
) -> Callable[[Task], Any]:
    """The submitit executor of each task, as ``run_study`` submits it: with "slurm", one per distinct set
    of SLURM parameters (``Study.slurm_parameters`` of the task's arm: the spec's, the arm's, then
    ``slurm``, the command line's), made on first use; the other launchers share one. A stage shared by
    several arms is submitted as its owner task, so it runs with the parameters of the first arm in spec
    order that needs it.

    Raises:
        StudyError: an unknown SLURM parameter or a wrong type in ``slurm`` (at once, not on first use).
    """
    if launcher != "slurm":
        executor = _submitit_executor(out, launcher, threads, None)
        return lambda task: executor
    for arm in study.arms:
        study.slurm_parameters(arm.name, slurm)  # checks the command line's parameters now
    executors: dict[str, Any] = {}

    def executor_for(task: Task) -> Any:
        params = study.slurm_parameters(task.arm, slurm)
        key = json.dumps(params, sort_keys=True, default=str)
        if key not in executors:
            executors[key] = _submitit_executor(out, launcher, threads, params)
        return executors[key]

    return executor_for


def cuda_devices() -> list[str]:
    """The CUDA devices this process may hand out, as ``CUDA_VISIBLE_DEVICES`` entries: that variable's own
    entries when it is set (indices or UUIDs; none when it is empty), else ``0 … n-1`` for the devices torch
    sees (none without CUDA)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and not d.strip().startswith("-")]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def seed_major(tasks: Sequence[Task], seeds: Sequence[int]) -> list[Task]:
    """``tasks`` in the order a study runs them: seed by seed (in ``seeds`` order), and within a seed stage
    by stage (``STAGES``: every arm's tokenizer, then every arm's generator, …), arms in spec order. A long
    study thus has every arm compared on its first seed early, and gains a seed (and its intervals) each
    time one is finished, instead of showing nothing until the last fit ends.

    Raises:
        KeyError: a task whose seed is not in ``seeds``.
    """
    rank = {seed: i for i, seed in enumerate(seeds)}
    position = {stage: i for i, stage in enumerate(STAGES)}
    return sorted(tasks, key=lambda t: (rank[t.seed], position[t.stage]))  # stable: arms keep their order


def run_pool(
    tasks: Sequence[Task],
    submit_one: Callable[[Task, int], dict[str, Any]],
    jobs: int,
    report: Callable[[Task, dict[str, Any]], None],
    blocked: Callable[[Task], dict[str, Any] | None] = lambda task: None,
    stop: threading.Event | None = None,
) -> None:
    """Run ``tasks`` through ``submit_one(task, slot)``, at most ``jobs`` at once, each on a slot
    ``0 … jobs-1`` that no other task holds meanwhile: a rolling pool (``concurrent.futures``), not waves.

    A task starts, in the order given, as soon as a slot is free and every stage it reads
    (``Task.upstream``) that is among ``tasks`` has ended; ``blocked(task)`` is asked then, and a state
    record it returns (an upstream stage failed) is reported instead of running the task. ``report(task,
    state)`` is called in this thread as each task ends. When the loop ends early (Ctrl+C here, an error of
    ``submit_one`` or ``report``), ``stop`` is set before the calls in flight are waited for: ``submit_one``
    should then return without waiting for its job.

    Raises:
        whatever ``submit_one`` raises (the tasks in flight are waited for first).
    """
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    jobs = max(1, jobs)
    unfinished = {t.owner for t in tasks}
    pending = list(tasks)
    free = list(range(jobs))
    running: dict[Future, tuple[Task, int]] = {}
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="study-stage") as pool:
        try:
            while pending or running:
                while free:
                    ready = next((t for t in pending if not unfinished & set(t.upstream.values())), None)
                    if ready is None:
                        break
                    pending.remove(ready)
                    state = blocked(ready)
                    if state is not None:
                        unfinished.discard(ready.owner)
                        report(ready, state)
                        continue
                    slot = free.pop(0)
                    running[pool.submit(submit_one, ready, slot)] = (ready, slot)
                if not running:
                    if pending:  # pragma: no cover - an upstream stage is always earlier in plan order
                        raise RuntimeError(
                            f"stages wait on stages that never run: {[t.owner for t in pending]}"
                        )
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: running[f][1]):
                    task, slot = running.pop(future)
                    free.append(slot)
                    free.sort()
                    unfinished.discard(task.owner)
                    report(task, future.result())
        except BaseException:
            if stop is not None:
                stop.set()  # before the pool waits for the calls in flight
            raise


def run_study(
    spec: Path,
    out: str | Path | None = None,
    launcher: Launcher = "local",
    jobs: int = 1,
    threads: int | None = None,
    slurm: dict[str, Any] | None = None,
    report: bool = True,
    check: bool = True,
) -> dict[str, Any]:
    """Run (or resume) every (arm, seed) of a study through every stage, then write the comparison.

    Args:
        spec: the study spec YAML.
        out: output folder (default ``runs/studies/<study name>``).
        launcher: "local" (one stage after the other, in this process), "parallel" (``jobs`` stages at
            once, as local submitit jobs, slot ``k`` on CUDA device ``k mod n`` when ``n`` are visible),
            "slurm" (one SLURM job per stage through submitit, ``jobs`` in flight), "submitit-local" (like
            "parallel" with ``jobs`` 1: the submitit path on one machine).
        jobs: stages run at once (parallel / slurm), as a rolling pool (``run_pool``).
        threads: CPU threads per stage (``torch.set_num_threads``; also submitit's cpus_per_task);
            default: torch's default (all cores) for "local", cores // jobs for "parallel".
        slurm: submitit SLURM parameters, e.g. {"partition": "gpu", "gpus_per_node": 1, "timeout_min": 600},
            stacked on the spec's study-wide and per-arm ``slurm`` (``Study.slurm_parameters``).
        report: write the comparison report at the end.
        check: first parse every arm's stacked config against its stage (``spec.check_deltas``; each
            distinct config once, a few seconds each), so that a bad delta stops the study before anything
            is written or trained.

    Returns:
        {"out": folder, "status": ``status`` rows, "failed": number of failed (arm, seed), "report": paths}.

    Raises:
        StudyError: an invalid spec, an unknown SLURM parameter in ``slurm``, or (``check``) a delta that
            does not parse against its stage; raised before anything runs.
    """
    from . import stages

    study = load_study(spec)
    if slurm:
        check_slurm(slurm, "--slurm")
    if check:
        check_deltas(study)
    out = Path(out) if out is not None else STUDIES_DIR / study.name
    tasks = plan(study)
    data_dir = stages.prepare_data(out / "data", study.data)
    _prepare(study, out, tasks)
    if launcher == "parallel" and threads is None:
        threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    spec_path = str(Path(study.path).resolve())

    def run_one(task: Task) -> dict[str, Any]:
        return execute_with_threads(spec_path, str(out), task, str(data_dir), threads)

    submit_one = None
    if launcher != "local":
        executor_for = stage_executors(out, launcher, threads, study, slurm)
        # Local jobs: submitit's local executor hides every GPU (CUDA_VISIBLE_DEVICES="") unless asked for
        # some; each job is given its slot's device instead. SLURM gives its jobs their own devices.
        devices = cuda_devices() if launcher in ("parallel", "submitit-local") else []
        lock, stop = threading.Lock(), threading.Event()

        def submit_one(task: Task, slot: int) -> dict[str, Any]:
            device = devices[slot % len(devices)] if devices else None
            with lock:  # one submission at a time; the jobs then run side by side
                job = executor_for(task).submit(
                    execute_with_threads, spec_path, str(out), task, str(data_dir), threads, device
                )
            while not job.done():
                if stop.wait(1.0):  # the study was stopped (Ctrl+C): leave the job to its signal or queue
                    return {"state": "running", "job": job.job_id}
            try:
                return job.result()
            except Exception as err:  # the job itself died (killed, out of memory, ...)
                record = {"stage": task.stage, "error": f"job {job.job_id} failed: {err}"}
                runs.atomic_write_text(out / task.owner / FAILED, json.dumps(record, indent=2))
                return {"state": "failed", **record}

        if launcher == "submitit-local":
            jobs = 1

    owners = _owner_tasks(tasks)
    total, finished = len(owners), [0]

    def progress(task: Task, state: dict[str, Any]) -> None:
        finished[0] += 1
        note = f" ({state.get('error')})" if state["state"] == "failed" else ""
        print(f"[study {study.name}] {finished[0]}/{total} {task.owner}: {state['state']}{note}", flush=True)

    todo: list[Task] = []
    for stage in STAGES:
        wave = [t for t in owners if t.stage == stage]
        to_run = [t for t in wave if stage_state(out, t)["state"] != "done"]
        finished[0] += len(wave) - len(to_run)
        if to_run:
            print(
                f"[study {study.name}] {stage}: {len(to_run)} to run, {len(wave) - len(to_run)} done",
                flush=True,
            )
        todo += to_run
    todo = seed_major(todo, study.seeds)

    # A stage whose upstream failed is marked failed without starting a job.
    if submit_one is None:
        for task in todo:
            blocked = upstream_failure(out, task)
            progress(task, blocked if blocked is not None else run_one(task))
    else:
        run_pool(todo, submit_one, jobs, progress, lambda task: upstream_failure(out, task), stop)

    rows = status(out, study)
    result: dict[str, Any] = {
        "out": str(out),
        "status": rows,
        "failed": sum(1 for r in rows if r["state"] == "failed"),
        "report": None,
    }
    if report:
        result["report"] = [str(p) for p in write_report(out, study)]
    return result


def execute_with_threads(
    spec_path: str, out: str, task: Task, data_dir: str, threads: int | None, device: str | None = None
) -> dict[str, Any]:
    """``execute`` with ``torch.set_num_threads(threads)`` first (when given) and, with ``device`` (a
    ``CUDA_VISIBLE_DEVICES`` entry), only that CUDA device visible (set before CUDA starts in a fresh job
    process; said on stdout, the job's log)."""
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
        print(f"[study] {task.owner}: CUDA device {device}", flush=True)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return execute(spec_path, out, task, data_dir)


# ------------------------------------------------------------------------------------------ status


def status(out: str | Path, study: Study | None = None) -> list[dict[str, Any]]:
    """One row per (arm, seed): its state (done / failed / interrupted / running / stale / pending, the worst
    of its stages), the state and seconds of each stage, and the first error.

    Args:
        out: the study output folder.
        study: the study (default: ``OUT/study.yaml``).
    """
    out = Path(out)
    study = study if study is not None else load_study(out / "study.yaml")
    order = {"failed": 5, "interrupted": 4, "running": 3, "stale": 2, "pending": 1, "done": 0}
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for task in plan(study):
        state = stage_state(out, task)
        row = rows.setdefault(
            (task.arm, task.seed),
            {"arm": task.arm, "seed": task.seed, "state": "done", "stages": {}, "error": None},
        )
        row["stages"][task.stage] = {
            "state": state["state"],
            "seconds": state.get("seconds"),
            "shared_with": task.owner if task.shared else None,
        }
        if state["state"] in ("running", "interrupted") and task.stage in TRAIN_STAGES:
            row["stages"][task.stage]["steps"] = fit_progress(out / task.owner / runs.STAGE_RUN)
        if state["state"] == "running" and not state.get("checked"):
            # Marked running where this machine cannot look (another host): say where and since when.
            row["stages"][task.stage]["unchecked"] = {k: state.get(k) for k in ("host", "pid", "since")}
        if order[state["state"]] > order[row["state"]]:
            row["state"] = state["state"]
        if state["state"] == "failed" and row["error"] is None:
            row["error"] = f"{task.stage}: {state.get('error')}"
    return list(rows.values())


def fit_progress(run: Path) -> tuple[int, int | None] | None:
    """How far a fit stage's training run has got: (the last step its logger wrote, the ``trainer.max_steps``
    of the config its fit saved, None where that is absent or unbounded), or None before its first logged
    step. Read from the run's TensorBoard event files, which Lightning writes every ``log_every_n_steps``
    (the step shown lags the fit's by less than that)."""
    from infinity_lit.evaluation.tensorboard import read_scalars

    if not run.is_dir():
        return None
    try:
        steps = [series[-1][0] for series in read_scalars(run).values() if series]
    except Exception:  # an event file being written, or a truncated one: no progress to show
        return None
    if not steps:
        return None
    try:
        trainer = _saved_config(run).get("trainer") or {}
    except yaml.YAMLError:
        trainer = {}
    max_steps = trainer.get("max_steps")
    return max(steps), max_steps if isinstance(max_steps, int) and max_steps > 0 else None


def running_elsewhere(marker: dict[str, Any]) -> str:
    """What ``format_status`` says of a stage marked running where this machine cannot check its process:
    ``running on HOST (pid P, since T; cannot check from here)``."""
    if marker.get("host") is None or marker.get("pid") is None:
        return f"running (since {marker.get('since')}; the marker names no process: cannot check from here)"
    return f"running on {marker['host']} (pid {marker['pid']}, since {marker.get('since')}; cannot check from here)"


def format_status(rows: Sequence[dict[str, Any]]) -> str:
    """``status`` rows as a text table (an interrupted stage with a line saying how to resume it, a stage
    running on another host with a line naming it: ``running_elsewhere``)."""
    lines = [f"{'arm':<16} {'seed':>4}  {'state':<11} " + " ".join(f"{s:<12}" for s in STAGES)]
    for row in rows:
        cells = []
        for stage in STAGES:
            st = row["stages"][stage]
            text = st["state"] + ("*" if st["shared_with"] else "")
            if st["seconds"] is not None and st["state"] == "done" and not st["shared_with"]:
                text = f"{st['seconds']:.0f}s"
            cells.append(f"{text:<12}")
        lines.append(f"{row['arm']:<16} {row['seed']:>4}  {row['state']:<11} " + " ".join(cells))
        if row["error"]:
            lines.append(f"{'':<16} {'':>4}  error: {row['error']}")
        for stage in STAGES:
            steps = row["stages"][stage].get("steps")
            at = ""
            if steps is not None:
                at = f" at step {steps[0]}" + (f" of {steps[1]}" if steps[1] is not None else "")
            if row["stages"][stage]["state"] == "interrupted":
                lines.append(f"{'':<16} {'':>4}  {stage} interrupted{at} {RESUME_HINT}")
            elif row["stages"][stage].get("unchecked"):
                lines.append(
                    f"{'':<16} {'':>4}  {stage} {running_elsewhere(row['stages'][stage]['unchecked'])}"
                )
            elif at:
                lines.append(f"{'':<16} {'':>4}  {stage} running{at}")
    lines.append("(* shared with another arm's stage)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ report


def _last_values(logdir: Path) -> dict[str, float]:
    from infinity_lit.evaluation.tensorboard import read_scalars

    if not logdir.is_dir():
        return {}
    return {tag: series[-1][1] for tag, series in read_scalars(logdir).items() if series}


def relative_paths(value: Any, root: Path) -> Any:
    """``value`` with every string that is a path under ``root`` made relative to it (in nested dicts and
    lists), so that a study's report and records read the same wherever the study folder lies."""
    # The longer prefix first: a root given relative to a resolved one, or the other way round.
    prefixes = sorted({str(root).rstrip("/") + "/", str(Path(root).resolve()).rstrip("/") + "/"}, key=len)[
        ::-1
    ]

    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [strip(x) for x in v]
        if isinstance(v, str):
            for prefix in prefixes:
                if v.startswith(prefix):
                    return v[len(prefix) :]
        return v

    return strip(value)


def _saved_config(run: Path) -> dict[str, Any]:
    """The resolved config a fit saved in its run folder (``config.yaml``), {} where there is none.

    Raises:
        yaml.YAMLError: the file is not YAML.
    """
    config = run / "config.yaml"
    if not config.is_file():
        return {}
    return yaml.safe_load(config.read_text(encoding="utf-8")) or {}


def _tokens_per_image(tokenizer_run: Path) -> int | None:
    """Σ h·w over the tokenizer's scale schedule, from the config its fit saved (None if absent)."""
    schedule = (_saved_config(tokenizer_run).get("model") or {}).get("tokenizer", {}).get("scale_schedule")
    return sum(int(h) * int(w) for h, w in schedule) if schedule else None


def _fingerprint(score: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    """The settings a score depends on (the comparison refuses to pool scores whose fingerprints differ).

    Content, not places: the reference split by the SHA-256 of its decoded pixels, the Inception (and
    CLIP) weights by the SHA-256 of their files, so a study folder or an environment that moved still
    compares, and a changed file does not.
    """
    sampling = score.get("sampling", {})
    weights = score.get("weights", {})
    settings = score.get("settings", {})
    ref = score.get("reference_content", {})
    gen = score.get("generated_content", {})
    reference = dict(score.get("reference") or {})
    reference.pop("path", None)  # where the shards lie is not what they hold
    return {
        "reference": reference,
        "reference_sha256": ref.get("sha256"),
        "reference_format": ref.get("format"),
        "reference_sizes": ref.get("sizes"),
        "generated_format": gen.get("format"),
        "generated_sizes": gen.get("sizes"),
        "num_images": score.get("num_images"),
        "num_reference_images": score.get("num_reference_images"),
        "inception_resize": settings.get("inception_resize"),
        "inception_weights_sha256": weights.get("inception_sha256"),
        "clip_weights_sha256": weights.get("clip_sha256"),
        "sampling": {k: v for k, v in sampling.items() if k not in ("checkpoint", "tokenizer_checkpoint")},
        "checkpoint": sampling.get("checkpoint"),
        "tokenizer_checkpoint": sampling.get("tokenizer_checkpoint"),
        "kid": settings.get("kid_subsets"),
        "evaluation": evaluation,
    }


#: Scores reported per aspect-ratio bucket: metric name → the key of a score record's ``metrics``.
BUCKET_METRICS = {"fid": "fid", "kid": "kid_mean", "clip_score": "clip_score"}
#: Reconstruction numbers reported per aspect-ratio bucket: metric name → the key of a recon record's
#: ``metrics["per_aspect_ratio"][bucket]`` (``evaluation.recon.reconstruction_record``).
RECON_BUCKET_METRICS = {"tokenizer_psnr": "psnr", "tokenizer_ssim": "ssim"}


def per_aspect_ratio_metrics(per: dict[str, Any], names: dict[str, str]) -> dict[str, float]:
    """Comparison metrics ``<metric>@ar<bucket>`` (``compare.AR_METRIC``) of a stage's per-bucket numbers.

    Args:
        per: bucket name → that bucket's metrics (a record's ``metrics["per_aspect_ratio"]``).
        names: metric name → its key in a bucket's metrics (``BUCKET_METRICS``, ``RECON_BUCKET_METRICS``).

    Returns:
        ``{"<metric>@ar<bucket>": value}`` for the numbers among them (None and text left out).
    """
    from .compare import is_number

    return {
        f"{metric}@ar{name}": values[key]
        for name, values in per.items()
        for metric, key in names.items()
        if is_number(values.get(key))
    }


def bucket_metrics(metrics: dict[str, Any], buckets: dict[str, Any], score_dir: Path) -> dict[str, Any]:
    """The per-aspect-ratio numbers of a score stage (``stages.score_buckets``) as comparison metrics, and
    their fingerprint.

    Args:
        metrics: the score stage's done-marker metrics (``per_aspect_ratio``: bucket → its score metrics).
        buckets: the done marker's ``buckets`` (which buckets each number covers).
        score_dir: the stage's folder (``ar<bucket>/metrics.json`` per bucket).

    Returns:
        {"metrics": {"fid@ar<bucket>": …, "kid@ar<bucket>": …, "clip_score@ar<bucket>": … (numbers only)},
        "fingerprint": {} without buckets, else {"aspect_ratios": {"pooled": {"sample_buckets",
        "reference_buckets"} (the buckets behind ``fid`` / ``kid``), "<bucket>": {"sample_buckets",
        "reference_buckets", and that score's fingerprint fields: reference (without its path),
        reference_sha256, sizes, formats, counts}}}}.
    """
    from .stages import bucket_folder

    per = metrics.get("per_aspect_ratio") or {}
    out: dict[str, Any] = per_aspect_ratio_metrics(per, BUCKET_METRICS)
    if not per:
        return {"metrics": out, "fingerprint": {}}
    fingerprint: dict[str, Any] = {"pooled": dict(buckets.get("pooled") or {})}
    for name in per:
        path = score_dir / bucket_folder(name) / "metrics.json"
        score = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        reference = dict(score.get("reference") or {})
        reference.pop("path", None)
        ref, gen = score.get("reference_content", {}), score.get("generated_content", {})
        fingerprint[name] = {
            **dict(buckets.get(name) or {}),
            "reference": reference,
            "reference_sha256": ref.get("sha256"),
            "reference_sizes": ref.get("sizes"),
            "generated_sizes": gen.get("sizes"),
            "generated_format": gen.get("format"),
            "num_images": score.get("num_images"),
            "num_reference_images": score.get("num_reference_images"),
        }
    return {"metrics": out, "fingerprint": {"aspect_ratios": fingerprint}}


def collect_records(out: str | Path, study: Study | None = None) -> list[dict[str, Any]]:
    """One comparison record (``compare.StudyRecord`` as a dict) per finished or failed (arm, seed)."""
    out = Path(out)
    study = study if study is not None else load_study(out / "study.yaml")
    values = {a.name: a.value for a in study.arms}
    evaluation = evaluation_settings(study.evaluation)
    records = []
    for row in status(out, study):
        if row["state"] not in ("done", "failed"):
            continue
        base = out / run_folder(row["arm"], row["seed"])
        record: dict[str, Any] = {"arm": row["arm"], "seed": row["seed"], "value": values[row["arm"]]}
        if row["state"] == "failed":
            records.append({**record, "status": "failed", "error": row["error"]})
            continue
        recon = runs.read_done(base / "recon") or {}
        score_done = runs.read_done(base / "score") or {}
        score_file = base / "score" / "metrics.json"
        score = json.loads(score_file.read_text(encoding="utf-8")) if score_file.is_file() else {}
        gen = _last_values(base / "generator" / runs.STAGE_RUN)
        tok = _last_values(base / "tokenizer" / runs.STAGE_RUN)
        m = score_done.get("metrics", {})
        metrics: dict[str, Any] = {
            "fid": m.get("fid"),
            "kid": m.get("kid_mean"),
            "kid_std": m.get("kid_std"),
            "kid_subsets_whole_set": score.get("settings", {}).get("kid_subset_size")
            == score.get("num_images"),
            "clip_score": m.get("clip_score"),
            "tokenizer_psnr": recon.get("metrics", {}).get("psnr"),
            "tokenizer_ssim": recon.get("metrics", {}).get("ssim"),
        }
        per_ar = bucket_metrics(m, score_done.get("buckets") or {}, base / "score")
        metrics.update(per_ar["metrics"])
        # The tokenizer's reconstruction of each aspect-ratio bucket (bucketed data): tokenizer_psnr@ar<b>, ….
        recon_per_ar = recon.get("metrics", {}).get("per_aspect_ratio") or {}
        metrics.update(per_aspect_ratio_metrics(recon_per_ar, RECON_BUCKET_METRICS))
        for k, v in (recon.get("metrics", {}).get("psnr_per_scale") or {}).items():
            metrics[f"psnr_scale_{k}"] = v
        for tag, v in gen.items():
            if tag.startswith("val/bit_acc_scale_"):
                metrics[tag.split("/", 1)[1]] = v
        metrics["codebook_utilisation"] = tok.get("val/codebook_utilisation")
        metrics["bit_entropy"] = tok.get("val/bit_entropy_mean")
        metrics["tokens_per_image"] = _tokens_per_image(base / "tokenizer" / runs.STAGE_RUN)
        metrics["val_loss"] = gen.get("val/loss")
        metrics["train_loss"] = gen.get("train/loss")
        metrics["tokenizer_train_l1"] = tok.get("train/l1")
        samples_done = runs.read_done(base / "samples") or {}
        if samples_done.get("written") and samples_done.get("seconds") is not None:
            # Wall-clock of the sample stage (loading included) per image it wrote.
            metrics["sampling_seconds_per_image"] = samples_done["seconds"] / samples_done["written"]
        stage_seconds = [row["stages"][s]["seconds"] for s in STAGES]
        metrics["seconds"] = sum(s for s in stage_seconds if s is not None)
        gen_done = runs.read_done(base / "generator") or {}
        metrics["steps"] = gen_done.get("global_step")
        records.append(
            {
                **record,
                "status": "done",
                "metrics": {k: v for k, v in metrics.items() if v is not None},
                "fingerprint": relative_paths(
                    {**_fingerprint(score, evaluation), **per_ar["fingerprint"]}, out
                ),
                "run_dirs": [
                    str(base / "tokenizer" / runs.STAGE_RUN),
                    str(base / "generator" / runs.STAGE_RUN),
                ],
                "samples_dir": str(base / "samples"),
            }
        )
    return records


#: TensorBoard run of an (arm, seed) that holds its HParams session (studied variable + final metrics).
HPARAMS_RUN = "hparams"


def write_hparams(out: Path, study: Study, records: Sequence[dict[str, Any]]) -> None:
    """One TensorBoard HParams session per finished (arm, seed), in ``OUT/<arm>/seed_<s>/hparams/``.

    Its hyper-parameters are the arm, the seed and the studied variable (a number when the arm's value is
    one); its metrics the (arm, seed)'s final numbers (FID, KID, PSNR, …). ``tensorboard --logdir OUT``
    then shows one HParams row per (arm, seed) beside the overlaid curves of every fit. Rewritten (not
    appended to) each time the report is built.
    """
    import shutil

    from infinity_lit.training.callbacks import log_hparams_with_metrics

    from .compare import AUXILIARY_METRICS, is_number

    for record in records:
        if record.get("status") != "done":
            continue
        folder = out / run_folder(record["arm"], record["seed"]) / HPARAMS_RUN
        shutil.rmtree(folder, ignore_errors=True)
        value = record["value"]
        hparams = {
            "arm": record["arm"],
            "seed": record["seed"],
            study.variable: value if is_number(value) else str(value),
        }
        metrics = {
            f"study/{k}": v
            for k, v in record["metrics"].items()
            if k not in AUXILIARY_METRICS and is_number(v)
        }
        if metrics:
            log_hparams_with_metrics(folder, hparams, metrics)


def write_report(out: str | Path, study: Study | None = None) -> tuple[Path, Path]:
    """The comparison page of a study's output folder (``OUT/report/comparison.html`` + ``.md``, the
    records behind it in ``OUT/report/records.json``) and the HParams sessions (``write_hparams``).

    Raises:
        ValueError: no finished or failed (arm, seed) yet, or evaluation fingerprints that differ.
    """
    from .compare import write_comparison

    out = Path(out)
    study = study if study is not None else load_study(out / "study.yaml")
    records = collect_records(out, study)
    if not records:
        raise ValueError(f"{out}: no (arm, seed) has finished yet; see 'infinity-lit study status {out}'")
    write_hparams(out, study, records)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    # The numbers behind the page, one record per (arm, seed), for one's own analysis.
    runs.atomic_write_text(
        report / "records.json", json.dumps(relative_paths(records, out), indent=2, default=str) + "\n"
    )
    return write_comparison(
        records,
        out / "report",
        study=study.name,
        variable=study.variable,
        baseline=study.baseline,
        title=f"Study {study.name}: {study.variable}",
    )
