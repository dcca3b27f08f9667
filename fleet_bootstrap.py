"""Bootstrap of fleet.pyz: unpack bundled wheels once, then run fleet.

build_zipapp.py copies this file into the zip as ``__main__.py`` and fills in
``BUILD``. Only the standard library may be used here: nothing else is
importable until the wheels are unpacked.

grpcio, protobuf and psutil carry native code, which cannot be imported from a
zip, and code imported from a zip is recompiled at every start. So the wheels
and fleet's sources are unpacked once into ``<root>/<hash>/`` (the hash of the
target's content, compiled to .pyc) and every later start only checks a marker file.

Locking on ``<root>/<hash>.lock`` (flock): an extractor or pruner holds it
exclusively; every running fleet holds it shared for its whole life, so a
pruner never deletes an extraction that is in use.
"""

import os
import sys

# Replaced by build_zipapp.py with the build manifest: name, version, hash (of
# the whole payload) and targets ({key: {python, platform, arch, glibc, wheels,
# hash}}); a target's hash names its extraction directory.
BUILD = None

MARKER = "FLEET_COMPLETE"
HASH_CHARS = 16  # length of the content hash naming an extraction directory
APP_PREFIX = "app/"  # fleet sources inside the zip
ENTRY = "fleet.py"  # entry script, run as __main__
KEEP_RECENT = 3  # extractions kept per root, the current one included
MAX_AGE = 7 * 86400  # older extractions are pruned even if among the recent

# The shared lock on the extraction in use; kept open for the process's life.
_held_lock = None
_unpacked_here = False  # this process unpacked the target (then it restarts fresh)
REEXEC_ENV = "FLEET_BOOTSTRAP_FRESH"  # set across that one restart, never passed on


class BootstrapError(Exception):
    """A problem the user must fix; the message is printed as is."""


def host_platform():
    """Return (family, arch, glibc) of the running interpreter.

    family is 'manylinux', 'musllinux', 'macosx' or sys.platform; glibc is a
    (major, minor) tuple on glibc systems, else None.
    """
    machine = os.uname().machine.lower() if hasattr(os, "uname") else "unknown"
    arch = {"amd64": "x86_64", "i386": "i686", "i586": "i686"}.get(machine, machine)
    if sys.maxsize <= 2**32:  # 32-bit interpreter on a 64-bit kernel
        arch = {"x86_64": "i686", "aarch64": "armv7l"}.get(arch, arch)
    if sys.platform == "darwin":
        return "macosx", arch, None
    if not sys.platform.startswith("linux"):
        return sys.platform, arch, None
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        libc = ""
    if not libc.startswith("glibc "):
        return "musllinux", arch, None
    major, minor = libc.split()[1].split(".")[:2]
    return "manylinux", arch, (int(major), int(minor))


def host_target_key():
    """Return the key of the running interpreter, e.g. 'cp311-manylinux_x86_64'."""
    family, arch, _ = host_platform()
    return "cp%d%d-%s_%s" % (sys.version_info[:2] + (family, arch))


def describe(target):
    """Return a target as a person reads it: 'Python 3.11 on manylinux x86_64'."""
    return "Python %s on %s %s" % (target["python"], target["platform"], target["arch"])


def select_target(build):
    """Return (key, target) of ``build`` matching this interpreter.

    Raises BootstrapError naming what was built when nothing matches.
    """
    name = build["name"] + ".pyz"
    family, arch, glibc = host_platform()
    here = "Python %d.%d on %s %s" % (sys.version_info[:2] + (family, arch))
    built = "; built for: " + ", ".join(sorted(map(describe, build["targets"].values())))
    if sys.implementation.name != "cpython":
        raise BootstrapError("%s needs CPython, not %s%s" % (name, sys.implementation.name, built))
    key = host_target_key()
    target = build["targets"].get(key)
    if target is None:
        raise BootstrapError("%s has no bundled wheels for %s%s" % (name, here, built))
    need = tuple(target.get("glibc") or ())
    if need and glibc and glibc < need:
        raise BootstrapError("%s needs glibc >= %d.%d for its bundled wheels; this system has %d.%d"
                             % ((name,) + need + glibc))
    return key, target


def candidate_roots():
    """Yield (cache root, private) in order of preference.

    The per-uid TMPDIR fallback is computed only when reached, because
    tempfile is slow to import and probes the disk.
    """
    env = os.environ
    if env.get("FLEET_CACHE_DIR"):
        yield env["FLEET_CACHE_DIR"], False
    xdg = env.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec says relative values are invalid
        yield os.path.join(xdg, "fleet"), False
    home = os.path.expanduser("~")
    if home != "~":
        yield os.path.join(home, ".cache", "fleet"), False
    import tempfile

    yield os.path.join(tempfile.gettempdir(), "fleet-%d" % os.getuid()), True


def private_root_problem(root):
    """Create the per-uid temp root 0700; return why it is refused, or None.

    Refused if another user could plant code in it: not ours, or group/world-writable.
    """
    import stat

    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        return exc.strerror or str(exc)
    st = os.lstat(root)  # lstat: a symlink planted by someone else is refused
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        return "owned by someone else or writable by others"
    return None


def root_usable(root):
    """Return None if code can be written to and executed from ``root``, else why not."""
    try:
        os.makedirs(root, 0o700, exist_ok=True)
        probe = os.path.join(root, ".probe-%d" % os.getpid())
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
        try:
            os.write(fd, b"#!/bin/sh\n")
        finally:
            os.close(fd)
        try:
            # access(X_OK) fails on a noexec mount even for root; statvfs says it directly.
            noexec = not os.access(probe, os.X_OK) or os.statvfs(root).f_flag & os.ST_NOEXEC
        finally:
            os.unlink(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return "mounted noexec" if noexec else None


def lock(path, op):
    """Return an fd holding flock ``op`` on ``path``, or None if LOCK_NB would block."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, op)
        except BlockingIOError:
            os.close(fd)
            return None
        # A pruner may have unlinked the file between our open and flock: a lock
        # on the orphaned inode guards nothing, so start again.
        try:
            st, now = os.fstat(fd), os.stat(path)
            if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def try_warm(root, digest):
    """Return a shared-lock fd if ``root`` holds the complete extraction, else None."""
    import fcntl

    marker = os.path.join(root, digest, MARKER)
    if not os.path.exists(marker):  # the common cold/warm decision: one stat, no lock
        return None
    try:
        fd = lock(os.path.join(root, digest + ".lock"), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return -1  # read-only, pre-populated root: nobody can prune it either
    if fd is not None and os.path.exists(marker):
        return fd
    if fd is not None:
        os.close(fd)
    return None  # being pruned or repaired: take the slow path


def extract(pyz, build, key, root):
    """Unpack into ``root/<hash>`` under the exclusive lock; return a shared-lock fd."""
    import fcntl
    import shutil
    import tempfile

    digest = build["targets"][key]["hash"]
    final = os.path.join(root, digest)
    fd = lock(final + ".lock", fcntl.LOCK_EX)
    try:
        if not os.path.exists(os.path.join(final, MARKER)):  # another process may have won
            remove_stale(root, digest)
            tmp = tempfile.mkdtemp(prefix=".%s.tmp-" % digest, dir=root)
            try:
                unpack(pyz, build, key, tmp)
                os.rename(tmp, final)  # atomic publish: readers see all or nothing
                global _unpacked_here
                _unpacked_here = True
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_stale(root, digest):
    """Remove leftovers of crashed runs for ``digest``; the caller holds its exclusive lock."""
    import shutil

    for name in os.listdir(root):
        if name == digest or name.startswith(".%s.tmp-" % digest):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def unpack(pyz, build, key, dest):
    """Unpack the target's wheels and fleet's sources into ``dest``, compile, mark complete."""
    import compileall
    import io
    import json
    import py_compile
    import zipfile

    site = os.path.join(dest, "site")
    with zipfile.ZipFile(pyz) as outer:
        # The file on disk may have been replaced since this bootstrap was read.
        if json.loads(outer.read("fleet_build.json"))["hash"] != build["hash"]:
            raise BootstrapError("%s changed while starting; run it again" % pyz)
        for name in build["targets"][key]["wheels"]:
            # Wheels are stored uncompressed; reading one into memory beats seeking in a member.
            with zipfile.ZipFile(io.BytesIO(outer.read(name))) as wheel:
                install_wheel(wheel, site)
        for info in outer.infolist():
            rel = info.filename[len(APP_PREFIX):]
            if info.filename.startswith(APP_PREFIX) and not info.is_dir():
                write_member(outer, info, os.path.join(dest if rel == ENTRY else site, rel))
    # Unchecked hash pycs: the directory is immutable, so skip the per-import source stat.
    compileall.compile_dir(site, quiet=2, workers=1,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    evict_native_pages(site)
    with open(os.path.join(dest, MARKER), "w") as out:
        json.dump({"hash": build["targets"][key]["hash"], "build": build["hash"],
                   "version": build["version"], "target": key}, out)


def evict_native_pages(site):
    """Flush the unpacked native libraries and drop them from the page cache.

    Freshly written, a library sits whole in the page cache, and the kernel then
    maps far more of it into every process that loads it than the process
    touches (grpc's cygrpc: 14 MiB resident instead of 10). Evicted, later
    loads map only the pages they use. Best effort: failures change nothing.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    for folder, _, names in os.walk(site):
        for name in names:
            if ".so" not in name:
                continue
            try:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)  # dirty pages cannot be dropped
                advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            finally:
                os.close(fd)


def install_wheel(wheel, site):
    """Unzip one wheel into ``site`` the way an installer would lay out importable files."""
    for info in wheel.infolist():
        parts = info.filename.split("/")
        if info.is_dir():
            continue
        if parts[0].endswith(".data"):
            if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                continue  # scripts, headers, data: not needed to import
            parts = parts[2:]
        write_member(wheel, info, os.path.join(site, *parts))


def write_member(archive, info, path):
    """Copy one zip member to ``path``, refusing names that escape the target."""
    import shutil

    if info.filename.startswith("/") or ".." in info.filename.split("/"):
        raise BootstrapError("unsafe path in fleet.pyz: %s" % info.filename)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with archive.open(info) as src, open(path, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def prune(root, current, now):
    """Best effort: remove extractions beyond the most recent or older than MAX_AGE.

    Never the current one, never one whose lock is held (in use or in work).
    """
    ages = {}
    for name in os.listdir(root):
        if is_digest(name) and name != current:
            ages[name] = marker_mtime(root, name)
    # Incomplete ones (no marker) are left to their own next extraction.
    ranked = sorted((h for h in ages if ages[h]), key=ages.get, reverse=True)
    for rank, digest in enumerate(ranked):
        if rank >= KEEP_RECENT - 1 or now - ages[digest] > MAX_AGE:
            remove_extraction(root, digest, ages[digest])


def remove_extraction(root, digest, seen_mtime):
    """Delete ``root/<digest>`` if nobody holds its lock and it is still the one judged old."""
    import fcntl

    fd = lock(os.path.join(root, digest + ".lock"), fcntl.LOCK_EX | fcntl.LOCK_NB)
    if fd is None:
        return
    try:
        if marker_mtime(root, digest) == seen_mtime:
            os.unlink(os.path.join(root, digest, MARKER))  # first, so a crash leaves it incomplete
            remove_stale(root, digest)
            os.unlink(os.path.join(root, digest + ".lock"))
    finally:
        os.close(fd)


def is_digest(name):
    """Tell whether ``name`` looks like an extraction directory name."""
    return len(name) == HASH_CHARS and all(c in "0123456789abcdef" for c in name)


def marker_mtime(root, digest):
    """Return the completion time of an extraction, 0 if it is incomplete."""
    try:
        return os.stat(os.path.join(root, digest, MARKER)).st_mtime
    except OSError:
        return 0


def open_in_root(pyz, build, key, root, private):
    """Return (shared-lock fd, None) for the extraction in ``root``, or (None, why not)."""
    digest = build["targets"][key]["hash"]
    reason = private_root_problem(root) if private else None
    if reason:
        return None, reason
    fd = try_warm(root, digest)
    if fd is not None:
        return fd, None
    reason = root_usable(root)
    if reason:
        return None, reason
    try:
        fd = extract(pyz, build, key, root)
    except OSError as exc:
        return None, "extraction failed: %s" % exc
    prune_quietly(root, digest)
    return fd, None


def ensure_extracted(pyz, build, key):
    """Return the extraction directory for this target in the first usable root."""
    global _held_lock
    tried = []
    for root, private in candidate_roots():
        _held_lock, reason = open_in_root(pyz, build, key, root, private)
        if reason is None:
            return os.path.join(root, build["targets"][key]["hash"])
        tried.append("%s: %s" % (root, reason))
    raise BootstrapError("no usable cache directory for fleet.pyz; tried:\n  "
                         + "\n  ".join(tried) + "\nset FLEET_CACHE_DIR to a writable directory")


def prune_quietly(root, current):
    """Prune, ignoring errors: a failed cleanup must not stop fleet from starting."""
    import time

    try:
        prune(root, current, time.time())
    except OSError:
        pass


def run_app(pyz, app_dir):
    """Run fleet's entry script from ``app_dir`` as __main__, with the pyz as argv[0]."""
    site = os.path.join(app_dir, "site")
    # Drop the pyz itself from the path: its copy of fleet/ cannot import native deps.
    sys.path[:] = [site] + [p for p in sys.path if os.path.abspath(p) != pyz]
    sys.argv[0] = pyz
    entry = os.path.join(app_dir, ENTRY)
    with open(entry, "rb") as src:
        code = compile(src.read(), entry, "exec")
    exec(code, {"__name__": "__main__", "__file__": entry, "__builtins__": __builtins__})


def main():
    """Select the target, make sure it is unpacked, run fleet; return an exit status."""
    # Agents are spawned beside gRPC threads (DESIGN.md): grpc reads this at import.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    if BUILD is None:
        sys.stderr.write("fleet_bootstrap.py runs inside fleet.pyz; build it with build_zipapp.py\n")
        return 1
    pyz = os.path.abspath(os.path.dirname(__file__))
    try:
        key, _ = select_target(BUILD)
        app_dir = ensure_extracted(pyz, BUILD, key)
    except BootstrapError as exc:
        sys.stderr.write("%s\n" % exc)
        return 1
    restarted = os.environ.pop(REEXEC_ENV, None)
    if _unpacked_here and not restarted:
        restart_fresh()
    run_app(pyz, app_dir)
    return 0


def restart_fresh():
    """Run this command again in a fresh interpreter, same pid.

    Unpacking compiled every module in this process; a long-running daemon
    would carry that memory for its whole life. The new process finds the
    extraction warm. The shared lock fd is close-on-exec and taken again there.
    """
    os.environ[REEXEC_ENV] = "1"
    if os.environ.get("FLEET_LOG_LEVEL") == "debug":
        sys.stderr.write("fleet.pyz: unpacked; starting fleet in a fresh interpreter\n")
    sys.stdout.flush()
    sys.stderr.flush()
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable] + sys.argv)
    os.execv(sys.executable, argv)


if __name__ == "__main__":
    sys.exit(main())
