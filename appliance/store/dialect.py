"""The SQL that differs between the index's backends (IX-01): C-FIND's UID lists and wildcards,
the Instance Number order of a C-MOVE, the form of a UTC time (received_at, edited_at), and the
query plan the tests and bench/find.py read.

Both backends compare text byte by byte (SQLite always, PostgreSQL through the C collation
store/postgres.py insists on), so the ranges query/matching.py builds around a wildcard's
literal prefix, and DA/TM ranges, select the same rows on both.
"""

from __future__ import annotations

import datetime
import json

from peewee import SQL, Case, Database, Expression, PostgresqlDatabase, fn

from appliance.store.models import database


def as_utc(moment: datetime.datetime | str) -> datetime.datetime:
    """A time as the index holds it (an aware or a naive UTC datetime, or SQLite's text), aware UTC."""
    if isinstance(moment, str):
        moment = datetime.datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc)


class SqliteDialect:
    @staticmethod
    def timestamp(moment: datetime.datetime | str) -> str:
        """A UTC time as SQLite's text holds it (str() of an aware UTC datetime, as sqlite3 writes
        peewee's: 'YYYY-MM-DD HH:MM:SS[.ffffff]+00:00'), which sorts as the times do."""
        return str(as_utc(moment))

    @staticmethod
    def in_list(column, values: list[str]) -> Expression:
        """`column` is one of `values`: one parameter however long the list (SQLite caps them)."""
        return Expression(column, "IN", SQL("(SELECT value FROM json_each(?))", [json.dumps(values)]))

    @staticmethod
    def matches(column, pattern: str) -> Expression:
        """QF-09 `*` and `?`, case-sensitive, everything else literal: GLOB, with `[` escaped."""
        return Expression(column, "GLOB", pattern.replace("[", "[[]"))

    @staticmethod
    def numeric_order(column):
        """IS text as a number for ORDER BY, empty last (SQLite's CAST reads the leading digits)."""
        return fn.COALESCE(fn.NULLIF(column, ""), 2147483647).cast("INTEGER")

    @staticmethod
    def plan(sql: str, params: list) -> list[str]:
        return [row[-1] for row in database.execute_sql("EXPLAIN QUERY PLAN " + sql, params).fetchall()]

    @staticmethod
    def scans(plan: list[str]) -> list[str]:
        """The plan's lines that read a whole table (a json_each list is not one)."""
        return [line for line in plan if line.startswith("SCAN") and "json_each" not in line]

    @staticmethod
    def searches(plan: list[str]) -> list[str]:
        return [line for line in plan if line.startswith("SEARCH")]


class PostgresDialect:
    @staticmethod
    def timestamp(moment: datetime.datetime | str) -> datetime.datetime:
        """A naive UTC datetime: the columns are `timestamp` and the session's zone is UTC, so a
        comparison is of like with like and their indexes serve it."""
        return as_utc(moment).replace(tzinfo=None)

    @staticmethod
    def in_list(column, values: list[str]) -> Expression:
        return Expression(column, "=", SQL("ANY(%s)", [list(values)]))

    @staticmethod
    def matches(column, pattern: str) -> Expression:
        """LIKE (case-sensitive) with its own wildcards and escape character made literal."""
        escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return Expression(column, "LIKE", escaped.replace("*", "%").replace("?", "_"))

    @staticmethod
    def numeric_order(column):
        """A CAST of text that is not a number fails on PostgreSQL: those sort with the empty."""
        return Case(None, [(Expression(column, "~", r"^ *[+-]?[0-9]{1,18} *$"), column.cast("BIGINT"))], 2147483647)

    @staticmethod
    def plan(sql: str, params: list) -> list[str]:
        """With sequential scans made dear: on a small table the planner scans it anyway, and
        the question is whether an index *can* serve the condition."""
        with database.atomic():
            database.execute_sql("SET LOCAL enable_seqscan = off")
            return [row[0] for row in database.execute_sql("EXPLAIN " + sql, params).fetchall()]

    @staticmethod
    def scans(plan: list[str]) -> list[str]:
        """Sequential scans, and index scans without an Index Cond: with sequential scans made
        dear, the planner reads a whole table along some index instead."""
        scans = []
        for i, line in enumerate(plan):
            if "Seq Scan" in line:
                scans.append(line.strip())
            elif "Index Scan" in line or "Index Only Scan" in line:
                details = []
                for following in plan[i + 1:]:
                    if "->" in following or following.lstrip().startswith("SubPlan"):
                        break
                    details.append(following)
                if not any("Index Cond" in detail for detail in details):
                    scans.append(line.strip())
        return scans

    @staticmethod
    def searches(plan: list[str]) -> list[str]:
        return [line.strip() for line in plan if "Index Scan" in line or "Index Only Scan" in line]


def of(db: Database) -> type[SqliteDialect] | type[PostgresDialect]:
    return PostgresDialect if isinstance(db, PostgresqlDatabase) else SqliteDialect


def current() -> type[SqliteDialect] | type[PostgresDialect]:
    """The dialect of the database the models are bound to."""
    return of(database.obj)
