"""A validated `Query` as one SQL statement at the requested level (Part 4 C.2.2.2).

Every condition is written so that the database can use the column's index: equality, a UID
list as one parameter however long, ranges, and for wildcards a case-sensitive match plus a
range on the literal prefix (the backends' own SQL for these is in store/dialect.py).
Case-insensitive PN matching (QF-08) compares casefolded forms, computed in Python on both
sides (`keys.Key.search_form`, the index's *_folded columns), never SQL's ASCII-only
lower(). No ORDER BY: sorting would make the database read every row before the first answer.
"""

from __future__ import annotations

from typing import Iterator

from peewee import SQL, Expression, Select

from appliance.query.identifier import Condition, Query
from appliance.query.keys import TABLES, Level
from appliance.store import dialect
from appliance.store.models import Instance, Patient, Series, Study


def select(query: Query) -> Select:
    """The statement returning, per match, the values of `query.returned` in that order."""
    columns = [key.value for key in query.returned] or [SQL("1")]
    statement = TABLES[query.level].select(*columns)
    if query.level >= Level.IMAGE:
        statement = statement.join_from(Instance, Series)
    if query.level >= Level.SERIES:
        statement = statement.join_from(Series, Study)
    if query.level >= Level.STUDY:
        statement = statement.join_from(Study, Patient)
    for condition in query.conditions:
        statement = statement.where(where(condition))
    return statement


def rows(query: Query) -> Iterator[tuple]:
    """The matches, streamed from the cursor (never loaded into a list)."""
    return select(query).tuples().iterator()


def plan(query: Query) -> list[str]:
    """The database's query plan for the statement (tests and bench/find.py); which of its
    lines read whole tables, `dialect.current().scans` says."""
    sql, params = select(query).sql()
    return dialect.current().plan(sql, params)


def where(condition: Condition) -> Expression:
    """The SQL condition of one matching key (C-FIND, and `study list` filters)."""
    column, values = condition.key.search, condition.values
    if condition.kind == "equal":
        return column == values[0]
    if condition.kind == "list":
        return dialect.current().in_list(column, values)
    if condition.kind == "range":
        return _range(column, condition.key.vr, *values)
    where = _wildcard(column, values[0])
    if condition.key.vr == "PN" and values[0].endswith("^*"):
        # "DOE^*" also finds a patient indexed without a first name ("DOE", not "DOE^").
        where |= _wildcard(column, values[0][:-2])
    return where


def _range(column, vr: str, low: str, high: str) -> Expression:
    """`low-high`, either end open; an empty stored value never matches a range."""
    where = column != ""
    if low:
        # A TM lower bound without its trailing zeros: a stored "1030" (10:30) is >= "103000".
        where &= column >= (low.rstrip("0").rstrip(".").rstrip("0") if vr == "TM" else low)
    if high:
        # An upper bound includes everything it is a prefix of: "-1030" includes 10:30:59.
        # (A TM is digits and ".", so that bound always exists.)
        where &= _below_successor(column, high) if vr == "TM" else (column <= high)
    return where


def _wildcard(column, pattern: str) -> Expression:
    """`*` any run, `?` one character (QF-09); everything else literal. A pattern without
    wildcards is an equality (the "DOE" of "DOE^*")."""
    where = dialect.current().matches(column, pattern)
    prefix = _literal_prefix(pattern)
    if prefix:
        where &= column >= prefix
        upper = _below_successor(column, prefix)
        if upper is not None:
            where &= upper
    return where


def _literal_prefix(pattern: str) -> str:
    for i, char in enumerate(pattern):
        if char in "*?":
            return pattern[:i]
    return pattern


def _below_successor(column, prefix: str) -> Expression | None:
    """`column` below every string that starts with `prefix` (None: no such bound). The index
    compares UTF-8 bytes, which order as code points do; surrogates cannot be encoded."""
    following = ord(prefix[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:
        following = 0xE000
    if following > 0x10FFFF:
        return None
    return column < prefix[:-1] + chr(following)
