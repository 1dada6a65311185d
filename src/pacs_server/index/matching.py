"""C-FIND matching (PS3.4 C.2.2.2): SQL that narrows, Python that decides.

Every condition is checked in Python against the stored value, so the result is exact
whatever the database's LIKE/collation rules. SQL conditions are only ever a superset
filter chosen so that an index serves the common queries: equality, UID lists, date
ranges, and prefix wildcards (`SMI*` becomes a range scan on the case-folded column).

Nothing here knows the Q/R levels: the functions take a column and a match kind (an
`attributes.Attribute` row gives both), so any attribute table can reuse them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, and_

from pacs_server.errors import InvalidQuery
from pacs_server.index.attributes import Kind
from pacs_server.index.text import fold

# VR → matching kind for attributes that only live in the stored header.
VR_KIND: dict[str, Kind] = {"UI": "uid", "DA": "date", "TM": "time", "DT": "datetime",
                            "PN": "pn", "IS": "int", "US": "int", "UL": "int", "SS": "int",
                            "SL": "int"}

# Date and time attributes matched as one date-time range when the SCU negotiated
# combined datetime matching (PS3.4 C.2.2.2.5.1).
DATE_TIME_PAIRS = (("StudyDate", "StudyTime"), ("SeriesDate", "SeriesTime"),
                   ("ContentDate", "ContentTime"), ("AcquisitionDate", "AcquisitionTime"),
                   ("PatientBirthDate", "PatientBirthTime"))


def is_universal(value: str) -> bool:
    """PS3.4 C.2.2.2.3: an empty value, or only `*`, matches everything."""
    return value == "" or set(value) == {"*"}


# One DA, TM or DT value (PS3.5 Table 6.2-1), the ACR-NEMA separators removed first.
_VALUE = {"DA": re.compile(r"\d{8}"),
          "TM": re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?"),
          "DT": re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?"
                           r"([+\-]\d{4})?")}


def valid_range(vr: str, value: str) -> bool:
    """Whether a DA, TM or DT matching value is one value, a range (`lo-hi`, `lo-`,
    `-hi`) or a list of them (PS3.4 C.2.2.2.2, C.2.2.2.5); universal values and other
    VRs are not checked here.

    Checked before matching because nothing can match a malformed one, and the SQL
    side cannot narrow on it either: `2020-01-01` would read every row of the level to
    answer nothing. Wildcards are not range matching (C.2.2.2.4 excludes DA, TM, DT).
    """
    pattern = _VALUE.get(vr)
    if pattern is None or is_universal(value):
        return True
    for part in value.split("\\"):
        lo, hi, is_range = _split_dt_range(part) if vr == "DT" else _split_range(part)
        bounds = [b for b in (lo, hi) if b] if is_range else [lo]
        if not bounds or not all(pattern.fullmatch(_plain(vr, b)) for b in bounds):
            return False
    return True


def check_range(name: str, vr: str, value: str) -> None:
    """Raise InvalidQuery naming the key `name` if `value` fails `valid_range`."""
    if not valid_range(vr, value):
        raise InvalidQuery(f"{name}: {value[:64]!r} is not a {vr} value or range")


_ACR_NEMA_SEPARATOR = {"DA": ".", "TM": ":"}


def _plain(vr: str, value: str) -> str:
    separator = _ACR_NEMA_SEPARATOR.get(vr)
    return value.strip().replace(separator, "") if separator else value.strip()


# ------------------------------------------------------------------------- SQL side

def sql_condition(col: ColumnElement[Any], kind: Kind, value: str,
                  norm: ColumnElement[Any] | None = None) -> ColumnElement[bool] | None:
    """A superset filter for one key on `col` (`norm`: its case-folded column, for a
    Person Name), or None when SQL cannot narrow usefully."""
    if is_universal(value):
        return None
    if kind == "uid":
        uids = [u.strip() for u in value.split("\\") if u.strip()]
        return col.in_(uids) if len(uids) > 1 else col == uids[0]
    if kind == "date":
        return _date_sql(col, value)
    if kind == "int":
        try:
            return col == int(value)
        except ValueError:
            return None
    if kind == "pn":
        if not value.isascii() or norm is None or "=" in value or "\\" in value:
            # Non-ASCII names may sit in ideographic/phonetic groups, a value with "="
            # spans several component groups and "\\" lists several values: the norm
            # column (alphabetic group only) cannot select those; Python decides.
            return None
        return _text_sql(norm, fold(value))
    if kind == "str":
        if "\\" in value:
            return None
        return _text_sql(col, value)
    return None


def _text_sql(col: ColumnElement[Any], value: str) -> ColumnElement[bool]:
    if "*" not in value and "?" not in value:
        return col == value
    prefix = re.split(r"[*?]", value, maxsplit=1)[0]
    pattern = (value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
               .replace("*", "%").replace("?", "_"))
    like = col.like(pattern, escape="\\")
    if prefix:
        # Range on the prefix lets an ordinary B-tree index serve `SMI*`.
        return and_(col >= prefix, col < prefix[:-1] + chr(ord(prefix[-1]) + 1), like)
    return like


def _date_sql(col: ColumnElement[Any], value: str) -> ColumnElement[bool] | None:
    if "\\" in value:
        return None
    lo, hi, is_range = _split_range(value)
    # Compare normalised values (the ACR-NEMA form 2024.01.02 too), as matches() does.
    lo_key, hi_key = _date_key(lo), _date_key(hi)
    if (lo and lo_key is None) or (hi and hi_key is None):
        return None
    if not is_range:
        return col == lo_key
    conds = [col != ""]
    if lo_key:
        conds.append(col >= lo_key)
    if hi_key:
        conds.append(col <= hi_key)
    return and_(*conds)


def _split_range(value: str) -> tuple[str, str, bool]:
    if "-" not in value:
        return value.strip(), value.strip(), False
    lo, _, hi = value.partition("-")
    return lo.strip(), hi.strip(), True


# ------------------------------------------------------------------------- Python side

def matches(stored: Any, query: str, kind: Kind, case_sensitive_names: bool = False) -> bool:
    """Does the stored value match the query value? (PS3.4 C.2.2.2.1-C.2.2.2.5)."""
    if is_universal(query):
        return True
    text = "" if stored is None else str(stored)
    if kind == "uid":
        wanted = {u.strip() for u in query.split("\\")}
        return text in wanted
    if kind in ("date", "time", "datetime"):
        if not text:
            return False
        return any(_range_match(text, q, kind) for q in query.split("\\"))
    if kind in ("int", "count"):
        try:
            return any(int(float(text)) == int(float(q)) for q in query.split("\\"))
        except ValueError:
            return False
    if kind == "multi":
        have = set(text.split("\\"))
        return any(_wild(q)(h) for q in query.split("\\") for h in have)
    insensitive = kind == "pn" and not case_sensitive_names
    values = text.split("\\") if text else [""]
    for q in query.split("\\"):
        test = _wild(q, insensitive)
        for v in values:
            if test(v):
                return True
            if kind == "pn" and "=" in v and any(test(group) for group in v.split("=")
                                                 if group):
                return True
    return False


@lru_cache(maxsize=1024)
def _wild(query: str, insensitive: bool = False) -> Any:
    """Compiled matcher for single-value or wildcard matching."""
    if "*" not in query and "?" not in query:
        if insensitive:
            q = fold(query)
            return lambda v: fold(v) == q
        return lambda v: v == query
    compiled = _wild_regex(query, insensitive)
    if insensitive:
        # Folded on both sides (Straße ~ STRASSE), and the unfolded value too so that
        # "?" still stands for one character of the name as written (ß, not "ss").
        folded = _wild_regex(fold(query), insensitive)
        return lambda v: (folded.match(fold(v)) is not None
                          or compiled.match(v) is not None)
    return lambda v: compiled.match(v) is not None


def _wild_regex(query: str, insensitive: bool) -> re.Pattern[str]:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in query)
    return re.compile(regex + r"\Z", re.DOTALL | (re.IGNORECASE if insensitive else 0))


def combine_range(date_q: str, time_q: str) -> str:
    """Merge a DA and a TM matching value into one DT range (PS3.4 C.2.2.2.5.1)."""
    d_lo, _, d_hi = date_q.partition("-") if "-" in date_q else (date_q, "", date_q)
    t_lo, _, t_hi = time_q.partition("-") if "-" in time_q else (time_q, "", time_q)
    lo = d_lo + t_lo.replace(":", "") if d_lo else ""
    hi = d_hi + t_hi.replace(":", "") if d_hi else ""
    return f"{lo}-{hi}"


def _range_match(stored: str, query: str, kind: str) -> bool:
    lo, hi, is_range = _split_range(query) if kind != "datetime" else _split_dt_range(query)
    # One kind per call: the keys compared below are all str or all float.
    key: Callable[..., Any] = {"date": _date_key, "time": _time_key, "datetime": _dt_key}[kind]
    s = key(stored)
    if s is None:
        return False
    if not is_range:
        q = key(lo)
        return q is not None and s == q if kind != "time" else _time_equal(stored, lo)
    if lo:
        q = key(lo)
        if q is None or s < q:
            return False
    if hi:
        q = key(hi, upper=True)
        if q is None or s > q:
            return False
    return True


_DT = re.compile(r"\d{4,14}(\.\d{1,6})?([+\-]\d{4})?")
_DT_OFFSET = re.compile(r"(\d{4,14}(?:\.\d{1,6})?)-(\d{2})(\d{2})")


def _split_dt_range(value: str) -> tuple[str, str, bool]:
    # A DT value may carry a UTC offset like -0500, so the range hyphen is the one with
    # a date-time (or nothing) on each side. A trailing -HHMM that is a valid offset
    # (PS3.5 Table 6.2-1: -1200..+1400) after a date-time is read as an offset.
    value = value.strip()
    m = _DT_OFFSET.fullmatch(value)
    if m is not None and int(m.group(2)) <= 12 and int(m.group(3)) < 60:
        return value, value, False
    for i, c in enumerate(value):
        if c != "-":
            continue
        lo, hi = value[:i], value[i + 1:]
        if (lo or hi) and (not lo or _DT.fullmatch(lo)) and (not hi or _DT.fullmatch(hi)):
            return lo, hi, True
    return value, value, False


def _date_key(value: str, upper: bool = False) -> str | None:
    v = value.strip().replace(".", "").replace("-", "")
    if len(v) != 8 or not v.isdigit():
        return None
    return v


def _time_key(value: str, upper: bool = False) -> float | None:
    v = value.strip().replace(":", "")
    if not v:
        return None
    main, _, frac = v.partition(".")
    if not main.isdigit() or len(main) % 2:
        return None
    # An upper bound stands for the end of its precision: 11 is 11:59:59.999999 and
    # 1100 is 11:00:59.999999 (padding with 9s would read 1100 as 11:01:39).
    digits = main + ("595959" if upper else "000000")[len(main):]
    seconds = int(digits[:2]) * 3600 + int(digits[2:4]) * 60 + int(digits[4:6])
    fraction = float("0." + frac) if frac.isdigit() else (0.999999 if upper else 0.0)
    return seconds + fraction


def _time_equal(stored: str, query: str) -> bool:
    a, b = _time_key(stored), _time_key(query)
    if a is None or b is None:
        return False
    # A query of lower precision (1015) matches any stored time within that span.
    q_digits = len(query.strip().replace(":", "").partition(".")[0])
    span = {2: 3600, 4: 60}.get(q_digits, 1 if "." not in query else 0)
    return b <= a < b + span if span else a == b


def _dt_key(value: str, upper: bool = False) -> str | None:
    v = re.sub(r"[+\-]\d{4}$", "", value.strip())   # drop a UTC offset
    main, _, frac = v.partition(".")
    if not main.isdigit() or len(main) < 4:
        return None
    pad = "99991231235959"[len(main):] if upper else "00000101000000"[len(main):]
    if upper and len(main) == 6:          # YYYYMM: last day of month, approximate
        pad = "31235959"
    return (main + pad)[:14] + "." + (frac or ("999999" if upper else "0")).ljust(6, "0")
