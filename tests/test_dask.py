"""Scale-out: the entity tasks of one flow run on an existing Dask cluster (2 local workers)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from tests.conftest import ledger_of, make_events_db, run_flow
from tests.flow_helpers import assert_lake_equals_source, events_rows, spec_for, summary_row


@pytest.fixture(scope="module")
def dask_cluster(prefect_server: str) -> Iterator[str]:
    # worker processes report task runs to the same test server
    os.environ["PREFECT_API_URL"] = prefect_server
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()
        os.environ.pop("PREFECT_API_URL", None)


def exc_summary(state: object) -> list[dict[str, str]]:
    try:
        state.result()  # type: ignore[attr-defined]
    except Exception as exc:
        return exc.summary  # type: ignore[attr-defined,no-any-return]
    msg = "the run was expected to fail"
    raise AssertionError(msg)


def test_entities_run_on_an_existing_dask_cluster(
    tmp_path: Path, spec_name: str, dask_cluster: str
) -> None:
    db = make_events_db(tmp_path / "src.sqlite", events_rows(0, 800))
    lake = tmp_path / "lake"
    spec = spec_for(spec_name, db, lake, concurrency=2)
    spec["entities"].append({"name": "copy", "table": "events"})
    spec["entities"].append({"name": "ghost", "table": "missing"})

    state = run_flow(spec, dask_address=dask_cluster)
    assert state.is_failed()  # `ghost` fails on a worker; the others commit
    with pytest.raises(
        Exception, match=r"1 of 3 entities failed: ghost .*'missing' does not exist"
    ):
        state.result()
    assert_lake_equals_source(lake, db)
    assert set(ledger_of(spec)) == {"events", "copy"}

    # the work really happened in the cluster's worker processes, not in the flow's
    with Client(dask_cluster) as client:
        worker_pids = {str(pid) for pid in client.run(os.getpid).values()}
    assert len(worker_pids) == 2 and str(os.getpid()) not in worker_pids
    summary = {r["entity"]: r for r in exc_summary(state)}
    for entity in ("events", "copy"):
        assert summary[entity]["ran_on"].rsplit(":", 1)[1] in worker_pids

    make_events_db(db, events_rows(800, 200))
    spec["entities"].pop()
    state = run_flow(spec, dask_address=dask_cluster)
    assert state.is_completed()
    assert summary_row(state, "events")["rows"] == 200
    assert_lake_equals_source(lake, db)
