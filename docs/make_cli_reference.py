"""Regenerate docs/cli.md from the argparse definitions (``python docs/make_cli_reference.py``)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from napari_girnet.cli import build_parser

HEADER = """# `girnet` command reference

Generated from the command's own `--help` by `docs/make_cli_reference.py`; do not edit by hand.
Every sub-command exits with code 0 on success, 2 with a one-line `girnet: error: ...` on bad
input (missing/corrupt file, 4D image, NaN, mismatched grids, unknown preset ...), 1 on an
unexpected failure (`--debug` shows the traceback), 130 when interrupted.

"""


def help_text(args: list[str]) -> str:
    parser = build_parser()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        parser.parse_args([*args, "--help"])
    return buf.getvalue()


def main() -> None:
    parts = [HEADER, "## girnet\n\n```text\n" + help_text([]) + "```\n"]
    for cmd in ("register", "train", "evaluate", "make-cases"):
        parts.append(f"\n## girnet {cmd}\n\n```text\n" + help_text([cmd]) + "```\n")
    out = Path(__file__).with_name("cli.md")
    out.write_text("".join(parts))
    print(f"written {out}")


if __name__ == "__main__":
    main()
