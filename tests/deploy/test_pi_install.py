"""deploy/pi/install.sh in a throwaway root (`--root DIR`), as far as a machine without systemd
as PID 1 allows: the user is really added (useradd --prefix, into the root's own passwd files),
the virtualenv really built with the edge,mic,tflite extras, the unit really enabled (systemctl
--root); apt-get and starting the service are skipped, and say so. A second run changes nothing,
--uninstall keeps the recordings, --purge removes them too.

The installer runs from a snapshot of the checkout, so edits others make meanwhile cannot make
the second run look like an upgrade.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

SCRIPT = Path("deploy") / "pi" / "install.sh"
UNIT = "etc/systemd/system/soundwarden-edge.service"
ENABLED = "etc/systemd/system/multi-user.target.wants/soundwarden-edge.service"
SNAPSHOT = ("deploy", "edge", "models", "cloud", "pyproject.toml", "constraints.txt", "README.md")


def snapshot_checkout(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__")
    for name in SNAPSHOT:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore, symlinks=True)
        else:
            shutil.copy2(source, dest / name)
    return dest


def seed_root(root: Path) -> None:
    """The account files of a fresh Debian: root, and the `audio` group (gid 29)."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\naudio:x:29:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\naudio:*::\n")
    (etc / "shadow").chmod(0o640)


def install(checkout: Path, *options: str) -> str:
    done = subprocess.run(
        ["bash", str(checkout / SCRIPT), *options],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def changes(output: str) -> list[str]:
    """The lines reporting a change made ("+ CMD")."""
    return [line for line in output.splitlines() if line.startswith("+ ")]


def tree(root: Path) -> dict[str, tuple[int, int, int, int, int]]:
    """Every path's mode, owner, group, size and modification time."""
    found = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        found[str(path.relative_to(root))] = (
            info.st_mode,
            info.st_uid,
            info.st_gid,
            info.st_size,
            info.st_mtime_ns,
        )
    return found


def account(root: Path, file: str, name: str) -> list[str] | None:
    for line in (root / "etc" / file).read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")
    return None


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def checkout(tmp_path: Path) -> Path:
    return snapshot_checkout(tmp_path / "checkout")


@pytest.mark.skipif(os.geteuid() != 0, reason="useradd --prefix and chown need root")
def test_install_is_idempotent_and_uninstall_keeps_the_recordings(
    checkout: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    seed_root(root)
    before = tree(root)
    dry = install(checkout, "--root", str(root), "--dry-run", "--device", "kitchen")
    assert tree(root) == before, "a dry run changed the root"
    assert not changes(dry) and "would: useradd --prefix" in dry
    assert "would: systemctl --root=" in dry and "enable" in dry

    first = install(checkout, "--root", str(root), "--device", "kitchen")
    assert "skip (--root): apt-get install" in first
    assert "skip (--root): systemctl start soundwarden-edge.service" in first

    # The user, in the audio group.
    user = account(root, "passwd", "soundwarden")
    assert user is not None, (root / "etc" / "passwd").read_text()
    uid, gid = int(user[2]), int(user[3])
    assert uid < 1000 and user[5:] == ["/var/lib/soundwarden", "/usr/sbin/nologin"]
    audio = account(root, "group", "audio")
    assert audio is not None and "soundwarden" in audio[3].split(",")

    # The virtualenv: every extra the Pi profile needs, none of the heavy stack.
    python = root / "opt/soundwarden/venv/bin/python"
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u, edge.cli, onnxruntime, paho.mqtt, pyaudio, "
            "ai_edge_litert, systemd.journal; "
            "print([m for m in ('torch', 'librosa', 'ultralytics') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stderr

    # Configuration from the template, readable by the daemon's group only; secrets root-only.
    config = root / "etc/soundwarden/edge.toml"
    assert (mode(config), config.stat().st_gid) == (0o640, gid)
    text = config.read_text()
    assert 'device = "kitchen"' in text and 'trusted_keys = ["/etc/soundwarden/keys"]' in text
    env = root / "etc/soundwarden/edge.env"
    assert (mode(env), env.stat().st_uid) == (0o600, 0)
    assert "SOUNDWARDEN_DEVICE_TOKEN" in env.read_text()
    key = root / "etc/soundwarden/keys/soundwarden-release.pub"
    assert (
        key.read_bytes() == (REPO / "models/pretrained/keys/soundwarden-release.pub").read_bytes()
    )
    data = root / "var/lib/soundwarden"
    assert (mode(data), data.stat().st_uid, data.stat().st_gid) == (0o750, uid, gid)
    assert (root / UNIT).read_bytes() == (
        REPO / "deploy/systemd/soundwarden-edge.service"
    ).read_bytes()
    assert (root / ENABLED).readlink() == Path("/") / UNIT

    # The installed daemon accepts the installed config and verifies the shipped bundle with
    # the installed key (paths moved into the root, as they would be after a chroot).
    check = tmp_path / "check.toml"
    check.write_text(text.replace('"/etc/soundwarden/keys"', f'"{root}/etc/soundwarden/keys"'))
    checked = subprocess.run(
        [str(python.parent / "soundwarden-edge"), "check-config", str(check)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr
    assert "model       cry-detector" in checked.stdout and "signed by" in checked.stdout

    # Idempotent: a second run finds everything in place and touches nothing, the edited
    # configuration included.
    config.write_text(text.replace('device = "kitchen"', 'device = "kitchen-2"'))
    before = tree(root)
    second = install(checkout, "--root", str(root), "--device", "kitchen")
    assert changes(second) == [], second
    assert tree(root) == before
    assert 'device = "kitchen-2"' in config.read_text()

    # An upgrade: a changed checkout is reinstalled, the configuration still kept.
    marker = "# upgraded by the test\n"
    init = checkout / "edge" / "__init__.py"
    init.write_text(init.read_text() + marker)
    upgraded = install(checkout, "--root", str(root))
    assert [line for line in changes(upgraded) if "pip install" in line], upgraded
    installed = root / "opt/soundwarden/venv/lib"
    assert [p for p in installed.glob("python3*/site-packages/edge/__init__.py")
            if p.read_text().endswith(marker)]  # fmt: skip
    assert 'device = "kitchen-2"' in config.read_text()

    # Uninstall: the program, its configuration and the unit go; recordings and user stay.
    clip = data / "clips" / "pending" / "episode.flac"
    clip.parent.mkdir(parents=True)
    clip.write_bytes(b"a recording")
    removed = install(checkout, "--root", str(root), "--uninstall")
    assert changes(removed), removed
    for gone in ("opt/soundwarden", "etc/soundwarden", UNIT, ENABLED):
        assert not (root / gone).exists() and not (root / gone).is_symlink(), gone
    assert clip.read_bytes() == b"a recording"
    assert account(root, "passwd", "soundwarden") is not None
    assert changes(install(checkout, "--root", str(root), "--uninstall")) == []

    # Purge: the data and the user too.
    install(checkout, "--root", str(root), "--uninstall", "--purge")
    assert not data.exists()
    assert account(root, "passwd", "soundwarden") is None
    assert account(root, "group", "soundwarden") is None
    audio = account(root, "group", "audio")
    assert audio is not None and "soundwarden" not in audio[3].split(",")


def test_destdir_works_like_root_and_a_dry_run_on_this_machine_changes_nothing(
    checkout: Path, tmp_path: Path
) -> None:
    root = tmp_path / "staging"
    root.mkdir()
    out = subprocess.run(
        ["bash", str(checkout / SCRIPT), "--dry-run"],
        env={**os.environ, "DESTDIR": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert f"install into {root}" in out.stdout and list(root.iterdir()) == []
    # No passwd in this root: the user step says it cannot add one.
    assert "skip (--root): no" in out.stdout

    if Path("/etc/soundwarden").exists() or Path("/opt/soundwarden").exists():
        pytest.skip("soundwarden is installed on this machine: the live dry run is not clean")
    live = install(checkout, "--dry-run")
    assert changes(live) == [] and "would: " in live
    assert not Path("/etc/soundwarden").exists() and not Path("/opt/soundwarden").exists()


def test_bad_options_and_device_ids_are_refused(checkout: Path, tmp_path: Path) -> None:
    for options, message in [
        (["--bogus"], "unknown option --bogus"),
        (["--purge"], "--purge goes with --uninstall"),
        (["--dry-run", "--root", str(tmp_path), "--device", "Kitchen"], "device id 'Kitchen'"),
    ]:
        done = subprocess.run(
            ["bash", str(checkout / SCRIPT), *options], capture_output=True, text=True
        )
        assert done.returncode != 0 and message in done.stderr, (options, done.stderr)


def test_the_installer_passes_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (make system-packages installs it)")
    done = subprocess.run(["shellcheck", str(REPO / SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
