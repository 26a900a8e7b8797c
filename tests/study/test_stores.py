"""Where a study's records live (``study.stores``): URLs checked, passwords never shown, clear errors
for stores that cannot be reached."""

import pytest

from adprune.cli import main
from adprune_core.errors import ConfigError
from study.cli import without_store_flags
from study.stores import (
    STORAGE_ENV,
    TRACKING_ENV,
    Stores,
    check_tracking_reachable,
    check_url,
    location,
    redact,
    scrub,
    sqlite_path,
)
from study.trials import optuna_storage
from tests.postgres import free_port

SECRET = "hunter2-s3cret"


@pytest.mark.parametrize(("url", "shown"), [
    (f"postgresql://ada:{SECRET}@db:5432/optuna", "postgresql://ada:***@db:5432/optuna"),
    (f"postgresql+psycopg2://ada:{SECRET}@db/optuna?sslmode=require",
     "postgresql+psycopg2://ada:***@db/optuna?sslmode=require"),
    (f"http://ada:{SECRET}@mlflow:5001", "http://ada:***@mlflow:5001"),
    (f"postgresql://db/optuna?user=ada&password={SECRET}", "postgresql://db/optuna?user=ada&password=***"),
    ("postgresql://ada@db:5432/optuna", "postgresql://ada@db:5432/optuna"),
    ("sqlite:////tmp/x/optuna.db", "sqlite:////tmp/x/optuna.db"),
])
def test_redact_hides_passwords_and_keeps_the_rest(url, shown):
    assert redact(url) == shown
    assert SECRET not in redact(url)


def test_scrub_removes_a_urls_password_from_any_text():
    url = f"postgresql://ada:{SECRET}@db/optuna"
    said = f'connection to "db" failed for password {SECRET}'
    assert scrub(said, url) == 'connection to "db" failed for password ***'


@pytest.mark.parametrize(("url", "allowed", "message"), [
    ("optuna.db", ("sqlite", "postgresql"), "is not a URL"),
    (f"redis://ada:{SECRET}@cache:6379/0", ("sqlite", "postgresql"), "uses 'redis'"),
    ("sqlite:///:memory:", ("sqlite",), "is not a SQLite file"),
    ("sqlite://", ("sqlite",), "is not a SQLite file"),
    (f"postgresql://ada:{SECRET}@db:5432", ("postgresql",), "names no database"),
    ("postgresql:///optuna", ("postgresql",), "names no database host"),
    ("http://", ("http",), "names no host"),
])
def test_bad_store_urls_are_one_line_errors_without_the_password(url, allowed, message):
    with pytest.raises(ConfigError, match=message) as info:
        check_url(url, "the Optuna storage", allowed, "--storage", "postgresql://USER@HOST:5432/DB")
    text = str(info.value)
    assert "\n" not in text and SECRET not in text and text.startswith("--storage: ")


def test_stores_resolve_flags_then_environment_then_the_runtime_folder(tmp_path):
    embedded = Stores.resolve(tmp_path, env={})
    assert not embedded.tracking_server
    assert sqlite_path(embedded.optuna_url) == (tmp_path / "optuna.db").resolve()
    assert sqlite_path(embedded.tracking_uri) == (tmp_path / "mlflow.db").resolve()
    assert embedded.artifact_root == (tmp_path / "mlartifacts").resolve()

    env = {STORAGE_ENV: f"postgresql://ada:{SECRET}@db:5432/optuna", TRACKING_ENV: "http://mlflow:5001"}
    remote = Stores.resolve(tmp_path, env=env)
    assert remote.optuna_url == env[STORAGE_ENV] and remote.tracking_server and remote.artifact_root is None
    assert SECRET not in remote.describe()
    assert remote.describe() == "optuna postgresql://ada:***@db:5432/optuna, mlflow http://mlflow:5001"
    assert remote.child_env() == env  # workers get the URLs through the environment

    shared = Stores.resolve(tmp_path, tracking="sqlite:////nfs/mlflow.db", env={})
    assert shared.tracking_uri == "sqlite:////nfs/mlflow.db?timeout=60"  # waits for locks like the default

    flagged = Stores.resolve(tmp_path, storage="sqlite:////tmp/elsewhere.db", env=env)
    assert flagged.optuna_url == "sqlite:////tmp/elsewhere.db" and flagged.tracking_uri == env[TRACKING_ENV]
    assert location(flagged.optuna_url) == "/tmp/elsewhere.db"


def test_worker_command_lines_carry_no_store_urls():
    argv = ["study", "--storage", f"postgresql://a:{SECRET}@h/d", "--trials", "3", f"--tracking=http://a:{SECRET}@m",
            "--name", "x"]
    assert without_store_flags(argv) == ["study", "--trials", "3", "--name", "x"]


def test_unreachable_postgresql_is_a_one_line_error_without_the_password(tmp_path):
    url = f"postgresql://ada:{SECRET}@127.0.0.1:{free_port()}/optuna"  # nothing listens there
    with pytest.raises(ConfigError) as info:
        optuna_storage(Stores.resolve(tmp_path, storage=url, env={}))
    text = str(info.value)
    assert text.startswith("--storage ($ADPRUNE_STORAGE): cannot open the Optuna storage at postgresql://ada:***@127.0.0.1:")
    assert "\n" not in text and SECRET not in text and "check that the server runs" in text


def test_unreachable_tracking_server_is_a_one_line_error(tmp_path):
    stores = Stores.resolve(tmp_path, tracking=f"http://ada:{SECRET}@127.0.0.1:{free_port()}", env={})
    with pytest.raises(ConfigError, match=r"cannot reach the MLflow tracking server at http://ada:\*\*\*@") as info:
        check_tracking_reachable(stores, timeout_s=5)
    assert "\n" not in str(info.value) and SECRET not in str(info.value)


@pytest.mark.parametrize("flags", [
    ["--storage", f"mongodb://ada:{SECRET}@127.0.0.1/optuna"],
    ["--storage", f"postgresql://ada:{SECRET}@127.0.0.1:{free_port()}/optuna"],
    ["--tracking", f"http://ada:{SECRET}@127.0.0.1:{free_port()}"],
])
def test_study_command_with_a_bad_store_exits_2_in_one_line(tmp_path, capsys, flags):
    code = main(["study", "--runs-dir", str(tmp_path / "runs"), "--trials", "1", "--no-progress", *flags])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("adprune: error: ")
    assert SECRET not in out + err
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_worker_command_for_an_unknown_study_names_the_known_ones(tmp_path, capsys):
    import optuna

    optuna.create_study(study_name="real", storage=Stores.resolve(tmp_path, env={}).optuna_url)
    assert main(["worker", "--study", "nope", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no study 'nope' in optuna " in err and "known: real" in err and len(err.strip().splitlines()) == 1
