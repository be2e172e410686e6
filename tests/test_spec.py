"""Loading flow specs from real YAML files: expansion, defaults, overrides and every error."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from blocks import (
    HOMES,
    STORES,
    CsvHome,
    HomeBlock,
    ParquetStore,
    SqliteHome,
    StoreBlock,
    WatermarkLedger,
)
from flows.plan import EntityJob, build_jobs, resolve_block
from flows.spec import FlowSpec, load_spec
from hygge_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


VALID = """\
    name: shop_to_lake
    home: {type: sqlite, path: shop.sqlite}
    store: {type: parquet, path: lake}
    run_type: incremental
    concurrency: 2
    entities:
      - name: orders
        table: orders
        watermark: {column: updated_at, keys: [order_id]}
      - name: big_orders
        query: SELECT * FROM orders WHERE total > 100
"""


def entity_spec(tmp_path: Path, entity: str, name: str = "spec.yaml") -> Path:
    """A valid spec around one entity given as YAML lines (indented under `entities:`)."""
    body = textwrap.indent(textwrap.dedent(entity).strip(), "  ")
    text = (
        "name: t\nhome: {type: sqlite, path: shop.sqlite}\nstore: {type: parquet, path: lake}\n"
        f"entities:\n{body}\n"
    )
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def jobs_for(spec: FlowSpec) -> list[EntityJob]:
    """Plan every entity with the spec's inline blocks and an empty ledger (no server)."""
    home = resolve_block(spec.home, HOMES, "home")
    store = resolve_block(spec.store, STORES, "store")
    assert isinstance(home, HomeBlock) and isinstance(store, StoreBlock)
    return build_jobs(spec, home, store, WatermarkLedger())


# -- valid specs -------------------------------------------------------------------------------


def test_spec_valid_file_loads_every_field(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, VALID))
    assert spec.name == "shop_to_lake"
    assert spec.home == {"type": "sqlite", "path": "shop.sqlite"}
    assert spec.store == {"type": "parquet", "path": "lake"}
    assert spec.concurrency == 2
    assert spec.ledger_name == "hygge-ledger-shop-to-lake"
    orders, big = spec.entities
    assert orders.table == "orders"
    assert orders.watermark is not None
    assert orders.watermark.column == "updated_at"
    assert orders.watermark.keys == ["order_id"]
    assert orders.batch_size == 100_000
    assert big.query == "SELECT * FROM orders WHERE total > 100"
    assert big.table is None
    assert big.watermark is None
    assert spec.entity("big_orders") is big


def test_spec_bundled_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYGGE_EXAMPLE_DIR", raising=False)
    monkeypatch.delenv("HYGGE_LAKE", raising=False)
    spec = load_spec(REPO / "deployments" / "example.yaml")
    assert spec.home == {"type": "sqlite", "path": "example_data/shop.sqlite"}
    assert spec.store == {"type": "parquet", "path": "lake"}
    assert [e.name for e in spec.entities] == ["orders", "order_lines", "customers", "products"]


def test_spec_env_vars_are_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYGGE_T_DATA", "/data/shop")
    monkeypatch.setenv("HYGGE_T_TABLE", "orders_v2")
    monkeypatch.delenv("HYGGE_T_LAKE", raising=False)
    path = write_spec(
        tmp_path,
        """\
        name: t
        home: {type: sqlite, path: "${HYGGE_T_DATA}/shop.sqlite"}
        store: {type: parquet, path: "${HYGGE_T_LAKE:-/tmp/lake}"}
        entities:
          - {name: orders, table: "${HYGGE_T_TABLE}", where: "x = '${HYGGE_T_TABLE:-no}'"}
        """,
    )
    spec = load_spec(path)
    assert spec.home == {"type": "sqlite", "path": "/data/shop/shop.sqlite"}
    assert spec.store == {"type": "parquet", "path": "/tmp/lake"}
    assert spec.entities[0].table == "orders_v2"
    assert spec.entities[0].where == "x = 'orders_v2'"


def test_spec_env_default_used_when_var_is_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as in the shell: `${VAR:-x}` falls back when VAR is unset *or* empty; `${VAR}` stays empty
    monkeypatch.setenv("HYGGE_T_EMPTY", "")
    path = write_spec(
        tmp_path,
        """\
        name: t
        home: {type: sqlite, path: "${HYGGE_T_EMPTY:-shop.sqlite}"}
        store: {type: parquet, path: "lake${HYGGE_T_EMPTY}"}
        entities: [{name: orders, table: orders}]
        """,
    )
    spec = load_spec(path)
    assert spec.home == {"type": "sqlite", "path": "shop.sqlite"}
    assert spec.store == {"type": "parquet", "path": "lake"}


def test_spec_env_expansion_does_not_recurse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYGGE_T_OUTER", "${HYGGE_T_UNSET_INNER}")
    monkeypatch.delenv("HYGGE_T_UNSET_INNER", raising=False)
    path = write_spec(
        tmp_path,
        """\
        name: t
        home: {type: sqlite, path: "${HYGGE_T_OUTER}"}
        store: {type: parquet, path: lake}
        entities: [{name: orders, table: orders}]
        """,
    )
    assert load_spec(path).home == {"type": "sqlite", "path": "${HYGGE_T_UNSET_INNER}"}


def test_spec_unset_env_var_without_default_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HYGGE_T_MISSING", raising=False)
    path = entity_spec(tmp_path, '- {name: orders, table: "${HYGGE_T_MISSING}"}')
    with pytest.raises(
        ConfigError, match=r"environment variable 'HYGGE_T_MISSING' is not set"
    ) as e:
        load_spec(path)
    message = str(e.value)
    assert str(path) in message
    assert "entities['orders'].table" in message
    assert "${HYGGE_T_MISSING:-default}" in message  # says how to fix it


def test_spec_defaults_apply_and_entity_fields_win(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        """\
        name: t
        home: {type: sqlite, path: shop.sqlite}
        store: {type: parquet, path: lake}
        run_type: incremental
        defaults: {batch_size: 500, run_type: full_drop, compression: gzip}
        entities:
          - {name: a, table: a}
          - {name: b, table: b, batch_size: 7, run_type: incremental, compression: snappy}
        """,
    )
    spec = load_spec(path)
    a, b = spec.entities
    assert (a.batch_size, a.run_type, a.overrides) == (500, "full_drop", {"compression": "gzip"})
    assert (b.batch_size, b.run_type, b.overrides) == (7, "incremental", {"compression": "snappy"})
    job_a, job_b = jobs_for(spec)
    assert job_a.plan.mode == "replace"
    assert job_a.plan.reason.startswith("full_drop")
    assert job_a.plan.request.batch_size == 500
    assert job_b.plan.request.batch_size == 7
    assert isinstance(job_a.store, ParquetStore) and isinstance(job_b.store, ParquetStore)
    assert (job_a.store.compression, job_b.store.compression) == ("gzip", "snappy")


def test_spec_entity_field_overrides_store_setting_for_that_entity_only(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    path = write_spec(
        tmp_path,
        f"""\
        name: t
        home: {{type: csv, path: data}}
        store: {{type: parquet, path: "{lake}", compression: zstd}}
        entities:
          - {{name: plain, path: plain.csv}}
          - {{name: fast, path: fast.csv, compression: snappy, delimiter: ";"}}
        """,
    )
    spec = load_spec(path)
    plain, fast = jobs_for(spec)
    assert isinstance(fast.store, ParquetStore) and isinstance(plain.store, ParquetStore)
    assert isinstance(fast.home, CsvHome) and isinstance(plain.home, CsvHome)
    assert fast.store.compression == "snappy"
    assert fast.home.delimiter == ";"  # a Home setting, overridden the same way
    assert plain.store.compression == "zstd"
    assert plain.home.delimiter == ","
    assert fast.store.path == plain.store.path == str(lake)

    # the override reaches the files the entity's store copy writes
    for job in (plain, fast):
        writer = job.store.open_writer(job.plan.name, "r1", "replace")
        writer.write(pa.record_batch({"x": [1, 2, 3]}))
        manifest = writer.commit_files(None, 3)
        meta = pq.ParquetFile(lake / job.plan.name / manifest.files[0]).metadata
        codec = meta.row_group(0).column(0).compression
        assert codec == ("SNAPPY" if job is fast else "ZSTD")


def test_spec_unknown_entity_field_names_entity_field_and_closest(tmp_path: Path) -> None:
    # the inline blocks' settings are known when the spec is read: refused right there
    path = entity_spec(tmp_path, "- {name: orders, table: orders, compresion: snappy}")
    with pytest.raises(ConfigError) as e:
        load_spec(path)
    assert str(e.value) == (
        f"{path}: invalid flow spec:\n  - entity 'orders', field compresion: unknown key (not an "
        "entity field, nor a setting of SqliteHome or ParquetStore), did you mean 'compression'?"
    )


def test_spec_unknown_entity_field_of_an_unknown_saved_block_is_refused_on_plan(
    tmp_path: Path,
) -> None:
    # a block type hygge does not define is known only once loaded: build_jobs refuses it
    path = write_spec(
        tmp_path,
        """        name: t
        home: my-own-home/shop
        store: my-own-store/lake
        entities: [{name: orders, table: orders, compresion: snappy}]
        """,
    )
    spec = load_spec(path)
    home, store = SqliteHome(path="shop.sqlite"), ParquetStore(path=str(tmp_path / "lake"))
    with pytest.raises(ConfigError) as e:
        build_jobs(spec, home, store, WatermarkLedger())
    assert str(e.value) == (
        "entity 'orders': field compresion: unknown key (not an entity field, nor a setting of "
        "SqliteHome or ParquetStore), did you mean 'compression'?"
    )


def test_spec_override_with_wrong_type_names_entity_and_field(tmp_path: Path) -> None:
    path = entity_spec(tmp_path, "- {name: orders, table: orders, max_rows_per_file: lots}")
    with pytest.raises(ConfigError, match=r"entity 'orders': max_rows_per_file: .*integer"):
        jobs_for(load_spec(path))


# -- errors ------------------------------------------------------------------------------------


def test_spec_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=rf"spec file '{re.escape(str(missing))}' does not exist"):
        load_spec(missing)


def test_spec_directory_instead_of_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"cannot read spec file '{re.escape(str(tmp_path))}'"):
        load_spec(tmp_path)


def test_spec_binary_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"name: t\n\xff\xfe garbage")
    with pytest.raises(ConfigError, match=rf"spec file '{re.escape(str(path))}' is not UTF-8 text"):
        load_spec(path)


def test_spec_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "name: t\nentities:\n  - name: [orders\n    table: x\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: not valid YAML") as e:
        load_spec(path)
    assert "line " in str(e.value)


@pytest.mark.parametrize("text", ["", "- just\n- a list\n", "just a string\n"])
def test_spec_not_a_mapping_is_rejected(tmp_path: Path, text: str) -> None:
    path = write_spec(tmp_path, text)
    with pytest.raises(
        ConfigError, match=rf"{re.escape(str(path))}: a flow spec must be a mapping"
    ):
        load_spec(path)


def test_spec_missing_entities_is_named(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "name: t\nhome: h/x\nstore: s/y\n")
    with pytest.raises(
        ConfigError, match=rf"{re.escape(str(path))}: invalid flow spec:\n  - field entities: "
    ):
        load_spec(path)


def test_spec_empty_entities_is_rejected(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "name: t\nhome: h/x\nstore: s/y\nentities: []\n")
    with pytest.raises(ConfigError, match=r"field entities: List should have at least 1 item"):
        load_spec(path)


def test_spec_duplicate_entity_names_are_listed(tmp_path: Path) -> None:
    path = entity_spec(
        tmp_path,
        """\
        - {name: a, table: a}
        - {name: b, table: b}
        - {name: a, table: a2}
        """,
    )
    with pytest.raises(
        ConfigError,
        match=rf"(?s){re.escape(str(path))}: .*entity names must be unique; repeated: a$",
    ):
        load_spec(path)


def test_spec_bad_run_type_names_entity_and_field(tmp_path: Path) -> None:
    path = entity_spec(tmp_path, "- {name: orders, table: orders, run_type: full}")
    with pytest.raises(ConfigError, match=r"entity 'orders', field run_type: Input should be") as e:
        load_spec(path)
    assert str(path) in str(e.value)
    assert "'incremental' or 'full_drop'" in str(e.value)


def test_spec_bad_top_level_run_type_names_field(tmp_path: Path) -> None:
    path = write_spec(tmp_path, VALID.replace("run_type: incremental", "run_type: nightly"))
    with pytest.raises(ConfigError, match=r"  - field run_type: Input should be 'incremental'"):
        load_spec(path)


def test_spec_table_and_query_together_is_rejected(tmp_path: Path) -> None:
    path = entity_spec(tmp_path, "- {name: orders, table: orders, query: SELECT 1}")
    with pytest.raises(ConfigError, match=r"entity 'orders': .*give `table` or `query`, not both"):
        load_spec(path)


@pytest.mark.parametrize("name", ["a/b", "_x", ".hidden", "..", "a\\b", ""])
def test_spec_unsafe_entity_name_names_file_entity_and_field(tmp_path: Path, name: str) -> None:
    path = entity_spec(tmp_path, f"- {{name: '{name}', table: t}}")
    with pytest.raises(ConfigError, match=r"field name: Value error, must not contain '/'") as e:
        load_spec(path)
    message = str(e.value)
    assert message.startswith(f"{path}: invalid flow spec")
    if name:
        assert f"entity {name!r}" in message
    else:
        assert "entities[0]" in message


def test_spec_wrong_field_type_names_entity_and_nested_field(tmp_path: Path) -> None:
    path = entity_spec(
        tmp_path,
        """\
        - {name: ok, table: ok}
        - {name: orders, table: orders, batch_size: 0, watermark: {column: ts, key: [id]}}
        """,
    )
    with pytest.raises(ConfigError) as e:
        load_spec(path)
    message = str(e.value)
    assert (
        "entity 'orders', field batch_size: Input should be greater than or equal to 1" in message
    )
    assert "entity 'orders', field watermark.key: unknown key, did you mean 'keys'?" in message
    assert "entity 'ok'" not in message


def test_spec_unknown_top_level_field_is_rejected(tmp_path: Path) -> None:
    path = write_spec(tmp_path, textwrap.dedent(VALID) + "concurency: 3\n")
    with pytest.raises(
        ConfigError, match=r"field concurency: unknown key, did you mean 'concurrency'"
    ):
        load_spec(path)


def test_spec_bad_spec_name_is_rejected(tmp_path: Path) -> None:
    path = write_spec(tmp_path, VALID.replace("name: shop_to_lake", "name: Shop To Lake"))
    with pytest.raises(ConfigError, match=r"field name: String should match pattern"):
        load_spec(path)


# -- unknown keys and types: refused when the spec is read -------------------------------------

TYPOS = [
    # (what the spec says instead of a valid line, where the message points, the suggestion)
    pytest.param(
        (
            "store: {type: parquet, path: lake}",
            "store: {type: parquet, path: lake, compresion: gzip}",
        ),
        "field store.compresion",
        "compression",
        id="store",
    ),
    pytest.param(
        ("home: {type: sqlite, path: shop.sqlite}", "home: {type: sqlite, pth: shop.sqlite}"),
        "field home.pth",
        "path",
        id="home",
    ),
    pytest.param(
        ("concurrency: 2", "concurency: 2"), "field concurency", "concurrency", id="top-level"
    ),
    pytest.param(
        ("concurrency: 2", "task_runner: {type: dask, adress: 'tcp://x:8786'}"),
        "field task_runner.adress",
        "address",
        id="task_runner",
    ),
    pytest.param(
        ("concurrency: 2", "defaults: {batch_sise: 10}"),
        "field defaults.batch_sise",
        "batch_size",
        id="defaults",
    ),
    pytest.param(
        ("concurrency: 2", "defaults: {polish: {kase: snake_case}}"),
        "field defaults.polish.kase",
        "case",
        id="defaults-polish",
    ),
    pytest.param(
        ("table: orders\n", "table: orders\n    batch_sise: 10\n"),
        "entity 'orders', field batch_sise",
        "batch_size",
        id="entity",
    ),
    pytest.param(
        ("keys: [order_id]}", "kyes: [order_id]}"),
        "entity 'orders', field watermark.kyes",
        "keys",
        id="watermark",
    ),
    pytest.param(
        ("table: orders\n", "table: orders\n    polish: {hash_id: {nmae: k, columns: [a]}}\n"),
        "entity 'orders', field polish.hash_id.0.nmae",
        "name",
        id="polish-hash_id",
    ),
    pytest.param(
        ("table: orders\n", "table: orders\n    schema: {on_drfit: warn}\n"),
        "entity 'orders', field schema.on_drfit",
        "on_drift",
        id="schema",
    ),
]


@pytest.mark.parametrize(("edit", "where", "closest"), TYPOS)
def test_spec_typo_at_each_level_names_file_key_and_closest(
    tmp_path: Path, edit: tuple[str, str], where: str, closest: str
) -> None:
    old, new = edit
    text = textwrap.dedent(VALID)
    assert old in text
    path = write_spec(tmp_path, text.replace(old, new, 1))
    with pytest.raises(ConfigError) as e:
        load_spec(path)
    message = str(e.value)
    assert message.startswith(f"{path}: invalid flow spec:\n")
    assert f"  - {where}: unknown key" in message
    assert f"did you mean {closest!r}?" in message
    assert message.count("unknown key") == 1  # a `defaults` typo once, not once per entity


def test_spec_typo_inside_inline_credentials_is_refused(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        """        name: t
        home:
          type: postgres
          host: db.example
          database: shop
          credentials: {username: loader, pasword: "s3cret!"}
        store: {type: parquet, path: lake}
        entities: [{name: orders, table: orders}]
        """,
    )
    with pytest.raises(ConfigError) as e:
        load_spec(path)
    message = str(e.value)
    assert "  - field home.credentials.pasword: unknown key, did you mean 'password'?" in message
    assert "s3cret!" not in message


def test_spec_no_close_key_lists_the_valid_ones(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        VALID.replace(
            "store: {type: parquet, path: lake}", "store: {type: parquet, path: lake, zzz: 1}"
        ),
    )
    with pytest.raises(ConfigError) as e:
        load_spec(path)
    assert "field store.zzz: unknown key; valid keys here: compression, compression_level, " in str(
        e.value
    )


@pytest.mark.parametrize(
    ("home", "expected"),
    [
        pytest.param(
            "{type: excel, path: x}",
            "field home.type: unknown type 'excel' (choose one of: csv, json, mssql, mysql, "
            "parquet, postgres, sqlite)",
            id="unknown",
        ),
        pytest.param(
            "{type: sqlit, path: x}",
            "field home.type: unknown type 'sqlit', did you mean 'sqlite'? (choose one of: csv, "
            "json, mssql, mysql, parquet, postgres, sqlite)",
            id="close",
        ),
        pytest.param(
            "{path: x}",
            "field home: no `type:`; give one of: csv, json, mssql, mysql, parquet, postgres, "
            "sqlite",
            id="missing",
        ),
    ],
)
def test_spec_unknown_home_type_is_refused_with_the_types(
    tmp_path: Path, home: str, expected: str
) -> None:
    path = write_spec(tmp_path, VALID.replace("{type: sqlite, path: shop.sqlite}", home))
    with pytest.raises(ConfigError) as e:
        load_spec(path)
    assert str(e.value) == f"{path}: invalid flow spec:\n  - {expected}"


def test_spec_inline_block_bad_value_is_refused_when_read(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        VALID.replace("path: lake}", "path: lake, max_rows_per_file: lots}").replace(
            "concurrency: 2", "concurrency: 0"
        ),
    )
    with pytest.raises(ConfigError) as e:
        load_spec(path)
    message = str(e.value)
    # every problem at once: the spec's own field and the Store's setting
    assert "  - field concurrency: Input should be greater than or equal to 1" in message
    assert "  - field store.max_rows_per_file: Input should be a valid integer" in message


def test_spec_entity_typo_with_a_saved_hygge_block_is_refused_when_read(tmp_path: Path) -> None:
    # `sqlite-home/...` and `parquet-store/...` are hygge's block types: their settings are known
    path = write_spec(
        tmp_path,
        """        name: t
        home: sqlite-home/shop
        store: parquet-store/lake
        entities: [{name: orders, table: orders, compresion: snappy}]
        """,
    )
    with pytest.raises(ConfigError, match=r"field compresion: .*did you mean 'compression'"):
        load_spec(path)


# -- the command line --------------------------------------------------------------------------


def test_spec_cli_rejects_bad_spec_before_prefect_starts(tmp_path: Path) -> None:
    bad = entity_spec(tmp_path, "- {name: a/b, table: t}", name="bad.yaml")
    env = {
        **os.environ,
        # unreachable on purpose: a bad spec must be reported without talking to any server
        "PREFECT_API_URL": "http://127.0.0.1:9/api",
    }
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "flows.run", "--spec", str(bad)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"hygge: {bad}: invalid flow spec")
    assert "entity 'a/b', field name" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert elapsed < 30  # an import and a validation; no server start, no connection retries
    assert not (tmp_path / "lake").exists()


def run_module(spec: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m flows.run --spec F`, with no Prefect server reachable."""
    # this checkout's code, whichever one `pip install -e` points at
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "flows.run", "--spec", str(spec)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_spec_cli_store_typo_exits_2_with_file_key_and_suggestion(tmp_path: Path) -> None:
    # the case: this ran with exit 0 and the default compression
    import sqlite3

    con = sqlite3.connect(tmp_path / "shop.sqlite")
    con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    con.commit()
    con.close()
    spec = write_spec(
        tmp_path,
        """        name: t
        home: {type: sqlite, path: shop.sqlite}
        store: {type: parquet, path: lake, compresion: gzip}
        entities: [{name: orders, table: orders}]
        """,
        name="bad.yaml",
    )
    proc = run_module(spec, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        f"hygge: {spec}: invalid flow spec:\n"
        "  - field store.compresion: unknown key, did you mean 'compression'?\n"
    )
    assert proc.stdout == ""
    assert not (tmp_path / "lake").exists()


def test_spec_cli_unknown_home_type_exits_2_before_prefect(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, VALID.replace("type: sqlite", "type: excel"), name="bad.yaml")
    proc = run_module(spec, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "field home.type: unknown type 'excel' (choose one of: csv, json, mssql," in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "lake").exists()
