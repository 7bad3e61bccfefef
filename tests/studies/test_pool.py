"""The rolling pool the parallel launchers run stages through (``runner.run_pool``), and the CUDA devices it
hands out (``runner.cuda_devices``)."""

from __future__ import annotations

import threading

import pytest

from infinity_lit.studies.runner import Task, cuda_devices, run_pool


def task(name: str, *upstream: str) -> Task:
    return Task("score", name, 0, name, name, name, {f"up{i}": u for i, u in enumerate(upstream)})


def test_a_slow_stage_holds_up_only_what_reads_it():
    # A waits until H has ended; H reads B, G reads A. Run in waves of two (A and B, then C and D, ...) or in
    # plan order without looking at what each stage reads, A would wait for ever (here: time out).
    h_done = threading.Event()
    lock = threading.Lock()
    log: list[tuple[str, str, int]] = []
    held: set[int] = set()

    def submit_one(t: Task, slot: int) -> dict:
        with lock:
            assert slot not in held and len(held) < 2  # a slot runs one stage at a time
            held.add(slot)
            log.append(("start", t.owner, slot))
        if t.owner == "A":
            assert h_done.wait(10), "A blocked the stages that do not read it"
        with lock:
            held.discard(slot)
            log.append(("end", t.owner, slot))
        if t.owner == "H":
            h_done.set()
        return {"state": "done"}

    reported: list[tuple[str, str]] = []
    tasks = [task("A"), task("B"), task("C"), task("G", "A"), task("H", "B"), task("K", "C")]
    failure = {"state": "failed", "error": "upstream stage C did not finish"}
    run_pool(
        tasks,
        submit_one,
        2,
        lambda t, state: reported.append((t.owner, state["state"])),
        blocked=lambda t: failure if t.owner == "K" else None,
    )
    assert sorted(reported) == sorted(
        [("A", "done"), ("B", "done"), ("C", "done"), ("G", "done"), ("H", "done"), ("K", "failed")]
    )
    order = [(what, name) for what, name, _ in log]
    # H started once B ended, while A still ran; G only after A ended; K (blocked) never started.
    assert order.index(("start", "H")) > order.index(("end", "B"))
    assert order.index(("start", "H")) < order.index(("end", "A")) < order.index(("start", "G"))
    assert all(name != "K" for _, name in order)
    assert {slot for _, _, slot in log} == {0, 1}
    assert reported.index(("B", "done")) < reported.index(("A", "done"))  # reported as they end


def test_an_error_of_a_submission_is_raised_after_the_others_end():
    ended = []

    def submit_one(t: Task, slot: int) -> dict:
        if t.owner == "bad":
            raise OSError("cannot submit")
        ended.append(t.owner)
        return {"state": "done"}

    with pytest.raises(OSError, match="cannot submit"):
        run_pool([task("bad"), task("ok")], submit_one, 2, lambda t, s: None)
    assert ended == ["ok"]


def test_an_interrupted_pool_tells_the_stages_in_flight_to_stop_waiting():
    import time

    stop = threading.Event()
    seen = {}

    def submit_one(t: Task, slot: int) -> dict:
        if t.owner == "slow":  # a job that runs for long: its wait ends when the pool is stopped
            seen["stopped"] = stop.wait(30)
        return {"state": "done"}

    def report(t: Task, state: dict) -> None:
        if t.owner == "quick":
            raise KeyboardInterrupt  # Ctrl+C while the slow stage runs

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_pool([task("slow"), task("quick")], submit_one, 2, report, stop=stop)
    assert seen == {"stopped": True} and time.monotonic() - start < 15


@pytest.mark.parametrize(
    ("visible", "devices"),
    [("0,1", ["0", "1"]), ("", []), ("2, GPU-8f6c", ["2", "GPU-8f6c"]), ("-1", [])],
)
def test_cuda_devices_follow_cuda_visible_devices(monkeypatch, visible, devices):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert cuda_devices() == devices
