"""The CLI called in-process, as every CLI test needs it: fast, and with the exit code a shell would see."""

from __future__ import annotations

from graft.cli import main


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Call `graft ARGS` in-process and return exit code, stdout, stderr."""
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err
