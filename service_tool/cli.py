"""Placeholder entry point; the service tool's commands are built in service_tool/ modules."""

import sys


def main(argv=None) -> int:
    print("service-tool: no commands yet", file=sys.stderr)
    return 2
