"""The ``morphloop`` CLI in process, for the tests (``from cli_runner import invoke``)."""
from __future__ import annotations

from typer.testing import CliRunner

from flows.cli import app

try:
    RUNNER = CliRunner(mix_stderr=False)
except TypeError:  # click >= 8.2 always keeps stderr apart
    RUNNER = CliRunner()


def invoke(*args):
    """Run ``morphloop ARGS``; a crash inside the command (an exception other than SystemExit) fails here."""
    result = RUNNER.invoke(app, list(map(str, args)))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result
