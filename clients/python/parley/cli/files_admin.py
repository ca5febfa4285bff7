"""`parley files scrub`: checks every stored file's shares on this host and repairs those it can."""

from __future__ import annotations

import argparse
import logging
import os
import sys


async def scrub(args: argparse.Namespace) -> int:
    """Reads the file service's settings like `parley serve file` does, then checks and repairs every file.

    Exit 0 when every file is whole (some perhaps repaired), 1 when a file is lost, 2 for bad settings.
    """
    from services.file.library import scrub_files
    from services.runtime.config import ConfigError, load_config

    try:
        config = load_config(args.config, os.environ, {"server.data_dir": args.data_dir})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("parley.file").setLevel(logging.ERROR)  # the report below says what the log would
    report = await scrub_files(config, sweep=args.sweep)
    for file_id, shares in sorted(report.repaired.items()):
        print(f"repaired {file_id}: share{'s' if len(shares) > 1 else ''} {', '.join(map(str, shares))}")
    for file_id in report.lost:
        print(f"LOST {file_id}: fewer intact shares than it needs; restore the missing share stores", file=sys.stderr)
    swept = f", {report.swept} leftover files removed" if args.sweep and not report.sweep_skipped else ""
    print(f"checked {report.checked} files: {len(report.repaired)} repaired, {len(report.lost)} lost{swept}")
    if report.sweep_skipped:
        print(f"leftovers not swept: {report.sweep_skipped}", file=sys.stderr)
    return 1 if report.lost else 0
