"""C-FIND (and, later, C-MOVE) over the index: identifiers in, matches out.

keys        the supported keys of the conformance statement (QF-07) and where each lives
identifier  a request identifier validated into a `Query` (A900 / C001 / FF01 decisions)
matching    a `Query` as one SQL statement at the requested level (Part 4 C.2.2.2 rules)
responses   a matched row as the response identifier (only requested keys, character set)
"""
