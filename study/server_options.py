"""What ``adprune mlflow-server`` (``make mlflow-server``) lets in: Host names, browser origins, and logins.

- **Host header.** MLflow >= 3.5 answers HTTP 403 to a request whose ``Host`` header is not an allowed
  host (a defence against DNS rebinding); by default only ``localhost``, loopback and private IP addresses
  are, so ``TRACKING=http://mlflow-host:5001`` from another machine is refused. The server is started with
  ``--allowed-hosts``: MLflow's defaults, this machine's own names (``socket.gethostname()``,
  ``socket.getfqdn()``) and the names the user adds (``--allowed-hosts``, ``make mlflow-server
  ALLOWED_HOSTS=name,...``), each with any port. ``*`` lets every name in (not advised).
- **CORS.** The UI, opened at ``http://<name>:<port>`` in a browser, sends that origin with every change it
  makes; MLflow refuses changes from origins it does not know. The origins of the allowed names (at the
  server's port) are passed as ``--cors-allowed-origins``, plus the user's (``--cors-origins``, ``make
  mlflow-server CORS_ORIGINS=https://mlflow.example.org``).
- **Logins.** ``--auth`` (``make mlflow-server AUTH=1``) runs MLflow's basic-auth app (``--app-name
  basic-auth``): every request needs a user and password. Its admin account is created on the first start
  with the password in ``$MLFLOW_AUTH_ADMIN_PASSWORD``, which must be set: the default password that older
  MLflow versions shipped (``password1234``, public) is refused, as is one shorter than 12 characters.
  Users and permissions live in ``--auth-db`` (default ``<runs>/mlflow-auth.db``); the config file
  MLflow reads is written to ``<runs>/mlflow-auth.ini`` (no password in it). Clients log in with
  ``$MLFLOW_TRACKING_USERNAME`` and ``$MLFLOW_TRACKING_PASSWORD``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path

from adprune_core.errors import ConfigError
from adprune_core.files import atomic_write

ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"  # MLflow's own variable for the admin's first password
LEGACY_DEFAULT_PASSWORD = "password1234"  # what MLflow's basic_auth.ini shipped before 3.x: public
MIN_PASSWORD_CHARS = 12  # MLflow's own rule
AUTH_CONFIG_FILE = "mlflow-auth.ini"
LOOPBACK = ("localhost", "127.0.0.1", "[::1]", "0.0.0.0")
# MLflow's defaults (mlflow.server.security_utils.get_default_allowed_hosts), which --allowed-hosts replaces
PRIVATE_NETWORKS = ("192.168.*", "10.*", *(f"172.{i}.*" for i in range(16, 32)), "fc00:*", "fd00:*")


def machine_names() -> list[str]:
    """This machine's host name and fully qualified name (what other machines are likely to call it)."""
    return list(dict.fromkeys(n for n in (socket.gethostname(), socket.getfqdn()) if n))


def split_names(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def allowed_hosts(bind_host: str, names: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    """The ``--allowed-hosts`` patterns (pure): loopback and private addresses as MLflow allows them by
    default, the bound address unless it is a wildcard, ``names`` and ``extra``, each bare and with any port
    (``name:*``: a Host header carries the port). ``*`` in ``extra`` allows every host."""
    extra = list(extra)
    if "*" in extra:
        return ["*"]
    out: list[str] = []
    bound = [] if bind_host in ("0.0.0.0", "::", "") else [_bracketed(bind_host)]
    for name in (*LOOPBACK, *bound, *names, *extra):
        out += [name, name if name.endswith(":*") else name.replace("[", "[[]", 1) + ":*"]  # fnmatch: [[] = [
    return list(dict.fromkeys(out + list(PRIVATE_NETWORKS)))


def cors_origins(port: int, names: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    """The ``--cors-allowed-origins`` (pure): ``http://<name>:<port>`` for each of ``names`` (the UI opened
    at one of them), plus ``extra`` (e.g. ``https://mlflow.example.org`` behind a proxy)."""
    return list(dict.fromkeys([*(f"http://{_bracketed(n)}:{port}" for n in names if "*" not in n), *extra]))


def check_admin_password(env: Mapping[str, str]) -> None:
    """The basic-auth app's admin password (``$MLFLOW_AUTH_ADMIN_PASSWORD``) must be set, be no public
    default and have at least 12 characters; else a one-line ``ConfigError`` (the value is never shown)."""
    password = env.get(ADMIN_PASSWORD_ENV) or ""
    if not password:
        raise ConfigError(f"--auth: ${ADMIN_PASSWORD_ENV} is not set; the basic-auth app creates its admin user "
                          f"with that password on the first start: export {ADMIN_PASSWORD_ENV}=<a new password of "
                          f"{MIN_PASSWORD_CHARS}+ characters> (MLflow's old default is public and refused)")
    if password == LEGACY_DEFAULT_PASSWORD:
        raise ConfigError(f"--auth: ${ADMIN_PASSWORD_ENV} is MLflow's old default admin password, which is public; "
                          f"change it: set {ADMIN_PASSWORD_ENV} to a new password of {MIN_PASSWORD_CHARS}+ characters")
    if len(password) < MIN_PASSWORD_CHARS:
        raise ConfigError(f"--auth: ${ADMIN_PASSWORD_ENV} has {len(password)} characters; MLflow needs at least "
                          f"{MIN_PASSWORD_CHARS}: choose a longer password")


def write_auth_config(runs_dir: Path, database_uri: str, default_permission: str = "READ") -> Path:
    """``<runs>/mlflow-auth.ini`` for MLflow's basic-auth app (``$MLFLOW_AUTH_CONFIG_PATH``): where its users
    and permissions live, the admin's name, what other users may do by default. No password is written."""
    path = runs_dir / AUTH_CONFIG_FILE
    text = ("[mlflow]\n"
            f"default_permission = {default_permission}\n"
            f"database_uri = {database_uri.replace('%', '%%')}\n"
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    atomic_write(path, lambda tmp: tmp.write_text(text))
    os.chmod(path, 0o600)
    return path


def _bracketed(host: str) -> str:
    """An IPv6 address as a Host header writes it (``[::1]``); other names unchanged."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
