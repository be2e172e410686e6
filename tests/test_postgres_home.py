"""PostgresHome end to end against a real PostgreSQL 15 (tests/pg_server.py), nothing faked."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blocks import PostgresCredentials, PostgresHome
from blocks.base import ReadRequest, Since
from hygge_core.errors import ConfigError, HomeError, TransientHomeError, is_transient
from hygge_core.timestamps import NanoTimestamp
from tests.conftest import ledger_of, run_flow
from tests.login_helpers import refused_login
from tests.pg_server import PgServer, free_port, pg_home

UTC = dt.UTC
# a schema and a table name that need every quoting rule: spaces, quotes, dots, unicode
ODD_SCHEMA = 'Sales "Q1" ✓'
ODD_TABLE = "Order.Lines ü"
U1 = uuid.UUID("12345678-9abc-4def-8123-456789abcdef")
LONG_TEXT = "ü✓ " * 40_000 + "end"  # 120k characters: no buffer may cut it


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def lake_rows(lake: Path, entity: str, key: str = "id") -> list[dict[str, Any]]:
    files = sorted((lake / entity).glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return sorted(table.to_pylist(), key=lambda r: r[key])


def lake_schema(lake: Path, entity: str) -> pa.Schema:
    return pq.read_schema(next((lake / entity).glob("*.parquet")))


def home(pg: PgServer, **extra: Any) -> PostgresHome:
    fields: dict[str, Any] = {
        "host": pg.host,
        "port": pg.port,
        "database": pg.dbname,
        "credentials": PostgresCredentials(username=pg.user, password=pg.password),
    }
    return PostgresHome(**{**fields, **extra})


TYPES_DDL = """
CREATE TABLE {t} (
  id int PRIMARY KEY, i2 smallint, i4 integer, i8 bigint,
  n numeric(12, 3), nbig numeric(38, 20), nhuge numeric(50, 10), nfree numeric,
  f4 real, f8 double precision, d date, tm time, ts timestamp, tstz timestamptz,
  b boolean, u uuid, by bytea, tx text, vc varchar(5), js jsonb
)"""
TYPES_ROWS = [
    "(1, -32768, 2147483647, -9223372036854775808, 123456789.123,"
    " 123456789012345678.12345678901234567890, 1234567890123456789012345678901234567890.0123456789,"
    " 1.000000000000000000000000000000000000001, 1.5, 0.1, '1970-01-01', '23:59:59.999999',"
    " '2024-02-29 12:34:56.789012', '2024-06-30 23:30:00.123456+05:30', true,"
    f" '{U1}', '\\x00ff10', '{LONG_TEXT}', 'fünf✓', '{{\"a\": [1, 2]}}')",
    "(2, 32767, -2147483648, 9223372036854775807, -0.001, -0.00000000000000000001, 0, -7,"
    " -3.25, 0.3333333333333333, '9999-12-31', '00:00:00', '0001-01-01 00:00:00',"
    " '1999-12-31 23:59:59.999999-08', false, '00000000-0000-0000-0000-000000000000', '\\x',"
    " '', '', 'null')",
    "(3" + ", NULL" * 19 + ")",
]
EXPECTED = [
    {
        "id": 1,
        "i2": -32768,
        "i4": 2147483647,
        "i8": -9223372036854775808,
        "n": Decimal("123456789.123"),
        "nbig": Decimal("123456789012345678.12345678901234567890"),
        "nhuge": Decimal("1234567890123456789012345678901234567890.0123456789"),
        "nfree": "1.000000000000000000000000000000000000001",
        "f4": 1.5,
        "f8": 0.1,
        "d": dt.date(1970, 1, 1),
        "tm": dt.time(23, 59, 59, 999999),
        "ts": dt.datetime(2024, 2, 29, 12, 34, 56, 789012),
        "tstz": dt.datetime(2024, 6, 30, 18, 0, 0, 123456, tzinfo=UTC),
        "b": True,
        "u": str(U1),
        "by": b"\x00\xff\x10",
        "tx": LONG_TEXT,
        "vc": "fünf✓",
        "js": '{"a": [1, 2]}',
    },
    {
        "id": 2,
        "i2": 32767,
        "i4": -2147483648,
        "i8": 9223372036854775807,
        "n": Decimal("-0.001"),
        "nbig": Decimal("-0.00000000000000000001"),
        "nhuge": Decimal("0E-10"),
        "nfree": "-7",
        "f4": -3.25,
        "f8": 0.3333333333333333,
        "d": dt.date(9999, 12, 31),
        "tm": dt.time(0, 0),
        "ts": dt.datetime(1, 1, 1),
        "tstz": dt.datetime(2000, 1, 1, 7, 59, 59, 999999, tzinfo=UTC),
        "b": False,
        "u": "00000000-0000-0000-0000-000000000000",
        "by": b"",
        "tx": "",
        "vc": "",
        "js": "null",
    },
]
EXPECTED.append({k: (3 if k == "id" else None) for k in EXPECTED[0]})  # the all-NULL row

EXPECTED_TYPES = {
    "i2": pa.int16(),
    "i4": pa.int32(),
    "i8": pa.int64(),
    "n": pa.decimal128(12, 3),
    "nbig": pa.decimal128(38, 20),
    "nhuge": pa.decimal256(50, 10),
    "nfree": pa.string(),
    "f4": pa.float32(),
    "f8": pa.float64(),
    "d": pa.date32(),
    "tm": pa.time64("us"),
    "ts": pa.timestamp("us"),
    "tstz": pa.timestamp("us", tz="UTC"),
    "b": pa.bool_(),
    "u": pa.string(),
    "by": pa.binary(),
    "tx": pa.string(),
    "vc": pa.string(),
    "js": pa.string(),
}


def test_every_type_round_trips_exactly_through_a_flow(
    pg: PgServer, pg_schema: str, tmp_path: Path, spec_name: str
) -> None:
    pg.execute(f"CREATE SCHEMA {q(ODD_SCHEMA)}")
    try:
        table = f"{q(ODD_SCHEMA)}.{q(ODD_TABLE)}"
        pg.execute(TYPES_DDL.format(t=table), f"INSERT INTO {table} VALUES " + ",".join(TYPES_ROWS))
        lake = tmp_path / "lake"
        spec = {
            "name": spec_name,
            "home": pg_home(pg),
            "store": {"type": "parquet", "path": str(lake)},
            "retries": 0,
            "entities": [
                # the spec quotes the parts that hold dots or quotes, the way SQL does
                {"name": "types", "table": f'"Sales ""Q1"" ✓"."{ODD_TABLE}"'},
                {
                    "name": "projected",
                    "table": f'"Sales ""Q1"" ✓"."{ODD_TABLE}"',
                    "columns": ["id", "tstz", "n"],
                    "where": "b IS NOT NULL",
                },
                {
                    "name": "by_query",
                    "query": f"SELECT id, tx AS {q('Ünï code')} FROM {table} WHERE id < 3;",
                },
            ],
        }
        state = run_flow(spec)
        assert state.is_completed(), state
    finally:
        pg.execute(f"DROP SCHEMA {q(ODD_SCHEMA)} CASCADE")

    assert lake_rows(lake, "types") == EXPECTED
    schema = lake_schema(lake, "types")
    for name, typ in EXPECTED_TYPES.items():
        assert schema.field(name).type == typ, name
    projected = lake_rows(lake, "projected")
    assert projected == [{k: r[k] for k in ("id", "tstz", "n")} for r in EXPECTED[:2]]
    assert lake_rows(lake, "by_query") == [
        {"id": 1, "Ünï code": LONG_TEXT},
        {"id": 2, "Ünï code": ""},
    ]


def events_table(pg: PgServer, schema: str) -> str:
    table = f"{q(schema)}.events"
    pg.execute(
        f"CREATE TABLE {table} (id int, ts timestamptz, day date, seq bigint,"
        # a linguistic collation: under it 'a' < 'B', while Arrow (bytewise) has 'B' < 'a'
        ' code text COLLATE "und-x-icu", amount numeric(10, 2))'
    )
    return table


def insert_events(pg: PgServer, table: str, rows: list[tuple[Any, ...]]) -> None:
    values = ",".join(
        "(" + ",".join("NULL" if v is None else f"'{v}'" for v in row) + ")" for row in rows
    )
    pg.execute(f"INSERT INTO {table} VALUES {values}")


T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
D0 = dt.date(2024, 5, 1)


def ev(i: int, step: int | None, code: str | None) -> tuple[Any, ...]:
    """Row `i` whose watermarks all sit at position `step` (None: NULL watermarks)."""
    if step is None:
        return (i, None, None, None, code, f"{i}.25")
    return (i, T0 + dt.timedelta(seconds=step), D0 + dt.timedelta(days=step), step, code, f"{i}.25")


def source_ids(pg: PgServer, table: str, column: str) -> list[int]:
    return [
        r[0] for r in pg.query(f"SELECT id FROM {table} WHERE {column} IS NOT NULL ORDER BY id")
    ]


def test_incremental_runs_load_each_row_once_for_every_watermark_kind(
    pg: PgServer, pg_schema: str, tmp_path: Path, spec_name: str
) -> None:
    table = events_table(pg, pg_schema)
    # ties at every step; rows 90-91 have NULL watermarks (loaded by the first, full load;
    # skipped and counted by the incremental runs: `nulls: skip`)
    insert_events(pg, table, [ev(i, i // 3, "B") for i in range(30)])
    insert_events(pg, table, [ev(90, None, None), ev(91, None, None)])
    lake = tmp_path / "lake"
    by = {"by_ts": "ts", "by_day": "day", "by_seq": "seq", "by_code": "code"}
    spec = {
        "name": spec_name,
        "home": pg_home(pg),
        "store": {"type": "parquet", "path": str(lake)},
        "retries": 0,
        "defaults": {"batch_size": 7},
        "entities": [
            {
                "name": n,
                "table": f"{pg_schema}.events",
                "watermark": {"column": c, "keys": ["id"], "nulls": "skip"},
            }
            for n, c in by.items()
        ],
    }
    first = run_flow(spec)
    assert first.is_completed(), first
    rows = {r["entity"]: r for r in first.result()}
    assert all(rows[n]["rows"] == 32 for n in by)
    assert not any("NULL" in rows[n]["detail"] for n in by)

    # late rows tied with the stored watermark (step 9 / code 'B'), newer ones, and a code
    # 'a' that only a bytewise comparison puts after 'B'
    insert_events(pg, table, [ev(30, 9, "B"), ev(31, 9, "B"), ev(32, 10, "a"), ev(33, 11, "a")])
    second = run_flow(spec)
    assert second.is_completed(), second
    rows = {r["entity"]: r for r in second.result()}
    assert {n: rows[n]["rows"] for n in by} == {"by_ts": 4, "by_day": 4, "by_seq": 4, "by_code": 4}
    assert all("2 NULL-watermark rows skipped" in rows[n]["detail"] for n in by)
    for entity, column in by.items():
        got = sorted(r["id"] for r in lake_rows(lake, entity))
        assert got == [*source_ids(pg, table, column), 90, 91], entity

    # nothing new: nothing moves and the ledger stays put
    before = ledger_of(spec)
    third = run_flow(spec)
    assert all(r["rows"] == 0 for r in third.result())
    assert ledger_of(spec) == before
    assert before["by_ts"]["watermark"]["value"] == (T0 + dt.timedelta(seconds=11)).isoformat()
    assert before["by_code"]["watermark"] == {
        "column": "code",
        "kind": "str",
        "value": "a",
        "boundary": ["32", "33"],
        "boundary_format": 2,
    }
    full = lake_rows(lake, "by_ts")
    assert full[0] == {
        "id": 0,
        "ts": T0,
        "day": D0,
        "seq": 0,
        "code": "B",
        "amount": Decimal("0.25"),
    }


def test_wrong_password_fails_clearly_once_and_never_shows_it(
    pg: PgServer, tmp_path: Path, spec_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "n0t-the-Pa55word'\\"
    home_spec = pg_home(pg)
    home_spec["credentials"] = {"username": pg.user, "password": wrong}
    text, reads = refused_login(
        home_spec, PostgresHome, "public.orders", tmp_path / "lake", spec_name, monkeypatch
    )
    assert "refused the login" in text
    assert "password authentication failed" in text
    assert "credentials block" in text
    assert wrong not in text and pg.password not in text
    assert reads == 1  # not transient: never retried


def test_errors_name_the_entity_cause_and_fix(pg: PgServer, pg_schema: str) -> None:
    h = home(pg)
    with pytest.raises(HomeError, match=r"entity 'ghost'.*does not exist.*Check `table`") as info:
        list(h.read(ReadRequest(entity="ghost", table=f"{pg_schema}.no_such_table")))
    assert not is_transient(info.value)
    with pytest.raises(HomeError, match=r"rejected the SQL: syntax error") as info:
        list(h.read(ReadRequest(entity="bad", query="SELEC 1")))
    assert not is_transient(info.value)
    with pytest.raises(ConfigError, match=r"exactly one of `table` or `query`"):
        list(h.read(ReadRequest(entity="none")))
    with pytest.raises(HomeError, match=r"database \"nope\" does not exist.*`database`"):
        list(home(pg, database="nope").read(ReadRequest(entity="db", query="SELECT 1")))


def test_unreachable_server_is_a_transient_error(pg: PgServer) -> None:
    h = home(pg, port=free_port(), connect_timeout=2)  # nothing listens there
    with pytest.raises(TransientHomeError, match=r"unreachable.*Connection refused") as info:
        list(h.read(ReadRequest(entity="e", query="SELECT 1")))
    assert is_transient(info.value)
    assert pg.password not in str(info.value)


def test_stored_watermark_of_another_type_is_refused_before_reading(
    pg: PgServer, pg_schema: str
) -> None:
    table = events_table(pg, pg_schema)
    h = home(pg)
    request = ReadRequest(entity="e", table=f"{pg_schema}.events")
    with pytest.raises(ConfigError, match=r"does not fit column 'ts'.*--full-drop"):
        list(h.read(ReadRequest(**{**request.__dict__, "since": Since("ts", 17)})))
    with pytest.raises(ConfigError, match=r"does not fit column 'day'"):
        list(h.read(ReadRequest(**{**request.__dict__, "since": Since("day", T0)})))
    with pytest.raises(ConfigError, match=r"'missing' is not among the columns"):
        list(h.read(ReadRequest(**{**request.__dict__, "since": Since("missing", 1)})))
    insert_events(pg, table, [ev(1, 1, "x")])
    got = list(
        h.read(ReadRequest(**{**request.__dict__, "since": Since("amount", Decimal("1.25"))}))
    )
    assert sum(b.num_rows for b in got) == 1


def test_max_connections_is_honoured_across_entities(
    pg: PgServer, pg_schema: str, tmp_path: Path, spec_name: str
) -> None:
    table = events_table(pg, pg_schema)
    insert_events(pg, table, [ev(i, i, "x") for i in range(10)])
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            n = pg.query("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hygge'")[
                0
            ][0]
            peak = max(peak, n)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        spec = {
            "name": spec_name,
            "home": pg_home(pg, max_connections=2),
            "store": {"type": "parquet", "path": str(tmp_path / "lake")},
            "concurrency": 6,
            "retries": 0,
            "entities": [
                # each read holds its connection ~0.5 s, so six entities overlap
                {
                    "name": f"e{i}",
                    "table": f"{pg_schema}.events",
                    "where": "(SELECT true FROM pg_sleep(0.5))",
                }
                for i in range(6)
            ],
        }
        state = run_flow(spec)
    finally:
        stop.set()
        watcher.join()
    assert state.is_completed(), state
    assert all(r["rows"] == 10 for r in state.result())
    assert peak == 2


def test_partitioned_read_splits_and_covers_every_row_once(pg: PgServer, pg_schema: str) -> None:
    table = f"{q(pg_schema)}.big"
    pg.execute(
        f"CREATE TABLE {table} AS SELECT g AS id, md5(g::text) AS s, "
        "timestamp '2024-01-01' + g * interval '1 minute' AS ts FROM generate_series(1, 20000) g",
        f"INSERT INTO {table} VALUES (NULL, 'null id', NULL)",
    )
    for column in ("id", "ts"):
        h = home(pg, partition_column=column, partitions=4, max_connections=3)
        batches = list(h.read(ReadRequest(entity="big", table=f"{pg_schema}.big", batch_size=999)))
        ids = [i for b in batches for i in b.column("s").to_pylist()]
        assert len(ids) == 20001 and len(set(ids)) == 20001
        assert all(b.num_rows <= 999 for b in batches)
        assert len({b.schema for b in batches}) == 1
    # with a watermark bound, the split covers only the rows the bound admits
    since = Since("id", 19990)
    h = home(pg, partition_column="id", partitions=3)
    req = ReadRequest(entity="big", table=f"{pg_schema}.big", since=since)
    got = sorted(i for b in h.read(req) for i in b.column("id").to_pylist() if i is not None)
    assert got == list(range(19990, 20001))


def test_saved_blocks_share_one_credentials_block(
    pg: PgServer, pg_schema: str, tmp_path: Path, spec_name: str
) -> None:
    table = events_table(pg, pg_schema)
    insert_events(pg, table, [ev(1, 1, "x")])
    pg.execute(f"CREATE ROLE {q(spec_name)} LOGIN PASSWORD 'first pass'")
    pg.execute(f"GRANT USAGE ON SCHEMA {q(pg_schema)} TO {q(spec_name)}")
    pg.execute(f"GRANT SELECT ON {table} TO {q(spec_name)}")
    creds = PostgresCredentials(username=spec_name, password="first pass")
    creds.save(f"{spec_name}-login")
    PostgresHome(
        host=pg.host,
        port=pg.port,
        database=pg.dbname,
        credentials=PostgresCredentials.load(f"{spec_name}-login"),
    ).save(f"{spec_name}-pg")
    spec = {
        "name": spec_name,
        "home": f"postgres-home/{spec_name}-pg",
        "store": {"type": "parquet", "path": str(tmp_path / "lake")},
        "retries": 0,
        "entities": [{"name": "events", "table": f"{pg_schema}.events"}],
    }
    assert run_flow(spec).is_completed()
    # rotate the password (with quotes and a backslash) in the one credentials block
    new = "it's a \\ new one"
    pg.execute(f"ALTER ROLE {q(spec_name)} PASSWORD 'it''s a \\ new one'")
    assert run_flow(spec).is_failed()
    rotated = PostgresCredentials.load(f"{spec_name}-login")
    rotated.password = type(rotated.password)(new)  # type: ignore[misc]
    rotated.save(f"{spec_name}-login", overwrite=True)
    state = run_flow(spec)
    assert state.is_completed(), state
    assert lake_rows(tmp_path / "lake", "events")[0]["id"] == 1
    assert new not in repr(PostgresHome.load(f"{spec_name}-pg"))


def test_credentials_need_exactly_one_login() -> None:
    with pytest.raises(ValueError, match=r"either `username`.*or `dsn`"):
        PostgresCredentials()
    with pytest.raises(ValueError, match=r"either `username`.*or `dsn`"):
        PostgresCredentials(username="u", dsn="postgresql://u@h/db")
    with pytest.raises(ValueError, match=r"`host` is required"):
        PostgresHome(credentials=PostgresCredentials(username="u"))
    with pytest.raises(ValueError, match=r"leave `host`, `port` and `database` empty"):
        PostgresHome(host="h", credentials=PostgresCredentials(dsn="host=h dbname=d"))


def test_a_dsn_login_reads_and_keeps_its_own_settings(pg: PgServer) -> None:
    dsn = f"{pg.uri}?application_name=mine"
    h = PostgresHome(credentials=PostgresCredentials(dsn=dsn))
    batch = next(h.read(ReadRequest(entity="e", query="SELECT current_setting('TimeZone') AS tz")))
    assert batch.to_pylist() == [{"tz": "UTC"}]
    got = next(
        h.read(
            ReadRequest(
                entity="e",
                query="SELECT application_name AS a FROM pg_stat_activity "
                "WHERE pid = pg_backend_pid()",
            )
        )
    )
    assert got.to_pylist() == [{"a": "mine"}]
    assert "(DSN)" in h.describe(ReadRequest(entity="e", table="t"))
    assert pg.password not in h.describe(ReadRequest(entity="e", table="t"))


def test_a_nanosecond_bound_pushes_down_its_microsecond_floor(pg: PgServer, pg_schema: str) -> None:
    # PostgreSQL keeps microseconds: the bound is cut to them (bound as text, read back by
    # `current_setting`), so the row at the cut microsecond is read (a superset; the engine's
    # exact filter decides) and nothing after the bound can be lost
    pg.execute(
        f'CREATE TABLE "{pg_schema}".ns (id int, ts timestamp)',
        f"INSERT INTO \"{pg_schema}\".ns VALUES (1, '2024-05-01 12:00:00.123455'),"
        " (2, '2024-05-01 12:00:00.123456'), (3, '2024-05-01 12:00:00.123457'), (4, NULL)",
    )
    bound = NanoTimestamp(1_714_564_800_123_456_789)  # 12:00:00.123456789
    request = ReadRequest(entity="e", table=f"{pg_schema}.ns", since=Since("ts", bound))
    got = pa.Table.from_batches(list(home(pg).read(request)))
    assert sorted(got.column("id").to_pylist()) == [2, 3, 4]
