"""Build fleet.pyz: one executable file with fleet's sources and bundled wheels.

    python build_zipapp.py [-o PATH] [--python X.Y ...] [--platform TAG ...] [--no-host]
                           [--with-postgres]

By default the pyz carries wheels for the building interpreter and platform.
``--python``/``--platform`` add targets (every combination of the two; a missing
one defaults to the host's). Wheels are gathered with ``pip download``, whose
normal cache makes rebuilds fast. Each target's wheels live in
``wheels/<key>/`` (abi3 file names carry no architecture, so targets are kept
apart); pure-Python wheels are stored once in ``wheels/any/``. The bootstrap
(fleet_bootstrap.py, stored as ``__main__.py``) gets the build manifest
embedded, and a copy is kept in ``fleet_build.json``.

``--with-postgres`` adds the PostgreSQL driver (requirements-postgres.txt) to
every target; without it the pyz runs SQLite only, and a postgresql:// database
is a config error naming the missing driver.
"""

import argparse
import hashlib
import itertools
import json
import os
import pprint
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass

import fleet_bootstrap

HERE = os.path.dirname(os.path.abspath(__file__))
POSTGRES_REQUIREMENTS = os.path.join(HERE, "requirements-postgres.txt")
SHEBANG = b"#!/usr/bin/env python3\n"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so equal inputs give an equal file
LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
SYS_PLATFORM = {"manylinux": ("linux", "Linux"), "musllinux": ("linux", "Linux"),
                "macosx": ("darwin", "Darwin")}


@dataclass(frozen=True)
class Target:
    """One (Python, platform) pair the pyz bundles wheels for."""

    key: str  # directory and lookup name, e.g. cp311-manylinux_x86_64
    python: str  # "3.11"
    family: str  # manylinux, musllinux or macosx
    arch: str  # x86_64, aarch64, arm64, ...
    pip_platforms: tuple  # --platform values; empty: the host, pip's own tags


def parse_platform(tag):
    """Split a wheel platform tag into (family, arch, version tuple)."""
    legacy = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014)_(\w+)", tag)
    if legacy:
        return "manylinux", legacy.group(2), LEGACY_MANYLINUX[legacy.group(1)]
    match = re.fullmatch(r"(manylinux|musllinux|macosx)_(\d+)_(\d+)_(\w+)", tag)
    if not match:
        raise ValueError("unsupported platform tag %r (use manylinux*, musllinux_* or macosx_*)" % tag)
    family, major, minor, arch = match.groups()
    return family, arch, (int(major), int(minor))


def pip_platforms(family, arch, version):
    """Return the --platform values for a target.

    pip does not widen manylinux_2_X or musllinux tags to older compatible ones
    (it does for manylinux2014 and macOS), so list them all.
    """
    major, minor = version
    if family == "manylinux":
        tags = ["manylinux_%d_%d_%s" % (major, m, arch) for m in range(minor, 4, -1)]
        return tags + ["%s_%s" % (name, arch) for name, need in LEGACY_MANYLINUX.items()
                       if need <= version]
    if family == "musllinux":
        return ["musllinux_%d_%d_%s" % (major, m, arch) for m in range(minor, 0, -1)]
    return ["macosx_%d_%d_%s" % (major, minor, arch)]


def host_target():
    """Return the target of the building interpreter; pip picks its wheels natively."""
    family, arch, _ = fleet_bootstrap.host_platform()
    python = "%d.%d" % sys.version_info[:2]
    return Target(fleet_bootstrap.host_target_key(), python, family, arch, ())


def host_platform_tag():
    """Return a platform tag for the host, to pair with a --python that differs from ours."""
    family, arch, glibc = fleet_bootstrap.host_platform()
    if family != "manylinux":
        raise SystemExit("cannot derive a platform tag for this host; pass --platform")
    return "manylinux_%d_%d_%s" % (glibc + (arch,))


def make_target(python, tag):
    """Return the Target for ``--python python --platform tag``."""
    if not re.fullmatch(r"3\.\d+", python):
        raise SystemExit("--python wants X.Y, e.g. 3.10, not %r" % python)
    try:
        family, arch, version = parse_platform(tag)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    key = "cp%s-%s_%s" % (python.replace(".", ""), family, arch)
    return Target(key, python, family, arch, tuple(pip_platforms(family, arch, version)))


def plan_targets(pythons, platforms, include_host):
    """Return the targets to bundle, host first; an explicit target replaces the host's."""
    chosen = {}
    if pythons or platforms:
        pairs = itertools.product(pythons or [host_target().python], platforms or [host_platform_tag()])
        for python, tag in pairs:
            target = make_target(python, tag)
            if target.key in chosen:
                raise SystemExit("two targets share the key %s; pass one platform per arch" % target.key)
            chosen[target.key] = target
    host = host_target()
    if include_host and host.key not in chosen:
        chosen = {host.key: host, **chosen}
    if not chosen:
        raise SystemExit("no targets: --no-host needs --python and/or --platform")
    return list(chosen.values())


def marker_environment(target):
    """Return the PEP 508 marker values of ``target``.

    pip download evaluates markers against the building interpreter, even with
    --python-version (so tomli's python_version < "3.11" would be dropped for a
    3.10 target); the top-level requirements are filtered here instead.
    """
    if not target.pip_platforms:
        return {}
    sys_platform, system = SYS_PLATFORM[target.family]
    return {"python_version": target.python, "python_full_version": target.python + ".0",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "sys_platform": sys_platform, "platform_system": system,
            "platform_machine": target.arch, "os_name": "posix"}


def filter_requirements(lines, environment):
    """Return requirement lines whose markers hold in ``environment``, markers removed."""
    try:
        from packaging.markers import Marker
    except ImportError:  # pip always carries a copy
        from pip._vendor.packaging.markers import Marker
    kept = []
    for raw in lines:
        line = re.sub(r"(^|\s)#.*", "", raw).strip()
        requirement, _, marker = line.partition(";")
        if line.startswith("-"):
            kept.append(line)  # pip options such as --index-url pass through
        elif requirement and (not marker.strip() or Marker(marker.strip()).evaluate(environment)):
            kept.append(requirement.strip())
    return kept


def download(target, requirements, dest):
    """Download the wheels of ``target`` into ``dest`` (pip's cache keeps rebuilds fast)."""
    req_file = os.path.join(dest, "requirements.txt")
    with open(req_file, "w") as out:
        out.write("\n".join(requirements) + "\n")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
           "--only-binary=:all:", "--dest", dest, "-r", req_file]
    if target.pip_platforms:
        cmd += ["--python-version", target.python, "--implementation", "cp"]
        cmd += [arg for tag in target.pip_platforms for arg in ("--platform", tag)]
    print("fetching wheels for %s" % target.key, file=sys.stderr)
    if subprocess.run(cmd).returncode:
        raise SystemExit("pip download failed for %s" % target.key)
    os.unlink(req_file)
    return sorted(name for name in os.listdir(dest) if name.endswith(".whl"))


def glibc_needed(wheel_names):
    """Return the oldest glibc all manylinux wheels of a target run on, or None."""
    need = None
    for name in wheel_names:
        versions = []
        for tag in name[:-len(".whl")].split("-")[-1].split("."):
            if tag.startswith("manylinux"):
                versions.append(parse_platform(tag)[2])
        if versions:  # any one tag of a wheel suffices, so the lowest counts
            need = max(need or min(versions), min(versions))
    return list(need) if need else None


def gather_wheels(targets, requirements, workdir):
    """Download every target; return ({arcname: bytes}, {key: manifest entry})."""
    files, manifest = {}, {}
    for target in targets:
        dest = os.path.join(workdir, target.key)
        os.makedirs(dest)
        lines = filter_requirements(requirements, marker_environment(target))
        names = download(target, lines, dest)
        arcnames = []
        for name in names:
            shared = name.endswith("-none-any.whl")
            arcname = "wheels/%s/%s" % ("any" if shared else target.key, name)
            with open(os.path.join(dest, name), "rb") as src:
                data = src.read()
            if files.setdefault(arcname, data) != data:
                raise SystemExit("two different files named %s" % name)
            arcnames.append(arcname)
        manifest[target.key] = {"python": target.python, "platform": target.family,
                                "arch": target.arch, "glibc": glibc_needed(names),
                                "wheels": arcnames}
    return files, manifest


def collect_sources(src_root):
    """Return {arcname: bytes} of fleet.py and the fleet/ package under app/."""
    files = {}
    paths = [os.path.join(src_root, fleet_bootstrap.ENTRY)]
    for dirpath, dirnames, filenames in os.walk(os.path.join(src_root, "fleet")):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        paths += [os.path.join(dirpath, f) for f in filenames
                  if not f.startswith(".") and not f.endswith((".pyc", ".pyo"))]
    for path in paths:
        rel = os.path.relpath(path, src_root).replace(os.sep, "/")
        with open(path, "rb") as src:
            files[fleet_bootstrap.APP_PREFIX + rel] = src.read()
    return files


def read_version(src_root):
    """Return fleet.__version__ without importing the package."""
    with open(os.path.join(src_root, "fleet", "__init__.py")) as src:
        match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", src.read(), re.M)
    if not match:
        raise SystemExit("no __version__ in fleet/__init__.py")
    return match.group(1)


def content_hash(bootstrap, files, extra):
    """Return a hash of the bootstrap, ``files`` ({arcname: bytes}) and JSON-able ``extra``."""
    digest = hashlib.sha256(bootstrap.encode())
    digest.update(json.dumps(extra, sort_keys=True).encode())
    for arcname in sorted(files):
        digest.update(b"%s\0%s" % (arcname.encode(), hashlib.sha256(files[arcname]).digest()))
    return digest.hexdigest()[:fleet_bootstrap.HASH_CHARS]


def add_hashes(bootstrap, sources, wheels, targets):
    """Give each target the hash of what its extraction holds; return the whole payload's hash.

    The extraction directory is named by the target's hash, so interpreters
    sharing a cache root never share native code.
    """
    for key, target in sorted(targets.items()):
        used = {arcname: wheels[arcname] for arcname in target["wheels"]}
        target["hash"] = content_hash(bootstrap, {**sources, **used}, key)
    return content_hash(bootstrap, {**sources, **wheels}, targets)


def render_bootstrap(source, manifest):
    """Return __main__.py: the bootstrap with the manifest in place of ``BUILD = None``."""
    placeholder = "\nBUILD = None\n"
    if source.count(placeholder) != 1:
        raise SystemExit("fleet_bootstrap.py must contain exactly one 'BUILD = None' line")
    literal = "\nBUILD = %s\n" % pprint.pformat(manifest, width=100, sort_dicts=True)
    return source.replace(placeholder, literal)


def write_pyz(path, files):
    """Write the zip with a shebang, atomically, executable, in a fixed order."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "wb") as out:
        out.write(SHEBANG)
        with zipfile.ZipFile(out, "w") as zf:
            for arcname in sorted(files):
                info = zipfile.ZipInfo(arcname, ZIP_DATE)
                info.external_attr = 0o644 << 16
                # Wheels are already compressed, and stored ones unpack faster.
                stored = arcname.endswith(".whl")
                info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
                zf.writestr(info, files[arcname])
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


def build(output, targets, src_root, requirements_path, extra_paths=()):
    """Build the pyz at ``output`` with the wheels of ``requirements_path`` and of each of
    ``extra_paths``; return its manifest."""
    requirements = []
    for path in (requirements_path, *extra_paths):
        with open(path) as src:
            requirements += src.read().splitlines()
    with open(os.path.join(HERE, "fleet_bootstrap.py")) as src:
        bootstrap = src.read()
    with tempfile.TemporaryDirectory(prefix="fleet-build-") as workdir:
        wheels, target_manifest = gather_wheels(targets, requirements, workdir)
    sources = collect_sources(src_root)
    manifest = {"name": "fleet", "version": read_version(src_root),
                "hash": add_hashes(bootstrap, sources, wheels, target_manifest),
                "targets": target_manifest}
    files = {**sources, **wheels}
    files["__main__.py"] = render_bootstrap(bootstrap, manifest).encode()
    files["fleet_build.json"] = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    write_pyz(output, files)
    return manifest


def parse_args(argv):
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default="fleet.pyz", help="default: ./fleet.pyz")
    parser.add_argument("--python", action="append", default=[], metavar="X.Y",
                        help="add targets for this Python version (repeatable)")
    parser.add_argument("--platform", action="append", default=[], metavar="TAG",
                        help="add targets for this wheel platform tag, e.g. manylinux2014_aarch64")
    parser.add_argument("--no-host", action="store_true",
                        help="do not bundle wheels for the building interpreter")
    parser.add_argument("--source-root", default=HERE,
                        help="directory holding fleet.py and fleet/ (default: next to this script)")
    parser.add_argument("--requirements", default=os.path.join(HERE, "requirements.txt"))
    parser.add_argument("--with-postgres", action="store_true",
                        help="bundle the PostgreSQL driver (%s)" % os.path.basename(POSTGRES_REQUIREMENTS))
    return parser.parse_args(argv)


def main(argv=None):
    """Entry point: build and report what was built."""
    args = parse_args(argv)
    targets = plan_targets(args.python, args.platform, not args.no_host)
    extras = [POSTGRES_REQUIREMENTS] if args.with_postgres else []
    manifest = build(args.output, targets, args.source_root, args.requirements, extras)
    size = os.path.getsize(args.output) / 1e6
    print("wrote %s: fleet %s, %.1f MB, hash %s, targets %s" % (
        args.output, manifest["version"], size, manifest["hash"], ", ".join(manifest["targets"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
