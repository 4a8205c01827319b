"""The check every bad-input case makes of a refused command: exit status 2, one clear line, no traceback."""

from __future__ import annotations

from click.testing import Result


def refused(result: Result, *needles: str) -> str:
    """Exit 2, at most one "error:" line (typer's own usage errors have none), every needle in the output, and no
    traceback; returns the output with rich's line wrapping undone, for further checks."""
    text = " ".join(result.output.split())  # rich wraps long lines at the terminal's width
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    assert result.output.count("error:") <= 1, result.output
    for needle in needles:
        assert needle in text, result.output
    return text
