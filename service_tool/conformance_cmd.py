"""`service-tool conformance`: the DICOM Conformance Statement of this box as configured now.

The statement is generated from the configuration file the service reads, loaded by the
service's own loader, so an accepted file is described with the values the service uses. A file
the service would refuse gets no statement of its own (exit 1, naming the keys), unless a
service started with it runs: then the statement is that service's, after a WARNING.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance.durable import write_text
from service_tool import render
from service_tool.config_cmd import EXIT_INVALID
from service_tool.configuration import announced, in_use

EXIT_UNWRITABLE = 2  # --output FILE cannot be written
FORMATS = {"markdown": render.to_markdown, "html": render.to_html}


def register(groups) -> None:
    command = groups.add_parser(
        "conformance", help="print the DICOM Conformance Statement of this box as configured",
        description="Print the DICOM Conformance Statement generated from the configuration file: AE titles, "
                    "ports, SOP classes and transfer syntaxes, limits, timeouts, the remote AE table and the "
                    "access lists as they are set now. Exit 0 when written, 1 when the configuration is invalid "
                    "(naming the key), 2 when FILE cannot be written.")
    command.add_argument("--format", choices=tuple(FORMATS), default="markdown",
                         help="markdown (default) or html (a complete page)")
    command.add_argument("--output", type=Path, metavar="FILE",
                         help="write the statement to FILE, replacing it atomically, instead of to stdout")
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    used = in_use(args.config)
    if used is None:
        return EXIT_INVALID
    from service_tool import statement  # imported here: it loads pydicom's dictionaries (0.3 s)

    text = FORMATS[args.format](statement.build(announced(used).config, used.source))
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        write_text(args.output, text)
    except OSError as exc:
        print(f"cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNWRITABLE
    return 0
