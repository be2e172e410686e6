"""hygge projects: hygge.yml + flows/<flow>/flow.yml + entities/*.yml, loaded and run for real."""

from __future__ import annotations

import sqlite3
import textwrap
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl
import pytest

from blocks import WatermarkLedger
from flows.project import Project, find_project, load_project
from flows.scaffold import scaffold
from flows.spec import FlowSpec, parse_spec
from hygge_core.errors import ConfigError
from tests.conftest import make_events_db, read_lake, run_flow
from tests.flow_helpers import events_rows, summary_row, ts


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root / "hygge.yml"


def run(spec: FlowSpec) -> Any:
    return run_flow(spec.model_dump(by_alias=True, exclude_none=True))


def ledger(spec: FlowSpec) -> dict[str, Any]:
    return WatermarkLedger.load_or_new(spec.ledger_name).value


# -- hygge init ---------------------------------------------------------------------------------


def test_scaffold_writes_a_project_that_runs_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / f"Demo-{uuid.uuid4().hex[:8]}"
    written = scaffold(target)
    rel = sorted(str(p.relative_to(target)) for p in written)
    assert rel == [
        "data/shop.sqlite",
        "flows/shop/entities/customers.yml",
        "flows/shop/entities/orders.yml",
        "flows/shop/flow.yml",
        "hygge.yml",
    ]
    for path in written:
        if path.suffix != ".yml":
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                assert " # " in line, f"{path.name}: no comment on {line!r}"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    found = find_project(target / "flows" / "shop" / "entities")
    assert found == target / "hygge.yml"
    project = load_project(found)
    assert project.name == target.name.lower().replace("-", "_")
    assert list(project.flows) == ["shop"]
    spec = project.flows["shop"]
    assert spec.home == {"type": "sqlite", "path": str(target / "data" / "shop.sqlite")}
    assert spec.store == {"type": "parquet", "path": str(target / "lake")}

    state = run(spec)
    assert state.is_completed(), state.message
    orders = read_lake(target / "lake", "orders")
    customers = read_lake(target / "lake", "customers")
    assert (orders.height, customers.height) == (500, 200)
    assert orders["order_id"].sort().to_list() == list(range(1, 501))
    assert orders["_loaded_at"].n_unique() == 1
    assert ledger(spec)["orders"]["watermark"]["value"] == "2024-01-01T09:01:40"
    assert not (elsewhere / "lake").exists()


def test_scaffold_refuses_to_overwrite_a_project(tmp_path: Path) -> None:
    (tmp_path / "hygge.yml").write_text("name: mine\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"hygge\.yml already exists: `hygge init` does not"):
        scaffold(tmp_path)
    assert (tmp_path / "hygge.yml").read_text(encoding="utf-8") == "name: mine\n"
    assert not (tmp_path / "flows").exists()


# -- the earlier format ----------------------------------------------------------------------


def earlier_project(root: Path, name: str) -> Path:
    """Two flows in the earlier hygge's format: SQLite incremental, and Parquet files."""
    (root / "data").mkdir(parents=True)
    make_events_db(root / "data" / "sales.db", events_rows(0, 300))
    con = sqlite3.connect(root / "data" / "sales.db")
    con.execute("CREATE TABLE refunds (id INTEGER, ts DATETIME, amount DECIMAL(10,2), label TEXT)")
    con.executemany("INSERT INTO refunds VALUES (?,?,?,?)", events_rows(0, 100))
    con.commit()
    con.close()
    landing = root / "landing"
    (landing / "customers").mkdir(parents=True)
    people = pl.DataFrame({"Customer ID": [1, 2, 3], "Full Name": ["Åsa", "Bo", "Cy"]})
    people[:2].write_parquet(landing / "customers" / "part-1.parquet")
    people[2:].write_parquet(landing / "customers" / "part-2.parquet")
    pl.DataFrame({"Customer ID": [9], "Full Name": ["Zoë"]}).write_parquet(
        landing / "products.parquet"
    )
    return write(
        root,
        {
            "hygge.yml": f"""
                name: "{name}"
                flows_dir: pipelines
                options:
                  concurrency: 2
            """,
            "pipelines/sales/flow.yml": """
                name: sales
                home: ${SALES_DB:-data/sales.db}
                store: ${LAKE_DIR}
                run_type: incremental
                retry_delay_seconds: 0
                watermark:
                  primary_key: id
                  watermark_column: ts
                defaults:
                  batch_size: 50
            """,
            "pipelines/sales/entities/events.yml": """
                name: events
                home:
                  table: events
            """,
            "pipelines/sales/entities/refunds.yml": """
                watermark:
                  primary_key: [id, label]
                  watermark_column: ts
            """,
            "pipelines/files/flow.yml": """
                home: landing
                store:
                  type: parquet
                  path: lake_files
                  polish:
                    columns: {case: snake}
                    hash_ids: [{name: row_id, from_columns: [Customer ID]}]
                    constants: [{name: source, value: crm}]
                    timestamps: [{name: loaded_at}]
                full_drop: true
                entities: [customers, products]
            """,
        },
    )


def test_earlier_format_loads_to_todays_specs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKE_DIR", "lake")
    name = f"Legacy {uuid.uuid4().hex[:8]}"
    project = load_project(earlier_project(tmp_path, name))
    slug = name.lower().replace(" ", "_")
    assert (project.name, project.root, project.concurrency) == (name, tmp_path, 2)
    assert list(project.flows) == ["files", "sales"]
    assert project.flows["sales"] == parse_spec(
        {
            "name": f"{slug}_sales",
            "home": {"type": "sqlite", "path": str(tmp_path / "data" / "sales.db")},
            "store": {"type": "parquet", "path": str(tmp_path / "lake")},
            "run_type": "incremental",
            "concurrency": 2,
            "retry_delay_seconds": 0,
            "defaults": {"batch_size": 50, "watermark": {"column": "ts", "keys": ["id"]}},
            "entities": [
                {"name": "events", "table": "events"},
                {
                    "name": "refunds",
                    "table": "refunds",
                    "watermark": {"column": "ts", "keys": ["id", "label"]},
                },
            ],
        }
    )
    assert project.flows["files"] == parse_spec(
        {
            "name": f"{slug}_files",
            "home": {"type": "parquet", "path": str(tmp_path / "landing")},
            "store": {"type": "parquet", "path": str(tmp_path / "lake_files")},
            "run_type": "full_drop",
            "concurrency": 2,
            "defaults": {
                "polish": {
                    "case": "snake_case",
                    "hash_id": [{"name": "row_id", "columns": ["Customer ID"]}],
                    "constants": {"source": "crm"},
                    "load_timestamp": "loaded_at",
                }
            },
            "entities": [
                {"name": "customers", "path": "customers"},
                {"name": "products", "path": "products.parquet"},
            ],
        }
    )


def test_earlier_format_runs_incrementally_and_polished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKE_DIR", "lake")
    project = load_project(earlier_project(tmp_path, f"legacy-{uuid.uuid4().hex[:8]}"))
    sales, files = project.flows["sales"], project.flows["files"]

    first = run(sales)
    assert first.is_completed(), first.message
    assert (summary_row(first, "events")["rows"], summary_row(first, "refunds")["rows"]) == (
        300,
        100,
    )
    # 120 new rows, and 3 new rows tied on the last watermark value (ts(59))
    db = tmp_path / "data" / "sales.db"
    make_events_db(
        db, events_rows(300, 120) + [(1000 + i, ts(59), "1.00", "tie") for i in range(3)]
    )
    second = run(sales)
    assert second.is_completed(), second.message
    assert (summary_row(second, "events")["rows"], summary_row(second, "refunds")["rows"]) == (
        123,
        0,
    )
    events = read_lake(tmp_path / "lake", "events")
    assert events.height == 423
    assert events["id"].n_unique() == 423
    assert read_lake(tmp_path / "lake", "refunds").height == 100
    assert ledger(sales)["events"]["watermark"]["value"] == "2024-05-01T12:01:23"

    state = run(files)
    assert state.is_completed(), state.message
    customers = read_lake(tmp_path / "lake_files", "customers").sort("customer_id")
    assert customers.columns == ["customer_id", "full_name", "row_id", "source", "loaded_at"]
    assert customers["full_name"].to_list() == ["Åsa", "Bo", "Cy"]
    assert customers["source"].to_list() == ["crm"] * 3
    assert customers["row_id"].str.len_chars().to_list() == [32] * 3
    assert read_lake(tmp_path / "lake_files", "products")["customer_id"].to_list() == [9]


# -- mistakes --------------------------------------------------------------------------------

BASE = {
    "hygge.yml": "name: p\n",
    "flows/f/flow.yml": "home: data/src.sqlite\nstore: lake\nrun_type: incremental\n",
    "flows/f/entities/events.yml": "name: events\n",
}


class Typo(NamedTuple):
    file: str
    text: str
    key: str
    suggestion: str


TYPOS = [
    Typo("hygge.yml", "name: p\noptons: {concurrency: 2}\n", "optons", "options"),
    Typo("hygge.yml", "options: {concurency: 2}\n", "options.concurency", "options.concurrency"),
    Typo("flows/f/flow.yml", "home: data/src.sqlite\nstor: lake\n", "stor", "store"),
    Typo(
        "flows/f/flow.yml",
        "home: data/src.sqlite\nstore: lake\ndefaults: {bach_size: 5}\n",
        "defaults.bach_size",
        "defaults.batch_size",
    ),
    Typo(
        "flows/f/flow.yml",
        "home: {type: sqlite, pth: a.db}\nstore: lake\n",
        "home.pth",
        "home.path",
    ),
    Typo(
        "flows/f/flow.yml",
        "home: a.db\nstore: lake\nrun_type: incremental\n"
        "watermark: {primary_key: id, watermark_colum: ts}\n",
        "watermark.watermark_colum",
        "watermark.watermark_column",
    ),
    Typo("flows/f/entities/events.yml", "watermak: {column: ts}\n", "watermak", "watermark"),
    Typo("flows/f/entities/events.yml", "home: {tabel: events}\n", "home.tabel", "home.table"),
    Typo(
        "flows/f/flow.yml",
        "home: a.db\nstore: {type: parquet, path: lake, polish: {constans: {a: 1}}}\n",
        "store.polish.constans",
        "store.polish.constants",
    ),
    Typo(
        "flows/f/flow.yml",
        "home: a.db\nstore: {path: lake, polish: {columns: {cse: snake}}}\n",
        "store.polish.columns.cse",
        "store.polish.columns.case",
    ),
    Typo(
        "flows/f/entities/events.yml",
        "store: {polish: {hash_ids: [{name: x, from_colums: [id]}]}}\n",
        "store.polish.hash_ids.from_colums",
        "store.polish.hash_ids.from_columns",
    ),
]


@pytest.mark.parametrize("case", [pytest.param(t, id=t.key) for t in TYPOS])
def test_unknown_key_names_file_key_and_suggestion(tmp_path: Path, case: Typo) -> None:
    hygge_yml = write(tmp_path, {**BASE, case.file: case.text})
    with pytest.raises(ConfigError) as err:
        load_project(hygge_yml)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / case.file}: unknown key `{case.key}`;"), msg
    assert f"did you mean `{case.suggestion}`?" in msg


class Refusal(NamedTuple):
    id: str
    files: dict[str, str]
    match: str


REFUSALS = [
    Refusal(
        "connections",
        {"hygge.yml": "connections: {db: {type: mssql}}\n"},
        r"hygge\.yml: key `connections` cannot be used: save each connection as a block",
    ),
    Refusal(
        "continue_on_error",
        {"hygge.yml": "options: {continue_on_error: true}\n"},
        r"key `options\.continue_on_error` cannot be used",
    ),
    Refusal(
        "entity-key-on-flow",
        {"flows/f/flow.yml": "home: a.db\nstore: lake\nbatch_size: 5\n"},
        r"flow\.yml: key `batch_size` cannot be used: an entity setting: write it under "
        r"`defaults:`",
    ),
    Refusal(
        "remove_special",
        {
            "flows/f/flow.yml": "home: a.db\nstore: {path: lake, polish: {columns: "
            "{remove_special: true}}}\n"
        },
        r"`store\.polish\.columns\.remove_special` cannot be used: the earlier hygge also "
        r"dropped text in parentheses",
    ),
    Refusal(
        "earlier-watermark-without-run-type",
        {
            "flows/f/flow.yml": "home: a.db\nstore: lake\n"
            "watermark: {primary_key: id, watermark_column: ts}\n"
        },
        r"entity 'events' has a watermark in the earlier spelling .* no `run_type`; the earlier "
        r"hygge defaulted to full_drop",
    ),
    Refusal(
        "store-file",
        {"flows/f/flow.yml": "home: a.db\nstore: lake.parquet\n"},
        r"`store` '.*lake\.parquet' is a file; a Store's path is the folder",
    ),
    Refusal(
        "mixed-folder",
        {
            "flows/f/flow.yml": "home: mixed\nstore: lake\n",
            "mixed/a.csv": "x\n1\n",
            "mixed/b.parquet": "",
        },
        r"`home` '.*mixed' holds both Parquet and CSV files, so its type is ambiguous",
    ),
    Refusal(
        "ambiguous-reference",
        {"flows/f/flow.yml": "home: sqlite-home/shop\nstore: lake\n", "sqlite-home/shop": ""},
        r"`home` 'sqlite-home/shop' is ambiguous: .* write './sqlite-home/shop' for the path",
    ),
    Refusal(
        "list-and-files",
        {"flows/f/flow.yml": "home: a.db\nstore: lake\nentities: [orders]\n"},
        r"`entities` is listed here and .* holds entity files; keep one of the two",
    ),
    Refusal(
        "flow-name",
        {"flows/f/flow.yml": "name: other\nhome: a.db\nstore: lake\n"},
        r"`name` 'other' differs from the flow's folder 'f'",
    ),
]


@pytest.mark.parametrize("case", [pytest.param(r, id=r.id) for r in REFUSALS])
def test_unmappable_settings_are_refused_with_the_fix(tmp_path: Path, case: Refusal) -> None:
    hygge_yml = write(tmp_path, {**BASE, **case.files})
    with pytest.raises(ConfigError, match=case.match):
        load_project(hygge_yml)


def test_an_invalid_value_names_the_flow_file(tmp_path: Path) -> None:
    hygge_yml = write(
        tmp_path, {**BASE, "flows/f/flow.yml": "home: a.db\nstore: lake\nretries: 99\n"}
    )
    with pytest.raises(ConfigError, match=r"flows/f/flow\.yml: invalid flow spec:\n.*retries"):
        load_project(hygge_yml)


# -- finding and selecting ---------------------------------------------------------------------


def test_find_project_walks_up_from_a_subfolder(tmp_path: Path) -> None:
    hygge_yml = write(tmp_path / "proj", BASE)
    deep = tmp_path / "proj" / "flows" / "f" / "entities"
    assert find_project(deep) == hygge_yml
    assert find_project(deep / "events.yml") == hygge_yml
    assert find_project(tmp_path / "proj") == hygge_yml
    assert find_project(tmp_path) is None


@pytest.fixture
def two_flows(tmp_path: Path) -> Project:
    return load_project(
        write(
            tmp_path,
            {
                "hygge.yml": "name: shop\n",
                "flows/sales/flow.yml": "home: s.db\nstore: lake\nentities: [orders, lines]\n",
                "flows/crm/flow.yml": "home: c.db\nstore: lake2\nentities: [people]\n",
            },
        )
    )


def test_select_picks_flows_and_flow_entities(two_flows: Project) -> None:
    def picked(flows: list[str] | None, entities: list[str] | None) -> list[Any]:
        return [(f, spec.name, e) for f, spec, e in two_flows.select(flows, entities)]

    assert picked(None, None) == [("crm", "shop_crm", None), ("sales", "shop_sales", None)]
    assert picked(["sales"], None) == [("sales", "shop_sales", None)]
    assert picked(None, ["sales.lines", "sales.orders", "sales.lines"]) == [
        ("sales", "shop_sales", ["lines", "orders"])
    ]
    # a flow named whole runs whole; entities of other flows add to it
    assert picked(["sales"], ["sales.lines", "crm.people"]) == [
        ("crm", "shop_crm", ["people"]),
        ("sales", "shop_sales", None),
    ]


@pytest.mark.parametrize(
    ("flows", "entities", "match"),
    [
        (["sale"], None, r"no flow named 'sale' in project 'shop' \(flows: crm, sales\)"),
        (None, ["sales.order"], r"flow 'sales' has no entity 'order' \(entities: orders, lines\)"),
        (None, ["orders"], r"'orders' does not name an entity as <flow>\.<entity> .*crm, sales"),
    ],
)
def test_select_refuses_unknown_names(
    two_flows: Project, flows: list[str] | None, entities: list[str] | None, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        two_flows.select(flows, entities)


# -- bare paths and names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("home", "files", "kind", "entity"),
    [
        pytest.param("in/x.parquet", {}, "parquet", ("f", "in/x.parquet"), id="parquet-file"),
        pytest.param("in/x.csv", {}, "csv", ("f", "in/x.csv"), id="csv-file"),
        pytest.param("in/x.db", {}, "sqlite", ("events", "events"), id="db"),
        pytest.param("in/x.sqlite3", {}, "sqlite", ("events", "events"), id="sqlite3"),
        pytest.param(
            "in", {"in/events/a.csv": "id\n1\n"}, "csv", ("events", "events"), id="csv-dir"
        ),
        pytest.param(
            "in", {"in/events.csv": "id\n"}, "csv", ("events", "events.csv"), id="csv-e-file"
        ),
        pytest.param("in", {}, "parquet", ("events", "events"), id="missing-dir"),
    ],
)
def test_bare_home_path_gives_type_and_entity_paths(
    tmp_path: Path, home: str, files: dict[str, str], kind: str, entity: tuple[str, str]
) -> None:
    # a file Home's flow lists no entities (its one entity reads the file); the others name one
    listed = "" if Path(home).suffix in (".parquet", ".csv") else "entities: [events]\n"
    flow = f"home: {home}\nstore: lake\n{listed}"
    hygge_yml = write(tmp_path, {"hygge.yml": "name: p\n", "flows/f/flow.yml": flow, **files})
    spec = load_project(hygge_yml).flows["f"]
    assert spec.home == {"type": kind, "path": str(tmp_path / home)}
    name, source = entity
    got = spec.entities[0]
    assert (got.name, got.table if kind == "sqlite" else got.path) == (
        name,
        str(tmp_path / source) if name == "f" else source,
    )


def test_entities_by_name_need_a_folder_home(tmp_path: Path) -> None:
    hygge_yml = write(tmp_path, {**BASE, "flows/f/flow.yml": "home: in/x.csv\nstore: lake\n"})
    with pytest.raises(ConfigError, match=r"entity 'events' has no `path`, and the Home's path"):
        load_project(hygge_yml)


def test_saved_block_references_stay_references(tmp_path: Path) -> None:
    flow = "home: sqlite-home/shop\nstore: parquet-store/lake\n"
    spec = load_project(write(tmp_path, {**BASE, "flows/f/flow.yml": flow})).flows["f"]
    assert (spec.home, spec.store) == ("sqlite-home/shop", "parquet-store/lake")
    assert spec.entities[0].table == "events"


@pytest.mark.parametrize(
    ("files", "match"),
    [
        pytest.param(
            {"flows/f/flow.yml": "home: ${NO_SUCH_VAR_HYGGE}\nstore: lake\n"},
            r"flows/f/flow\.yml, field home: environment variable 'NO_SUCH_VAR_HYGGE' is not set",
            id="env",
        ),
        pytest.param(
            {"flows/f/flow.yml": "home: sqlite-hom/shop\nstore: lake\n"},
            r"`home` 'sqlite-hom/shop' names an unknown block type 'sqlite-hom'; did you mean "
            r"'sqlite-home'\? \(write './sqlite-hom/shop' if it is a path\)",
            id="slug",
        ),
        pytest.param(
            {"flows/f/flow.yml": "home: parquet-store/lake\nstore: lake\n"},
            r"`home` 'parquet-store/lake' is a parquet-store block, not a home",
            id="role",
        ),
        pytest.param(
            {"flows/F/flow.yml": "home: a.db\nstore: lake\n", "flows/F/entities/e.yml": ""},
            r"hygge\.yml: flows 'F' and 'f' would share the name 'p_f'; rename one",
            id="collision",
        ),
        pytest.param(
            {"hygge.yml": "options: {concurrency: 65}\n"},
            r"hygge\.yml: `options\.concurrency` must be a whole number from 1 to 64, not 65",
            id="concurrency",
        ),
        pytest.param(
            {"flows/f/entities/other.yaml": "name: x\n"},
            r"other\.yaml: entity files end in \.yml; rename it to other\.yml",
            id="yaml-suffix",
        ),
    ],
)
def test_project_mistakes_name_the_file(tmp_path: Path, files: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_project(write(tmp_path, {**BASE, **files}))


def test_a_flow_without_entities_reads_its_csv_folder(tmp_path: Path, spec_name: str) -> None:
    write(
        tmp_path,
        {
            "hygge.yml": f"name: {spec_name}\n",
            "flows/drops/flow.yml": "home: inbox\nstore: lake\n",
            "inbox/2024/jan.csv": "id,city\n1,Aarhus\n2,Odense\n",
            "inbox/2024/feb.csv": "id,city\n3,Vejle\n",
        },
    )
    spec = load_project(tmp_path / "hygge.yml").flows["drops"]
    assert spec.home == {"type": "csv", "path": str(tmp_path / "inbox")}
    assert [(e.name, e.path) for e in spec.entities] == [("drops", str(tmp_path / "inbox"))]
    state = run(spec)
    assert state.is_completed(), state.message
    lake = read_lake(tmp_path / "lake", "drops").sort("id")
    assert lake["city"].to_list() == ["Aarhus", "Odense", "Vejle"]
