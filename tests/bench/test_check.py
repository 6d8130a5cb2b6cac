"""`st-adapter-fast check` end to end (small config; Triton interpreted on a CPU-only machine)."""
import pytest

from st_adapter_fast import cli
from conftest import DEVICE


@pytest.mark.triton
def test_check_reports_every_backend(capsys):
    assert cli.main(["check", "--config", "small", "--device", DEVICE]) == 0
    out = capsys.readouterr().out
    assert "reference" in out and "triton" in out and f"\n{DEVICE} " in out   # compiled backend rows
    assert "FAIL" not in out
