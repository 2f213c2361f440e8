"""Progress shows on a terminal only; automation's stderr stays quiet."""

from __future__ import annotations

import io

from jobs.progress import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_writes_one_line_on_a_terminal_and_ends_it() -> None:
    out = Tty()
    show = Progress("retention: rewriting", out)
    show(1, 3)
    show(3, 3)
    text = out.getvalue()
    assert text.startswith("\rretention: rewriting: 1/3 files (33%")
    assert "\rretention: rewriting: 3/3 files (100%" in text and text.endswith("\n")


def test_progress_is_silent_when_not_a_terminal() -> None:
    out = io.StringIO()
    show = Progress("erase", out)
    show(1, 1)
    assert out.getvalue() == ""
