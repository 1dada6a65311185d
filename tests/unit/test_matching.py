"""index/matching.py: C-FIND matching rules (PS3.4 C.2.2.2) and the SQL prefilter.

`matches()` decides; `sql_condition()` may only narrow the rows that `matches()` then
sees, so on a real index (IndexRepository on a tmp SQLite file) every row the Python
check accepts must also come back from SQL; `IndexReader.find()` puts both together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.tag import Tag
from sqlalchemy import ColumnElement, select

from pacs_server.config import DatabaseConfig
from pacs_server.index.attributes import QR_ATTRIBUTES, Attribute
from pacs_server.index.engine import create_engine, migrate
from pacs_server.index.matching import is_universal, matches, sql_condition, valid_range
from pacs_server.index.models import QR_MODELS, Series, Study
from pacs_server.index.records import InstanceRecord
from pacs_server.index.repository import IndexRepository
from support.index import index_record

# The attribute a SERIES-level query matches each keyword against.
ATTRS = QR_ATTRIBUTES.visible("SERIES")


def column(attr: Attribute, name: str | None = None) -> ColumnElement[Any]:
    return QR_MODELS[attr.level].__table__.c[name or attr.column]


def condition(keyword: str, value: str) -> ColumnElement[bool] | None:
    attr = ATTRS[keyword]
    norm = column(attr, attr.norm) if attr.norm else None
    return sql_condition(column(attr), attr.kind, value, norm)

# --------------------------------------------------------------------------- universal


@pytest.mark.parametrize("value", ["", "*", "**", "***"])
def test_universal_values_match_everything_even_empty(value: str) -> None:
    assert is_universal(value)
    for kind in ("uid", "str", "pn", "date", "time", "datetime", "int", "multi"):
        assert matches("", value, kind)
        assert matches(None, value, kind)
        assert matches("anything", value, kind)


@pytest.mark.parametrize("value", ["?", "*a", "a*", " "])
def test_not_universal(value: str) -> None:
    assert not is_universal(value)


# --------------------------------------------------------------------------- UID lists


def test_uid_single_value_is_exact() -> None:
    assert matches("1.2.3.4", "1.2.3.4", "uid")
    assert not matches("1.2.3.4", "1.2.3", "uid")
    assert not matches("1.2.3", "1.2.3.4", "uid")
    assert not matches("1.2.3.45", "1.2.3.4", "uid")


def test_uid_list_matches_any_member() -> None:
    query = "1.2.3\\1.2.4\\1.2.5"
    assert matches("1.2.3", query, "uid")
    assert matches("1.2.4", query, "uid")
    assert matches("1.2.5", query, "uid")
    assert not matches("1.2.6", query, "uid")
    assert not matches("1.2", query, "uid")
    assert not matches("", query, "uid")
    assert not matches(None, query, "uid")


def test_uid_has_no_wildcards() -> None:
    # PS3.4 C.2.2.2.4: wildcards are not defined for UI; '*' is literal unless universal.
    assert not matches("1.2.3", "1.2.*", "uid")
    assert not matches("1.2.3", "1.2.?", "uid")


# --------------------------------------------------------------------------- dates


@pytest.mark.parametrize(("stored", "query", "expected"), [
    ("20230115", "20230115", True),
    ("20230115", "20230116", False),
    ("20230115", "2023.01.15", True),          # ACR-NEMA form of the query value
    ("2023.01.15", "20230115", True),          # ... and of the stored value
    # a-b, inclusive at both ends
    ("20230101", "20230101-20230131", True),
    ("20230131", "20230101-20230131", True),
    ("20230115", "20230101-20230131", True),
    ("20221231", "20230101-20230131", False),
    ("20230201", "20230101-20230131", False),
    # -b: on or before
    ("19991231", "-20230131", True),
    ("20230131", "-20230131", True),
    ("20230201", "-20230131", False),
    # a-: on or after
    ("20230101", "20230101-", True),
    ("29991231", "20230101-", True),
    ("20221231", "20230101-", False),
    # several values: any of them
    ("20230115", "20220101\\20230115", True),
    ("20230115", "20220101\\20230101-20230110", False),
    ("20230105", "20220101\\20230101-20230110", True),
])
def test_date_matching(stored: str, query: str, expected: bool) -> None:
    assert matches(stored, query, "date") is expected


@pytest.mark.parametrize("query", ["20230115", "20230101-20230131", "-20230131", "20230101-"])
def test_empty_stored_date_matches_only_universal(query: str) -> None:
    assert not matches("", query, "date")
    assert not matches(None, query, "date")


def test_invalid_dates_never_match() -> None:
    assert not matches("2023011", "20230115", "date")
    assert not matches("20230115", "2023011", "date")
    assert not matches("notadate", "20230101-", "date")
    assert not matches("20230115", "2023-", "date")     # a DA bound needs 8 digits


# --------------------------------------------------------------------------- times


@pytest.mark.parametrize(("stored", "query", "expected"), [
    ("101530", "101530", True),
    ("101530", "101531", False),
    ("10:15:30", "101530", True),               # ACR-NEMA form
    ("101530.123456", "101530", True),          # query precision: the second
    ("101530", "1015", True),                   # ... the minute
    ("101559.999", "1015", True),
    ("101600", "1015", False),
    ("101459", "1015", False),
    ("105959", "10", True),                     # ... the hour
    ("110000", "10", False),
    ("1015", "101500", True),                   # stored at lower precision
])
def test_time_single_value_and_precision(stored: str, query: str, expected: bool) -> None:
    assert matches(stored, query, "time") is expected


@pytest.mark.parametrize(("stored", "query", "expected"), [
    ("100000", "1000-1100", True),
    ("110000", "1000-1100", True),
    ("110059", "1000-1100", True),              # an HHMM upper bound covers its minute
    ("110059.999", "1000-1100", True),
    ("110100", "1000-1100", False),
    ("110120", "1000-1100", False),             # not 11:01:39 (was padded with 9s)
    ("095959", "1000-1100", False),
    ("115959", "10-11", True),                  # an HH upper bound covers its hour
    ("120000", "10-11", False),
    ("093000", "-1000", True),
    ("100059", "-1000", True),
    ("100100", "-1000", False),
    ("235959", "2300-", True),
    ("225959", "2300-", False),
    ("110000.5", "100000-110000", True),        # HHMMSS upper bound covers its second
    ("110001", "100000-110000", False),
    ("101500.25", "101500.2-101500.3", True),
    ("101500.35", "101500.2-101500.3", False),
])
def test_time_ranges(stored: str, query: str, expected: bool) -> None:
    assert matches(stored, query, "time") is expected


def test_time_empty_or_invalid_stored_never_matches() -> None:
    assert not matches("", "1000-1100", "time")
    assert not matches("1", "1000-1100", "time")
    assert not matches("ab", "10", "time")


# --------------------------------------------------------------------------- date-times


@pytest.mark.parametrize(("stored", "query", "expected"), [
    ("20230115101500", "20230115101500", True),
    ("20230115101500", "20230115101501", False),
    ("20230115101500", "20230101-20230131", True),
    ("20230131235959", "20230101-20230131", True),   # upper date covers the whole day
    ("20230201000000", "20230101-20230131", False),
    ("20221231235959", "20230101-20230131", False),
    ("20230115101500", "2023-", True),               # year precision
    ("20221231235959", "2023-", False),
    ("20231231235959", "-2023", True),
    ("20240101000000", "-2023", False),
    ("20230115101500", "202301-202301", True),       # month precision
    ("20230215101500", "202301-202301", False),
    ("20230115101500.5", "20230115101500-20230115101500", True),
    ("20230115101500", "2023011510-2023011511", True),
    ("20230115121500", "2023011510-2023011511", False),
    # a UTC offset on a value, on both bounds of a range
    ("20230101120000-0500", "20230101120000-0500", True),
    ("20230101130000", "20230101120000-0500-20230102120000-0500", True),
    ("20230103130000", "20230101120000-0500-20230102120000-0500", False),
])
def test_datetime_matching(stored: str, query: str, expected: bool) -> None:
    assert matches(stored, query, "datetime") is expected


def test_datetime_empty_stored_never_matches() -> None:
    assert not matches("", "2023-", "datetime")


# --------------------------------------------------------------------------- query values

@pytest.mark.parametrize(("vr", "value"), [
    ("DA", "20230115"), ("DA", "20230101-20231231"), ("DA", "-20231231"), ("DA", "20230101-"),
    ("DA", "2023.01.15"), ("DA", "20230115\\20230116"), ("DA", ""), ("DA", "*"),
    ("TM", "10"), ("TM", "1015"), ("TM", "101530.25"), ("TM", "10:15:30"), ("TM", "1000-1100"),
    ("TM", "-1100"), ("DT", "2023"), ("DT", "20230101120000.5-0500"), ("DT", "2023-2024"),
    ("DT", "20230101120000-0500-20230102120000-0500"),
    ("PN", "SMI*"), ("LO", "2023-01-15"),             # other VRs are not checked here
])
def test_valid_query_values(vr: str, value: str) -> None:
    assert valid_range(vr, value)


@pytest.mark.parametrize(("vr", "value"), [
    ("DA", "2023-01-15"), ("DA", "2023"), ("DA", "abc"), ("DA", "2023*"), ("DA", "-"),
    ("DA", "20230115\\"), ("DA", "20230115-2023"), ("TM", "1"), ("TM", "10.5"), ("TM", "ab"),
    ("TM", "10-1"), ("DT", "x"), ("DT", "20230101T1200"), ("DT", "-"),
])
def test_malformed_query_values(vr: str, value: str) -> None:
    assert not valid_range(vr, value)


# --------------------------------------------------------------------------- person names


@pytest.mark.parametrize(("stored", "query", "expected"), [
    ("Smith^John", "Smith^John", True),
    ("Smith^John", "SMITH^JOHN", True),          # case-insensitive by default
    ("Smith^John", "smith^john", True),
    ("Smith^John", "Smith^Johnny", False),
    ("Smith^John", "Smith", False),              # single value matching is whole value
    ("Smith^John", "SMI*", True),
    ("Smith^John", "smi*", True),
    ("Smith^John", "*JOHN", True),
    ("Smith^John", "*ith^J*", True),
    ("Smith^John", "S?ith^John", True),
    ("Smith^John", "S?th^John", False),          # ? is exactly one character
    ("Smith^John", "Sm*th*", True),
    ("Smith^John", "Jones*", False),
    ("", "Smi*", False),
    (None, "Smi*", False),
])
def test_person_name_case_insensitive(stored: str | None, query: str, expected: bool) -> None:
    assert matches(stored, query, "pn") is expected


@pytest.mark.parametrize(("stored", "query", "expected"), [
    ("Smith^John", "Smith^John", True),
    ("Smith^John", "SMITH^JOHN", False),
    ("Smith^John", "smi*", False),
    ("Smith^John", "Smi*", True),
    ("Люкceмбypг", "люкceмбypг*", False),
    ("Люкceмбypг", "Люкceмбypг", True),
])
def test_person_name_case_sensitive(stored: str, query: str, expected: bool) -> None:
    assert matches(stored, query, "pn", case_sensitive_names=True) is expected


@pytest.mark.parametrize(("stored", "query", "expected"), [
    # stored 'Люкceмбypг' mixes Cyrillic and Latin letters (pydicom's chrRuss.dcm)
    ("Люкceмбypг", "люкceмбypг*", True),
    ("Люкceмбypг", "ЛЮКCEМБYPГ", True),
    ("Люкceмбypг", "люк*", True),
    ("Люкceмбypг", "люкcембург*", False),       # Cyrillic е/у/р where Latin e/y/p are stored
    ("Διονυσιος", "ΔΙΟΝΥΣΙΟΣ", True),           # final sigma folds like any sigma
    ("Διονυσιος", "διονυσιοσ*", True),
    ("Strauß^Otto", "STRAUSS^OTTO", True),
    ("Strauß^Otto", "strauss*", True),
    ("STRAUSS^OTTO", "strauß*", True),          # the query is folded as well
    ("Strauß^Otto", "Strau?^Otto", True),       # ? is one character as written
    ("Buc^Jérôme", "BUC^JÉRÔME", True),
    ("Buc^Jérôme", "buc^j?r?me", True),
])
def test_person_name_unicode_case_folding(stored: str, query: str, expected: bool) -> None:
    assert matches(stored, query, "pn") is expected


@pytest.mark.parametrize(("query", "expected"), [
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", True),     # whole value
    ("Yamada^Tarou", True),                              # alphabetic group
    ("山田^太郎", True),                                  # ideographic group
    ("やまだ^たろう", True),                              # phonetic group
    ("山田*", True),
    ("*太郎", True),
    ("やまだ*", True),
    ("yamada*", True),
    ("Yamada^Tarou=*", True),                            # wildcard across the groups
    ("*=山田^太郎=*", True),
    ("山田^次郎", False),
    ("田中*", False),
])
def test_person_name_component_groups(query: str, expected: bool) -> None:
    stored = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert matches(stored, query, "pn") is expected


@pytest.mark.parametrize(("stored", "query", "expected"), [
    ("O.B(r)+n^[x]$", "O.B(r)+n^[x]$", True),
    ("OxB(r)+n^[x]$", "O.B(r)+n^[x]$", False),   # '.' is not "any character"
    ("O.B(r)+n^[x]$", "O.B(r)+*", True),
    ("O.B(r)+n^[x]$", "O.B(r)+n^[x]?", True),
    ("O.Brrn^[x]$", "O.B(r)+*", False),          # '(r)+' is literal, not "one or more r"
    ("a|b", "a|b", True),
    ("a", "a|b", False),                          # '|' is not alternation
    ("50% off", "50%*", True),
    ("5_0", "5_0", True),
    ("5x0", "5_0", False),                        # SQL LIKE's _ is literal here
])
def test_wildcards_escape_regex_and_like_specials(stored: str, query: str,
                                                  expected: bool) -> None:
    assert matches(stored, query, "pn") is expected
    assert matches(stored, query, "str") is expected


def test_newline_in_value_does_not_defeat_star() -> None:
    assert matches("line1\nline2", "line1*", "str")


# --------------------------------------------------------------------------- strings


@pytest.mark.parametrize(("stored", "query", "expected"), [
    ("ACC-1", "ACC-1", True),
    ("ACC-1", "acc-1", False),                    # only PN is case-insensitive
    ("ACC-1", "ACC*", True),
    ("ACC-1", "*-1", True),
    ("ACC-1", "A?C-?", True),
    ("ACC-1", "ACC", False),
    ("ACC-10", "ACC-1", False),
    ("", "ACC*", False),
    ("ACC-1", "X\\ACC-1", True),                  # a list of values (any)
    ("ORIGINAL\\PRIMARY\\AXIAL", "PRIMARY", True),  # multi-valued stored
    ("ORIGINAL\\PRIMARY\\AXIAL", "DERIVED", False),
    ("ORIGINAL\\PRIMARY\\AXIAL", "AX*", True),
])
def test_string_matching(stored: str, query: str, expected: bool) -> None:
    assert matches(stored, query, "str") is expected


# --------------------------------------------------------------------------- numbers, sets


@pytest.mark.parametrize(("stored", "query", "expected"), [
    (3, "3", True),
    ("3", "3", True),
    (3, "03", True),
    (3, "4", False),
    (3, "2\\3", True),
    (3, "abc", False),
    (None, "3", False),
    ("", "3", False),
])
def test_integer_and_count_matching(stored: Any, query: str, expected: bool) -> None:
    assert matches(stored, query, "int") is expected
    assert matches(stored, query, "count") is expected


@pytest.mark.parametrize(("stored", "query", "expected"), [
    ("CT\\MR", "CT", True),
    ("CT\\MR", "MR", True),
    ("CT\\MR", "US", False),
    ("CT\\MR", "US\\MR", True),
    ("CT\\MR", "M*", True),
    ("CT\\MR", "ct", False),
    ("CT", "CT\\MR", True),
    ("", "CT", False),
])
def test_multi_valued_sets(stored: str, query: str, expected: bool) -> None:
    assert matches(stored, query, "multi") is expected


# --------------------------------------------------------------------------- SQL side


def test_sql_condition_is_none_for_universal_values() -> None:
    for keyword in ("PatientName", "PatientID", "StudyDate", "StudyInstanceUID",
                    "SeriesNumber", "ModalitiesInStudy"):
        assert condition(keyword, "") is None
        assert condition(keyword, "*") is None


@pytest.mark.parametrize(("keyword", "value", "sql"), [
    ("StudyInstanceUID", "1.2.3", "studies.study_instance_uid = "),
    ("StudyInstanceUID", "1.2.3\\1.2.4", "studies.study_instance_uid IN ("),
    ("StudyDate", "20230101-20230131", "studies.study_date >= "),
    ("StudyDate", "-20230131", "studies.study_date <= "),
    ("PatientID", "PID-A", "patients.patient_id = "),
    ("PatientID", "PID*", "patients.patient_id LIKE "),
    ("PatientName", "SMI*", "studies.patient_name_norm >= "),
    ("SeriesNumber", "2", "series.series_number = "),
])
def test_sql_condition_uses_the_indexed_column(keyword: str, value: str, sql: str) -> None:
    cond = condition(keyword, value)
    assert cond is not None
    assert sql in str(cond.compile())


@pytest.mark.parametrize(("keyword", "value"), [
    ("PatientName", "山田*"),                       # non-ASCII: groups decide in Python
    ("PatientName", "Yamada^Tarou=*"),              # several component groups
    ("PatientName", "Smith\\Jones"),
    ("PatientID", "A\\B"),
    ("StudyTime", "1000-1100"),                      # TM: decided in Python
    ("StudyDate", "20230101\\20230201"),
    ("SeriesNumber", "1\\2"),
    ("NumberOfStudyRelatedInstances", "3"),
    ("ModalitiesInStudy", "CT"),
])
def test_sql_condition_leaves_what_it_cannot_narrow_to_python(keyword: str,
                                                              value: str) -> None:
    assert condition(keyword, value) is None


def _record(i: int, *, patient_id: str, name: str, study_date: str = "",
            study_time: str = "", accession: str = "", description: str = "",
            referring: str = "", modality: str = "CT", series_number: int | None = 1,
            body_part: str = "") -> InstanceRecord:
    return index_record(
        patient=patient_id, name=name, modality=modality, size=1,
        study_values={"study_date": study_date, "study_time": study_time,
                      "accession_number": accession, "study_id": str(i),
                      "study_description": description, "referring_physician": referring},
        series_values={"series_number": series_number, "body_part": body_part},
        instance_values={"instance_number": i})


STORED = [
    dict(patient_id="PID-A", name="Smith^John", study_date="20230115", study_time="101530",
         accession="ACC-1", description="CT HEAD", referring="Doe^Jane", body_part="HEAD"),
    dict(patient_id="PID-B", name="SMITHERS^Waylon", study_date="20230131",
         study_time="235959", accession="ACC-10", description="ct head", modality="MR",
         series_number=2),
    dict(patient_id="pid-c", name="smythe^anna", study_date="20221231", accession="acc-1",
         description="50% off", referring="DOE^JANE"),
    dict(patient_id="PID_D", name="Yamada^Tarou=山田^太郎=やまだ^たろう",
         study_date="20230120", accession="A_1", description="5_0"),
    dict(patient_id="PID%E", name="Strauß^Otto", study_date="", accession="ACC%1",
         series_number=None),
    dict(patient_id="PID-F", name="O.B(r)+n^[x]$", study_date="20230201",
         study_time="1015", accession="", description="O.B(r)+n"),
    dict(patient_id="PID-G", name="", study_date="20230101", description=""),
    dict(patient_id="PID-H", name="Smi", study_date="20230116", accession="ACC"),
]

QUERIES = [
    ("PatientName", "Smith^John"), ("PatientName", "SMITH^JOHN"), ("PatientName", "SMI*"),
    ("PatientName", "smi*"), ("PatientName", "Smi"), ("PatientName", "*th*"),
    ("PatientName", "S?ith*"), ("PatientName", "Yamada*"), ("PatientName", "yamada^tarou"),
    ("PatientName", "Yamada^Tarou=*"), ("PatientName", "山田*"), ("PatientName", "*太郎*"),
    ("PatientName", "STRAUSS*"), ("PatientName", "strauß*"), ("PatientName", "O.B(r)+*"),
    ("PatientName", "O_B*"), ("PatientName", "Smith\\Smi"), ("PatientName", "%*"),
    ("PatientID", "PID-A"), ("PatientID", "pid-a"), ("PatientID", "PID*"),
    ("PatientID", "PID_D"), ("PatientID", "PID%E"), ("PatientID", "PID?D"),
    ("PatientID", "*-?"), ("PatientID", "PID-A\\pid-c"),
    ("AccessionNumber", "ACC-1"), ("AccessionNumber", "ACC*"), ("AccessionNumber", "acc*"),
    ("AccessionNumber", "A_1"), ("AccessionNumber", "ACC%1"), ("AccessionNumber", "ACC?1"),
    ("StudyDescription", "CT*"), ("StudyDescription", "*head"), ("StudyDescription", "50%*"),
    ("StudyDescription", "5_0"), ("StudyDescription", "O.B(r)+n"),
    ("ReferringPhysicianName", "doe^jane"), ("ReferringPhysicianName", "DOE*"),
    ("StudyDate", "20230115"), ("StudyDate", "20230101-20230131"),
    ("StudyDate", "-20230115"), ("StudyDate", "20230116-"), ("StudyDate", "2023.01.15"),
    ("StudyDate", "20230120"), ("StudyDate", "20230101-20230120"),
    ("StudyDate", "20221231\\20230201"), ("StudyDate", "-"),
    ("StudyTime", "1015"), ("StudyTime", "1000-1100"), ("StudyTime", "23-"),
    ("SeriesNumber", "1"), ("SeriesNumber", "2"), ("SeriesNumber", "1\\2"),
    ("Modality", "MR"), ("Modality", "M?"), ("BodyPartExamined", "HEAD"),
]


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[IndexRepository]:
    """A real index (migrations + IndexRepository writes) holding STORED, one per study."""
    engine = create_engine(DatabaseConfig(path=str(tmp_path / "index.db")))
    await migrate(engine)
    repo = IndexRepository(engine)
    await repo.start()
    try:
        for i, values in enumerate(STORED):
            await repo.add_instance(_record(i, **values))  # type: ignore[arg-type]
        yield repo
    finally:
        await repo.close()
        await engine.dispose()


async def _series(repo: IndexRepository, cond: ColumnElement[bool] | None) -> dict[str, Any]:
    """SERIES rows (Series.pk → the row of every visible column) that `cond` selects."""
    patients = QR_MODELS["PATIENT"].__table__
    stmt = select(Series.pk, patients, Study.__table__, Series.__table__).join(
        Study, Series.study_pk == Study.pk).join(patients, Study.patient_pk == patients.c.pk)
    async with repo.reader._engine.connect() as conn:
        result = (await conn.execute(stmt if cond is None else stmt.where(cond))).all()
    return {row[0]: row for row in result}


def _stored(row: Any, attr: Attribute) -> Any:
    return row._mapping[column(attr)]


@pytest.mark.parametrize("case_sensitive", [False, True])
async def test_sql_condition_returns_a_superset_of_the_python_matches(
        index: IndexRepository, case_sensitive: bool) -> None:
    everything = await _series(index, None)
    assert len(everything) == len(STORED)
    narrowed = 0
    for keyword, value in QUERIES:
        attr = ATTRS[keyword]
        wanted = {pk for pk, row in everything.items()
                  if matches(_stored(row, attr), value, attr.kind, case_sensitive)}
        cond = condition(keyword, value)
        got = set(await _series(index, cond))
        assert wanted <= got, (keyword, value, case_sensitive)
        if cond is not None and len(got) < len(everything):
            narrowed += 1
    # The prefilter is not a no-op: most of the indexable queries narrow in SQL.
    assert narrowed >= 25


@dataclass(frozen=True)
class Key:
    keyword: str
    value: str
    vr: str = ""

    @property
    def tag(self) -> int:
        return int(Tag(self.keyword))


async def _find(repo: IndexRepository, level: str, *keys: Key,
                sensitive: bool = False) -> list[Any]:
    out: list[Any] = []
    async for batch in repo.find(level, keys, case_sensitive_names=sensitive, batch=3):
        out.extend(batch)
    return out


async def test_find_matches_in_sql_and_python_together(index: IndexRepository) -> None:
    async def ids(query: str, sensitive: bool = False) -> set[str]:
        found = await _find(index, "PATIENT", Key("PatientName", query), sensitive=sensitive)
        return {m.indexed("PatientID")[0] for m in found}

    assert await ids("SMI*") == {"PID-A", "PID-B", "PID-H"}
    assert await ids("SMI*", sensitive=True) == {"PID-B"}
    assert await ids("Smi*", sensitive=True) == {"PID-A", "PID-H"}
    assert await ids("sm?th*") == {"PID-A", "PID-B", "pid-c"}
    assert await ids("山田^太郎") == {"PID_D"}
    assert await ids("strasse*") == set()
    assert await ids("strauss*") == {"PID%E"}


async def test_find_answers_every_query_as_the_python_rules_do(index: IndexRepository) -> None:
    everything = await _series(index, None)
    for keyword, value in QUERIES:
        attr = ATTRS[keyword]
        wanted = {_stored(row, attr) for row in everything.values()
                  if matches(_stored(row, attr), value, attr.kind)}
        found = await _find(index, "SERIES", Key(keyword, value))
        assert {m.indexed(keyword)[0] for m in found} == wanted, (keyword, value)


async def test_find_streams_batches_and_keys_below_the_level_are_not_matched(
        index: IndexRepository) -> None:
    batches = [b async for b in index.find("STUDY", [Key("Modality", "MR")], batch=3)]
    assert [len(b) for b in batches] == [3, 3, 2]
    (found,) = await _find(index, "STUDY", Key("StudyDescription", "50%*"))
    assert found.indexed("Modality") is None        # a SERIES attribute: not at STUDY
    assert found.indexed("PatientName") == ("smythe^anna", "pn")


async def test_closing_the_stream_closes_its_connection(index: IndexRepository) -> None:
    pool = index.reader._engine.pool
    idle = pool.checkedout()                         # the writer keeps its own
    stream = index.find("SERIES", [], batch=2)
    assert len(await anext(stream)) == 2
    assert pool.checkedout() == idle + 1
    await stream.aclose()                            # C-CANCEL
    assert pool.checkedout() == idle
