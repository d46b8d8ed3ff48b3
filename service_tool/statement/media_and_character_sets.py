"""The Media Interchange and Support of Extended Character Sets sections."""

from __future__ import annotations

from service_tool.render import Block, Heading, Paragraph


def blocks() -> list[Block]:
    return [
        Heading(2, "Media Interchange"),
        Paragraph("Media Storage is not supported."),
        Heading(2, "Support of Extended Character Sets"),
        Paragraph("All AEs support the default repertoire and ISO_IR 100 (ISO 8859-1, Latin alphabet No. 1). "
                  "Instances in other character sets are stored as received and their database values "
                  "decoded (an unknown character set is read as ISO_IR 100). C-FIND responses use ISO_IR 100 "
                  "when it can hold every returned value, otherwise ISO_IR 192 (UTF-8), and then include "
                  "Specific Character Set. Person names match without regard to case in any of them."),
    ]

