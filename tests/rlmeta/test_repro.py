"""``rlmeta.repro``: a function run in a process pinned to AVX2 kernels."""

from __future__ import annotations

import pytest

from rlmeta.repro import PINNED, pinned_environment, run_pinned


def test_the_child_sees_the_pinned_environment_and_returns_json():
    assert run_pinned("os:getenv", "MKL_CBWR") == PINNED["MKL_CBWR"] == "AVX2"
    assert run_pinned("os:getenv", "ATEN_CPU_CAPABILITY") == "avx2"
    assert run_pinned("torch.backends.cpu:get_cpu_capability") == "AVX2"  # torch took the setting
    assert run_pinned("math:fsum", [0.1, 0.2, 0.3]) == pytest.approx(0.6)
    assert pinned_environment({"A": "1", "MKL_CBWR": "AUTO"}) == {"A": "1", **PINNED}


def test_bad_function_names_and_failing_children_raise():
    with pytest.raises(ValueError, match="module:name"):
        run_pinned("os.getenv")
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        run_pinned("operator:truediv", 1, 0)
    with pytest.raises(RuntimeError, match="No module named"):
        run_pinned("no_such_module_here:f")
