"""Test setup: the Triton kernels run natively on a GPU, under Triton's CPU interpreter elsewhere.

TRITON_INTERPRET must be set before any kernel is decorated, so it is set here, before the package's
Triton modules are imported. Tests marked `triton` or `compiled` must never be skipped: a skip would
hide that the kernels went unchecked, so it fails the run, and the summary says how many ran and where.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Kernel tests that must run wherever the suite runs: outcomes counted per marker, skips fail the run.
_outcomes = {marker: {"passed": 0, "failed": 0, "skipped": 0} for marker in ("triton", "compiled")}
KERNEL_MARKER = "kernel_marker"   # user property naming a test's kernel marker; reports carry it (xdist too)


def pytest_configure(config):
    config.addinivalue_line("markers", "triton: runs the Triton kernels (natively on a GPU, else interpreted)")
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")
    config.addinivalue_line("markers", "compiled: runs the compiled kernels of csrc/ (the extension must be built)")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") and DEVICE != "cuda":
            item.add_marker(skip_gpu)
        for marker in _outcomes:
            if item.get_closest_marker(marker):   # the marker itself, not a parameter id of that name
                item.user_properties.append((KERNEL_MARKER, marker))


def pytest_runtest_logreport(report):
    markers = {value for name, value in report.user_properties if name == KERNEL_MARKER}
    for marker, counts in _outcomes.items():
        if marker in markers and (
                report.when == "call" or (report.when == "setup" and report.outcome != "passed")):
            counts[report.outcome] += 1


def pytest_terminal_summary(terminalreporter):
    where = {"triton": "natively on " + torch.cuda.get_device_name() if DEVICE == "cuda"
             else "under TRITON_INTERPRET=1 (CPU)",
             "compiled": "on CPU and CUDA" if DEVICE == "cuda" else "on CPU (CUDA kernels compiled, not run)"}
    for marker, counts in _outcomes.items():
        terminalreporter.write_line(
            f"{marker.capitalize()} kernel tests {where[marker]}: {counts['passed']} passed, {counts['failed']} "
            f"failed, {counts['skipped']} skipped")


def pytest_sessionfinish(session, exitstatus):
    skipped = {marker: counts["skipped"] for marker, counts in _outcomes.items() if counts["skipped"]}
    if skipped and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nkernel tests were skipped ({skipped}): the kernels must be checked wherever the suite runs, "
              "never silently skipped")


@pytest.fixture
def poison_empty(monkeypatch):
    """torch.empty / empty_like fill floating outputs with NaN, so an element a kernel forgot shows up."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def nan_fill(t):
        return t.fill_(float("nan")) if t.is_floating_point() and t.numel() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: nan_fill(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: nan_fill(real_empty_like(*a, **k)))
