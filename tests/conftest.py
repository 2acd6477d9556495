"""Shared test helpers."""

from __future__ import annotations

import pytest

from orthosparse.lab.cli import main


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: ``cli(*argv)`` returns (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
