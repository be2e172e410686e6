"""MysqlHome's `tls` against the real MariaDB, which offers TLS with a throwaway CA."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from blocks import MysqlCredentials, MysqlHome
from blocks.base import ReadRequest
from hygge_core.errors import HomeError, is_transient
from tests.mariadb_server import MariaServer

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


def test_a_server_without_tls_is_named_and_not_retried() -> None:
    # unit level (no second server): PyMySQL's and connectorx's words for a server without TLS
    h = MysqlHome(
        host="h", credentials=MysqlCredentials(username="u", password="pw"), tls="require"
    )
    req = ReadRequest(entity="e", query="SELECT 1")
    for code, text in [
        (2026, "SSL is required but the server doesn't support it"),
        (0, "Client requires secure connection but server does not have this capability"),
    ]:
        err = h._error(code, text, req)
        assert "the server offers no TLS" in str(err) and "Set `tls: disable`" in str(err)
        assert "entity 'e'" in str(err) and not is_transient(err)


def test_verify_checks_the_host_name_too(mariadb: MariaServer, secure_user: str) -> None:
    # the certificate names 127.0.0.1 only: by the name `localhost` the CA is right, the name not
    h = secure_home(mariadb, tls="verify", tls_ca_file=str(mariadb.ca_file))
    h = h.model_copy(update={"host": "localhost"})
    with pytest.raises(HomeError, match=r"certificate failed verification.*mismatch") as info:
        rows(h)
    assert "make `host` the name the certificate is issued for" in str(info.value)
    assert not is_transient(info.value)
