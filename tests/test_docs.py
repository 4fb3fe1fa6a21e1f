"""The README is the front door: its tables are the code's, and its two commands exist."""

from __future__ import annotations

import os

from crds_job import errors, settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as handle:
        return handle.read()


def test_the_option_table_is_generated_from_settings():
    assert settings.markdown_table() in readme()


def test_the_exit_code_table_is_generated_from_errors():
    assert errors.markdown_table() in readme()
    assert set(errors.MEANING) == set(errors.ExitCode)


def test_the_two_commands_and_ci():
    text = readme()
    for script in ("scripts/demo", "scripts/test"):
        assert f"./{script}" in text
        assert os.access(os.path.join(ROOT, script), os.X_OK)
    with open(os.path.join(ROOT, ".ci/run")) as handle:
        assert "exec ./scripts/test" in handle.read()
