"""contrib/systemd: both units pass `systemd-analyze verify` without a warning, the
daemon's keeps agents across restarts, and the sample configs load with fleet's
own config loader. systemd-analyze is required (Debian's systemd package): a
machine without it fails these tests rather than skipping them."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleet import config as configuration

CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "systemd"
UNITS = ("fleet-manager.service", "fleet-daemon.service")
PYTHON = "/usr/bin/python3"


def verify(unit_dir, names=UNITS):
    """(exit status, output) of systemd-analyze verify on the units in unit_dir."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze not found: install Debian's systemd package"
    result = subprocess.run([analyze, "verify", *(str(unit_dir / n) for n in names)],
                            capture_output=True, text=True, timeout=60, cwd=unit_dir)
    return result.returncode, (result.stdout + result.stderr).strip()


def copy_units(tmp_path, change=lambda text: text):
    """The units in tmp_path, run by this interpreter (verify wants ExecStart's binary
    to exist), with `change` applied to their text."""
    for name in UNITS:
        text = (CONTRIB / name).read_text().replace(PYTHON, sys.executable)
        (tmp_path / name).write_text(change(text))
    return tmp_path


def service_section(name):
    """{key: value} of a unit's [Service] section (our units repeat no key)."""
    section, found = None, {}
    for line in (CONTRIB / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key not in found, f"{name}: {key} set twice"
            found[key] = value
    return found


def load_sample(tmp_path, role):
    """contrib/systemd/<role>.toml loaded by fleet's loader, its /etc/fleet token files
    replaced by files in tmp_path (mode 0600)."""
    etc = tmp_path / "etc-fleet"
    etc.mkdir(exist_ok=True)
    for name, token in (("api.token", "api-token-0123456789"),
                        ("cluster.token", "cluster-token-9876543210")):
        (etc / name).write_text(token + "\n")
        os.chmod(etc / name, 0o600)
    path = tmp_path / f"{role}.toml"
    path.write_text((CONTRIB / f"{role}.toml").read_text().replace("/etc/fleet/", f"{etc}/"))
    return configuration.load(role, str(path), environ={})


def test_both_units_pass_systemd_analyze_verify(tmp_path):
    """systemd-analyze verify accepts both units with no error and no warning."""
    status, output = verify(copy_units(tmp_path))
    assert (status, output) == (0, "")


@pytest.mark.parametrize("good, bad, named", [
    ("KillMode=process", "KillMode=procss", "procss"),
    ("Restart=on-failure", "Restart=sometimes", "sometimes"),
    ("NoNewPrivileges=yes", "NoNewPrivilege=yes", "NoNewPrivilege"),
])
def test_a_mistake_in_a_unit_is_caught(tmp_path, good, bad, named):
    """verify only warns (exit 0) about a bad value or an unknown key; the check, which
    wants no output at all, catches it."""
    status, output = verify(copy_units(tmp_path, lambda text: text.replace(good, bad)))
    assert named in output, (status, output)


def test_the_daemon_unit_keeps_agents_for_the_next_daemon(tmp_path):
    """fleet-daemon.service signals the daemon alone (KillMode=process), waits longer than
    the sample's largest stop_timeout + 5 s, and its sample config leaves agents running."""
    unit = service_section("fleet-daemon.service")
    config = load_sample(tmp_path, "daemon")
    assert unit["KillMode"] == "process"
    assert config.daemon.stop_agents_on_exit is False
    largest = max(agent.stop_timeout for agent in config.agents)
    assert float(unit["TimeoutStopSec"]) > largest + 5


@pytest.mark.parametrize("role", ["manager", "daemon"])
def test_units_run_as_fleet_with_their_state_directory(tmp_path, role):
    """Each unit runs the pyz as the dedicated user, restarts on failure but not on a
    config error (exit 2), and its config keeps state in the unit's StateDirectory."""
    unit = service_section(f"fleet-{role}.service")
    config = load_sample(tmp_path, role)
    assert unit["User"] == unit["Group"] == "fleet"
    assert unit["ExecStart"].split()[:4] == [PYTHON, "/opt/fleet/fleet.pyz", "--role", role]
    assert (unit["Restart"], unit["RestartPreventExitStatus"]) == ("on-failure", "2")
    assert unit["NoNewPrivileges"] == "yes"
    state = f"/var/lib/{unit['StateDirectory']}"
    where = config.manager.db if role == "manager" else config.daemon.state_dir
    assert where.removeprefix("sqlite:///").startswith(state), (where, state)


def test_the_sample_configs_load_without_problems(tmp_path):
    """Both sample configs load with fleet's config loader: tokens from their files."""
    manager = load_sample(tmp_path, "manager").manager
    daemon = load_sample(tmp_path, "daemon").daemon
    assert {t.name: t.token for t in manager.api_tokens}["default"] == "api-token-0123456789"
    assert manager.cluster_token == daemon.cluster_token == "cluster-token-9876543210"
