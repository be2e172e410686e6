"""MysqlHome's `tls` against the real MariaDB, which offers TLS with a throwaway CA."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from pydantic import ValidationError

from blocks import MysqlCredentials, MysqlHome
from blocks.base import ReadRequest
from hygge_core.errors import HomeError, is_transient
from tests.mariadb_server import MariaServer, start_server
from tests.pg_server import serve

SECURE_PW = "tls-only s3cret"


@pytest.fixture(scope="module")
def secure_user(mariadb: MariaServer) -> str:
    """A user the server admits only over TLS, with a small table to read."""
    mariadb.root_sql(
        "CREATE USER IF NOT EXISTS 'secure'@'127.0.0.1' IDENTIFIED BY 'tls-only s3cret' "
        "REQUIRE SSL",
        "GRANT SELECT ON *.* TO 'secure'@'127.0.0.1'",
        "CREATE DATABASE IF NOT EXISTS tls_db",
        "CREATE TABLE IF NOT EXISTS tls_db.t (id INT, name VARCHAR(8))",
        "DELETE FROM tls_db.t",
        "INSERT INTO tls_db.t VALUES (1, 'a'), (2, 'b'), (3, NULL)",
    )
    return "secure"


def secure_home(server: MariaServer, **extra: object) -> MysqlHome:
    return MysqlHome(
        host=server.host,
        port=server.port,
        database="tls_db",
        credentials=MysqlCredentials(username="secure", password=SECURE_PW),
        connect_timeout=5,
        **extra,  # type: ignore[arg-type]
    )


def rows(home: MysqlHome) -> list[dict[str, object]]:
    req = ReadRequest(entity="t", table="t")
    return [r for b in home.read(req) for r in b.to_pylist()]


WANT = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": None}]


def test_a_user_that_requires_tls_reads_only_with_tls(
    mariadb: MariaServer, secure_user: str
) -> None:
    started = time.monotonic()
    with pytest.raises(HomeError, match=r"refused the login.*Access denied") as info:
        rows(secure_home(mariadb))  # default `tls: disable`
    assert time.monotonic() - started < 5  # PyMySQL fails first: no pool retries
    assert "the server requires TLS" in str(info.value) and "set `tls: verify`" in str(info.value)
    assert not is_transient(info.value) and SECURE_PW not in str(info.value)
    assert rows(secure_home(mariadb, tls="require")) == WANT
    # and the session really is encrypted (PyMySQL's and connectorx's alike)
    h = secure_home(mariadb, tls="require")
    sql = (
        "SELECT VARIABLE_VALUE AS v FROM information_schema.SESSION_STATUS"
        " WHERE VARIABLE_NAME = 'Ssl_cipher'"
    )
    got = [r["v"] for b in h.read(ReadRequest(entity="c", query=sql)) for r in b.to_pylist()]
    assert len(got) == 1 and got[0]  # a cipher name: connectorx's session is encrypted


def test_verify_with_the_private_ca_reads(mariadb: MariaServer, secure_user: str) -> None:
    h = secure_home(mariadb, tls="verify", tls_ca_file=str(mariadb.ca_file))
    assert rows(h) == WANT


def test_verify_without_the_ca_fails_at_once_naming_the_fix(
    mariadb: MariaServer, secure_user: str
) -> None:
    started = time.monotonic()
    with pytest.raises(HomeError, match=r"certificate failed verification") as info:
        rows(secure_home(mariadb, tls="verify"))
    assert time.monotonic() - started < 5
    text = str(info.value)
    assert "entity 't'" in text and "certificate verify failed" in text
    assert "Set `tls_ca_file`" in text and "`tls: require`" in text
    assert not is_transient(info.value) and SECURE_PW not in text


def test_a_missing_ca_file_names_the_setting(
    mariadb: MariaServer, secure_user: str, tmp_path: Path
) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(HomeError, match=r"cannot load `tls_ca_file`.*nope\.pem"):
        rows(secure_home(mariadb, tls="verify", tls_ca_file=missing))


def test_a_misspelled_tls_value_fails_the_spec_check() -> None:
    with pytest.raises(ValidationError, match=r"tls\n.*'disable', 'require' or 'verify'"):
        MysqlHome(host="h", credentials=MysqlCredentials(username="u"), tls="required")  # type: ignore[arg-type]


def test_urls_carry_the_parameters_connectorx_accepts() -> None:
    creds = MysqlCredentials(username="u", password="p@ss")
    plain = MysqlHome(host="h", database="d", credentials=creds)
    assert plain._url() == "mysql://u:p%40ss@h:3306/d"
    assert plain.model_copy(update={"tls": "require"})._url().endswith("/d?ssl-mode=REQUIRED")
    verify = plain.model_copy(update={"tls": "verify", "tls_ca_file": "/etc/my ca.pem"})
    assert verify._url().endswith("/d?ssl-mode=VERIFY_IDENTITY&ssl-ca=%2Fetc%2Fmy%20ca.pem")


@pytest.fixture(scope="module")
def plain_mariadb() -> Iterator[MariaServer]:
    """A second MariaDB that offers no TLS at all."""
    yield from serve(partial(start_server, tls=False))


def test_a_server_without_tls_fails_at_once_and_is_not_retried(
    plain_mariadb: MariaServer,
) -> None:
    s = plain_mariadb
    h = MysqlHome(
        host=s.host,
        port=s.port,
        database=s.database,
        credentials=MysqlCredentials(username=s.user, password=s.password),
        tls="require",
    )
    req = ReadRequest(entity="e", query="SELECT 1 AS one")
    started = time.monotonic()
    with pytest.raises(HomeError, match=r"the server offers no TLS \(`tls: require`\)") as info:
        list(h.read(req))
    assert time.monotonic() - started < 5  # PyMySQL first: not connectorx's 30 s of retries
    text = str(info.value)
    assert "entity 'e'" in text and "Set `tls: disable`, or enable TLS on the server" in text
    assert not is_transient(info.value) and s.password not in text
    # the same server reads with `tls: disable`
    plain = h.model_copy(update={"tls": "disable"})
    assert [r for b in plain.read(req) for r in b.to_pylist()] == [{"one": 1}]


def test_connectorx_words_for_a_server_without_tls_map_alike() -> None:
    # connectorx meets this only if the server changed after PyMySQL connected
    h = MysqlHome(
        host="h", credentials=MysqlCredentials(username="u", password="pw"), tls="require"
    )
    text = "Client requires secure connection but server does not have this capability"
    err = h._error(0, text, ReadRequest(entity="e", query="SELECT 1"))
    assert "the server offers no TLS" in str(err) and not is_transient(err)


def test_verify_checks_the_host_name_too(mariadb: MariaServer, secure_user: str) -> None:
    # the certificate names 127.0.0.1 only: by the name `localhost` the CA is right, the name not
    h = secure_home(mariadb, tls="verify", tls_ca_file=str(mariadb.ca_file))
    h = h.model_copy(update={"host": "localhost"})
    with pytest.raises(HomeError, match=r"certificate failed verification.*mismatch") as info:
        rows(h)
    assert "make `host` the name the certificate is issued for" in str(info.value)
    assert not is_transient(info.value)
