"""``stabmon serve|token|db``: the local token on first start, the bind check, and the CLI."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from monitor.server import BindRefused, check_bind, ensure_local_token, is_loopback, prepare
from monitor.settings import Settings
from monitor.store import Store, migrate


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:  # noqa: ANN001
    return subprocess.run(
        [sys.executable, "-m", "stabmon_cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_local_token_is_created_once_with_private_file(tmp_path):
    settings = Settings(db=f"sqlite:///{tmp_path / 's.db'}")
    store, info = prepare(settings)
    try:
        assert info.token is not None and info.token_file == tmp_path / "s.db.token"
        assert stat.S_IMODE(os.stat(info.token_file).st_mode) == 0o600
        assert store.resolve_token(info.token).name == "default"
        again = ensure_local_token(store, settings)
        assert again == (info.token, info.token_file)  # a restart reuses it
        store.revoke_token(info.token)
        renewed = ensure_local_token(store, settings)
        assert renewed[0] != info.token and info.token_file.read_text().strip() == renewed[0]
    finally:
        store.dispose()


def test_non_loopback_bind_needs_a_token(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    with pytest.raises(BindRefused, match="no API token"):
        prepare(Settings(db=url, host="0.0.0.0"))
    store = Store(url)
    try:
        store.create_token("p")
        check_bind(store, "0.0.0.0")  # now allowed
    finally:
        store.dispose()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")


@pytest.mark.integration
def test_token_cli_create_list_revoke(tmp_path):
    db = f"sqlite:///{tmp_path / 'c.db'}"
    p = run_cli("token", "create", "--project", "proj", "--label", "ci", "--db", db, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    token = p.stdout.strip().splitlines()[-1]
    assert token.startswith("stm_") and len(token) > 40
    store = Store(db)
    try:
        assert store.resolve_token(token).name == "proj"
        listed = run_cli("token", "list", "--db", db, cwd=tmp_path)
        assert "proj" in listed.stdout and token[:12] in listed.stdout and token not in listed.stdout
        assert run_cli("token", "revoke", token[:12], "--db", db, cwd=tmp_path).returncode == 0
        assert store.resolve_token(token) is None
        missing = run_cli("token", "revoke", "stm_nothing", "--db", db, cwd=tmp_path)
        assert missing.returncode == 1 and "no token" in missing.stderr
    finally:
        store.dispose()


@pytest.mark.integration
def test_db_cli_and_serve_refusal(tmp_path):
    db = f"sqlite:///{tmp_path / 'd.db'}"
    up = run_cli("db", "upgrade", "--db", db, cwd=tmp_path)
    assert up.returncode == 0 and f"revision {migrate.head_revision()}" in up.stdout
    assert run_cli("db", "check", "--db", db, cwd=tmp_path).returncode == 0
    refused = run_cli("serve", "--db", db, "--host", "0.0.0.0", "--port", "1", cwd=tmp_path)
    assert refused.returncode == 2 and "refusing to listen on 0.0.0.0" in refused.stderr
