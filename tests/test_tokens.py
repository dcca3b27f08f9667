"""API token checks and the token files a first start creates."""
import logging
import os
import stat
import threading

import pytest

from fleet import errors
from fleet.config import ManagerConfig
from fleet.manager import tokens
from fleet.manager.tokens import ApiAuth, create_token_files, resolve_tokens


def test_named_tokens_are_all_valid_and_return_their_name():
    """Several tokens are valid at once; a check returns the matching token's name."""
    auth = ApiAuth([("default", "aaa"), ("ops", "bbb"), ("empty", "")], cluster_token="ccc")
    assert auth.check("Bearer aaa") == ("default", "admin")
    assert auth.check("bearer   bbb ").name == "ops"
    assert len(auth) == 2


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic aaa", "aaa",
                                    "Bearer aa", "Bearer aaaa", "Bearer ccc", "Bearer é"])
def test_bad_headers_are_unauthenticated(header):
    """Missing, malformed, wrong, or cluster tokens never pass."""
    auth = ApiAuth([("default", "aaa")], cluster_token="ccc")
    with pytest.raises(errors.Unauthenticated):
        auth.check(header)


def test_api_token_equal_to_cluster_token_is_refused():
    """The cluster token can never open the HTTP API."""
    with pytest.raises(ValueError):
        ApiAuth([("default", "same")], cluster_token="same")


def test_no_tokens_means_nothing_passes():
    """An auth without tokens refuses everything (never open by accident)."""
    with pytest.raises(errors.Unauthenticated):
        ApiAuth([]).check("Bearer ")


def test_compare_uses_hmac_compare_digest(monkeypatch):
    """Every configured token is compared with hmac.compare_digest, no early exit."""
    compared = []
    real = tokens.hmac.compare_digest

    def spy(a, b):
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)
    ApiAuth([("a", "one"), ("b", "two"), ("c", "three")]).check("Bearer one")
    assert compared == [b"one", b"two", b"three"]


def first_start(db_path, api_token="", cluster_token=""):
    """What a manager's start does: resolve the tokens, then write the new files."""
    given = (("default", api_token),) if api_token else ()
    found = resolve_tokens(ManagerConfig(db=f"sqlite:///{db_path}", api_tokens=given,
                                         cluster_token=cluster_token))
    create_token_files(found)
    return found.api[0][1], found.cluster, list(found.paths)


def test_first_start_creates_private_token_files(tmp_path, caplog):
    """Missing tokens are created beside the database, mode 0600; only paths are logged."""
    caplog.set_level(logging.DEBUG)
    db_path = str(tmp_path / "data" / "fleet.db")
    os.makedirs(tmp_path / "data")
    api, cluster, paths = first_start(db_path)
    assert paths == [str(tmp_path / "data" / "fleet-api.token"),
                     str(tmp_path / "data" / "fleet-cluster.token")]
    assert api != cluster and len(api) >= 40 and len(cluster) >= 40
    for path, token in zip(paths, (api, cluster)):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert open(path).read().strip() == token
    assert api not in caplog.text and cluster not in caplog.text
    assert paths[0] in caplog.text
    assert sorted(os.listdir(tmp_path / "data")) == ["fleet-api.token", "fleet-cluster.token"]


def test_resolving_writes_nothing(tmp_path):
    """Tokens a first start needs are made in memory; no file exists until create_token_files."""
    found = resolve_tokens(ManagerConfig(db=f"sqlite:///{tmp_path}/fleet.db"))
    assert len(found.to_create) == 2 and os.listdir(tmp_path) == []
    create_token_files(found)
    assert sorted(os.listdir(tmp_path)) == ["fleet-api.token", "fleet-cluster.token"]


def test_later_starts_reuse_the_files(tmp_path):
    """A second start reads the same tokens back."""
    db_path = str(tmp_path / "fleet.db")
    first = first_start(db_path)
    assert first_start(db_path) == first


def test_configured_tokens_are_kept(tmp_path):
    """A configured token is used as is and gets no file; the other one does."""
    api, cluster, paths = first_start(str(tmp_path / "fleet.db"), api_token="mine")
    assert api == "mine" and paths == [str(tmp_path / "fleet-cluster.token")]
    assert not (tmp_path / "fleet-api.token").exists()


def test_never_world_readable_even_with_a_lax_umask(tmp_path):
    """The file is created 0600 whatever the umask."""
    old = os.umask(0)
    try:
        _, _, paths = first_start(str(tmp_path / "fleet.db"))
    finally:
        os.umask(old)
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in paths)


def test_concurrent_first_starts_never_serve_different_tokens(tmp_path):
    """Of managers starting at once, each ends up with the files' tokens or fails asking
    to start again; one set of files is written."""
    results, failures = [], []
    barrier = threading.Barrier(8)

    def start():
        barrier.wait()
        try:
            results.append(first_start(str(tmp_path / "fleet.db"))[:2])
        except errors.Unavailable as exc:
            failures.append(exc.message)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) + len(failures) == 8 and results
    on_disk = tuple(open(tmp_path / name).read().strip()
                    for name in ("fleet-api.token", "fleet-cluster.token"))
    assert set(results) == {on_disk}
    assert all("start again" in message for message in failures)
    assert sorted(os.listdir(tmp_path)) == ["fleet-api.token", "fleet-cluster.token"]


def test_empty_token_file_is_a_config_error(tmp_path):
    """An empty token file is reported naming the key it stands for, not silently replaced."""
    (tmp_path / "fleet-api.token").write_text("\n")
    with pytest.raises(errors.ConfigError, match=r"\[manager\] api_token: token file .* empty"):
        first_start(str(tmp_path / "fleet.db"))


def test_equal_tokens_are_a_config_error(tmp_path):
    """A cluster token file equal to the API token is refused."""
    (tmp_path / "fleet-cluster.token").write_text("same\n")
    with pytest.raises(errors.ConfigError):
        first_start(str(tmp_path / "fleet.db"), api_token="same")


def test_lax_permissions_are_warned_about(tmp_path, caplog):
    """An existing token file readable by others is used, with a warning."""
    path = tmp_path / "fleet-api.token"
    path.write_text("s3cr3t-value\n")
    os.chmod(path, 0o644)
    api, _, _ = first_start(str(tmp_path / "fleet.db"))
    assert api == "s3cr3t-value" and "readable by others" in caplog.text
    assert "s3cr3t-value" not in caplog.text


def test_resolve_tokens_for_a_manager_config(tmp_path):
    """SQLite fills in missing tokens from files; PostgreSQL needs both configured."""
    db = f"sqlite:///{tmp_path}/fleet.db"
    found = tokens.resolve_tokens(ManagerConfig(db=db))
    tokens.create_token_files(found)
    assert found.api[0][0] == "default" and len(found.paths) == 2
    again = tokens.resolve_tokens(ManagerConfig(db=db))
    assert (again.api, again.cluster, again.paths, again.to_create) == \
        (found.api, found.cluster, found.paths, ())
    given = (("ops", "o-token"),)
    assert tokens.resolve_tokens(ManagerConfig(db=db, api_tokens=given, cluster_token="c")) == \
        tokens.ManagerTokens(given, "c")
    assert tokens.resolve_tokens(ManagerConfig(db=db, api_tokens=given)).cluster == found.cluster
    with pytest.raises(errors.ConfigError):
        tokens.resolve_tokens(ManagerConfig(db="postgresql://h/fleet", cluster_token="c"))
