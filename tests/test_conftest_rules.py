"""The CI rule itself: a skipped kernel test fails when CI=true, and only then."""
from pathlib import Path

INNER = '''
import pytest

@pytest.mark.kernel
def test_needs_the_kernel():
    pytest.skip("no kernel here")

def test_plain():
    pytest.skip("ordinary skip")
'''


def _run(pytester, monkeypatch, ci):
    conftest = (Path(__file__).parent / "conftest.py").read_text()
    pytester.makeconftest(conftest.replace('pytest_plugins = ["pytester"]', ""))
    pytester.makeini("[pytest]\nmarkers =\n    kernel: kernel test\n")
    pytester.makepyfile(test_inner=INNER)
    monkeypatch.setenv("CI", ci)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider")


def test_skipped_kernel_test_fails_in_ci(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, "true")
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*kernel test skipped in CI*"])


def test_skipped_kernel_test_only_skips_outside_ci(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, "false")
    result.assert_outcomes(skipped=2)
