"""A private FreeRADIUS configuration with rlm_cap, for trying it out, tests and benchmarks.

``render()`` copies the system's /etc/freeradius/3.0 into a directory of its
own, drops what a loopback try-out must not have (the freerad user/group, the
proxy socket on 0.0.0.0, EAP without certificates, the stock sites) and adds
the project's ``freeradius-conf/`` with the given ports, secret, database and
mode. ``command()`` is the FreeRADIUS command line that runs it in the
foreground, multi-threaded (``-f``, never ``-X`` which is single-threaded).
"""

from __future__ import annotations

import os
import re
import shutil
import sysconfig
from dataclasses import dataclass
from pathlib import Path

SYSTEM_RADDB = Path("/etc/freeradius/3.0")
PROJECT = Path(__file__).resolve().parent.parent
CONF = PROJECT / "freeradius-conf"


@dataclass(frozen=True)
class Options:
    directory: Path
    db_url: str
    auth_port: int = 1812
    acct_port: int = 1813
    address: str = "127.0.0.1"
    secret: str = "testing123"
    mode: str = "journal"
    journal_dir: Path | None = None
    node: str = "try-out"
    extra_config: tuple[tuple[str, str], ...] = ()


def python_path() -> str:
    """The project and this interpreter's site-packages: what rlm_python3 must import from."""
    paths = dict.fromkeys([str(PROJECT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    return ":".join(paths)


def _quote(value: str) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def set_option(text: str, key: str, value: str, quote: bool = True) -> str:
    """Replace the first ``key = ...`` line (commented out or not) of a FreeRADIUS config."""
    pattern = re.compile(rf"^(\s*)#?\s*{re.escape(key)}\s*=.*$", re.MULTILINE)
    if not pattern.search(text):
        raise ValueError(f"no option {key!r} to set")
    rendered = _quote(value) if quote else str(value)
    return pattern.sub(lambda m: f"{m.group(1)}{key} = {rendered}", text, count=1)


def _write_private(path: Path, text: str) -> None:
    """Write a file that holds a secret: created 0600, never readable by others, not even for a moment."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)  # in case the umask took more away than asked


def render(options: Options) -> Path:
    """Write the configuration into ``options.directory`` (replaced if present)."""
    target = Path(options.directory)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(SYSTEM_RADDB, target, symlinks=True)
    # The copy takes the system's modes (0755 on Debian); it is going to hold the database
    # password, the NAS secret, the journal and the quarantine file: this user only.
    os.chmod(target, 0o700)
    for sub in ("log", "radacct", "run"):
        (target / sub).mkdir(mode=0o700)

    radiusd = (target / "radiusd.conf").read_text()
    radiusd = re.sub(r"^(\s*)(user|group)\s*=.*$", r"\1#\2 = freerad", radiusd, flags=re.MULTILINE)
    radiusd = re.sub(r"^(\s*proxy_requests\s*=\s*)yes", r"\1no", radiusd, flags=re.MULTILINE)
    for key, sub in (("logdir", "log"), ("radacctdir", "radacct"), ("run_dir", "run")):
        radiusd = set_option(radiusd, key, str(target / sub), quote=False)
    (target / "radiusd.conf").write_text(radiusd)

    (target / "mods-enabled" / "eap").unlink(missing_ok=True)
    for site in (target / "sites-enabled").iterdir():
        site.unlink()
    _write_private(target / "clients.conf",  # the NAS's shared secret
                   f"client rlm_cap_nas {{\n\tipaddr = {options.address}\n\tsecret = {_quote(options.secret)}\n}}\n")

    module = (CONF / "mods-available" / "rlm_cap").read_text()
    module = set_option(module, "python_path", python_path())
    journal_dir = options.journal_dir or target / "journal"
    for key, value in (("db_url", options.db_url), ("mode", options.mode), ("journal_dir", str(journal_dir)),
                       ("node", options.node), *options.extra_config):
        module = set_option(module, key, value)
    _write_private(target / "mods-enabled" / "rlm_cap", module)  # it holds the database password

    site = (CONF / "sites-available" / "rlm_cap").read_text()
    ports = iter([options.auth_port, options.acct_port])
    site = re.sub(r"^(\s*port\s*=\s*)\d+", lambda m: f"{m.group(1)}{next(ports)}", site, flags=re.MULTILINE)
    site = re.sub(r"^(\s*ipaddr\s*=\s*)127\.0\.0\.1", rf"\g<1>{options.address}", site, flags=re.MULTILINE)
    (target / "sites-enabled" / "rlm_cap").write_text(site)
    return target


def command(directory: Path, debug: bool = False) -> list[str]:
    binary = shutil.which("freeradius") or shutil.which("radiusd") or "/usr/sbin/freeradius"
    return [binary, "-f", "-l", "stdout", "-d", str(directory)] + (["-xx"] if debug else [])


def environment(base: dict[str, str]) -> dict[str, str]:
    """FreeRADIUS's environment: our packages first, before Debian's dist-packages."""
    env = dict(base)
    env["PYTHONPATH"] = python_path() + (":" + base["PYTHONPATH"] if base.get("PYTHONPATH") else "")
    return env
