"""Output files: checked before any work, written beside their destination, published by rename.

Rules (README, "Reliability"):
* every output path is checked before the work starts (suffix, folder writable, not clobbering, and
  never one of the command's inputs: the same file, also through a link or another name);
* an artifact is written into a hidden temporary folder beside its destination and renamed into
  place with everything written next to it (``.onnx.data``, the ``.json`` sidecar); on any failure
  or signal the temporary folder goes and nothing is left behind;
* the final rename never replaces a file that appeared meanwhile, unless ``--overwrite``;
* a folder is never deleted to make room, except a package (a folder artifact such as a Core ML
  ``.mlpackage``, recognised by its marker file) replaced with ``--overwrite``;
* published files get the permissions the user's umask gives new files (temporary files are 0600).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from . import lifecycle
from .errors import FvdeployError

_AT_FDCWD, _RENAME_NOREPLACE = -100, 1
# atomic_output's temporary folder beside an output NAME: ".NAME.xxxxxxxx.tmp" (mkdtemp adds 8 characters)
_TEMP_PREFIX, _TEMP_SUFFIX = ".", ".tmp"
TEMP_NAME_EXTRA = len(_TEMP_PREFIX) + len(".") + 8 + len(_TEMP_SUFFIX)


def sha256(path: str | Path) -> str:
    """Digest of a file, or of every file below a folder (sorted by relative path)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _nearest_existing(folder: Path) -> Path:
    folder = folder if str(folder) else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def shown(path: str | Path) -> str:
    """A path as advice names it, so the printed command runs from where the user is: relative to the current
    folder when it lies below it, else absolute; quoted for a shell."""
    import shlex

    absolute = Path(path).resolve()
    try:
        text = str(absolute.relative_to(Path.cwd().resolve()))
    except ValueError:
        text = str(absolute)
    return shlex.quote(text)


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths are one file (device and inode: links and other spellings included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_inside(path: Path, folders: Iterable[str | Path | None], what: str = "output") -> None:
    """An output never goes inside a folder the command reads (its images, at any depth): it could replace one of
    them, and would be read as one the next time."""
    for folder in filter(None, folders):
        if Path(folder).is_dir() and Path(path).resolve().is_relative_to(Path(folder).resolve()):
            raise FvdeployError(f"{what} {path} is inside {folder}, whose files this command reads: fvdeploy never "
                                "writes among its inputs; choose a path outside it")


def refuse_inputs(path: Path, inputs: Iterable[str | Path | None], what: str = "output") -> None:
    """An output is never one of the command's inputs, not even with --overwrite."""
    for given in inputs:
        if given is not None and same_file(path, given):
            spelled = "" if Path(given) == path else f" ({given})"
            raise FvdeployError(f"{what} {path} is one of this command's inputs{spelled}: fvdeploy never writes "
                                "over an input; choose another name")


def check_output(path: Path, overwrite: bool, suffix: str | tuple[str, ...], package: str | None = None,
                 inputs: Iterable[str | Path | None] = (), what: str = "output") -> Path:
    """Refuse a wrong suffix, one of the command's ``inputs``, a folder in the way, an existing file (unless
    ``overwrite``), or a folder that cannot be written. ``package``: the output is a folder artifact, and a
    folder holding this marker file is one. Leaves nothing behind (writability is probed with a file it removes)."""
    suffixes = (suffix,) if isinstance(suffix, str) else suffix
    if not any(path.name.lower().endswith(s) for s in suffixes):  # suffixes of two parts too (.rtx.engine)
        raise FvdeployError(f"{what} must end in {' or '.join(suffixes)}, got {path.name}")
    refuse_inputs(path, inputs, what)
    if path.is_dir() and not path.is_symlink():
        if package is None:
            raise FvdeployError(f"{path} is a folder: fvdeploy never replaces a folder with an artifact")
        if not (path / package).is_file():
            raise FvdeployError(f"{path} is a folder but not a {path.suffix} package: fvdeploy will not replace it")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FvdeployError(f"{'' if what == 'output' else what + ' '}{path} exists (pass --overwrite to replace it)")
    check_writable(path, what)
    return path


def check_writable(path: Path, what: str = "output") -> None:
    """The folder ``path`` goes to can be made and written, and ``path``'s name fits the temporary folder that
    ``atomic_output`` writes it through (and its sidecar beside it) on that file system."""
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise FvdeployError(f"cannot create output folder {path.parent}: {base} is not a folder")
    if not _writable(base):
        raise FvdeployError(f"{'output' if what == 'output' else what} folder {base} is not writable")
    try:
        name_max = os.pathconf(base, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    longest = len(os.fsencode(path.name)) + max(TEMP_NAME_EXTRA, len(".json"))
    if longest > name_max:
        raise FvdeployError(f"{what} name {path.name[:24]}... is {len(os.fsencode(path.name))} bytes: written through "
                            f"a temporary folder {_TEMP_PREFIX}NAME.xxxxxxxx{_TEMP_SUFFIX}, it may have at most "
                            f"{name_max - TEMP_NAME_EXTRA} bytes here")


def _writable(folder: Path) -> bool:
    """Try it: permission bits say nothing for root, nor for read-only mounts and /proc."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".fvdeploy-probe.")
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Atomic rename that fails with FileExistsError instead of replacing ``dst`` (Linux renameat2)."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):  # filesystems without the flag fall back below
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publishable_modes(path: Path) -> None:
    """The modes new files get from the umask (mkdtemp and mkstemp make them private)."""
    mask = _umask()
    if not path.is_dir():
        os.chmod(path, 0o666 & ~mask)
        return
    for folder, _, files in os.walk(path):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~mask)


def _publish(tmpdir: Path, path: Path, overwrite: bool, package: str | None) -> None:
    """Move what was written for ``path`` (the artifact, then companions such as .data and .json) into place."""
    written = sorted((p for p in tmpdir.iterdir() if p.name.startswith(path.name)), key=lambda p: p != tmpdir / path.name)
    if not written or written[0].name != path.name:
        raise FvdeployError(f"nothing was written for {path.name}")
    # Companions (.data) before the artifact, the sidecar last: a reader never finds a sidecar without its file.
    order = [p for p in written[1:] if p.suffix != ".json"] + [written[0]] + [p for p in written[1:] if p.suffix == ".json"]
    moved: list[tuple[Path, Path]] = []
    try:
        for src in order:
            _publishable_modes(src)
            dst = path.parent / src.name
            if overwrite and (dst.exists() or dst.is_symlink()):
                if dst.is_dir() and not dst.is_symlink():
                    check_output(dst, True, dst.suffix or ".", package)  # only a package may be replaced
                    os.rename(dst, tmpdir / f"replaced-{src.name}")  # removed with the temporary folder
                else:
                    os.replace(src, dst)
                    moved.append((dst, src))
                    continue
            try:
                _rename_noreplace(src, dst)
            except FileExistsError as err:
                raise FvdeployError(f"{dst} appeared while fvdeploy was writing it; not replacing it "
                                    "(pass --overwrite to replace it)") from err
            moved.append((dst, src))
    except BaseException:
        for dst, src in reversed(moved):  # all or nothing: take back what was already published
            with contextlib.suppress(OSError):
                os.rename(dst, src)
        raise


def published_path(tmp: Path) -> Path:
    """Where ``atomic_output`` will publish the temporary path it yielded (its folder is beside the target)."""
    return tmp.parent.parent / tmp.name


@contextlib.contextmanager
def atomic_output(path: str | Path, overwrite: bool = False, package: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success publish it (and what was written beside it).

    Whatever goes wrong, including Ctrl-C and SIGTERM (``lifecycle``), the temporary folder and any
    output folder created for it are removed.
    """
    path = Path(path)
    missing = []
    folder = path.parent if str(path.parent) else Path(".")
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent

    def remove_created() -> None:
        for created in missing:  # innermost first; only folders we made, and only if empty (not published)
            with contextlib.suppress(OSError):
                created.rmdir()

    with lifecycle.on_end(remove_created):  # entered before anything is created
        try:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise FvdeployError(f"cannot create output folder {path.parent}: {err.strerror}") from err
            with scratch_folder(path.parent, prefix=f"{_TEMP_PREFIX}{path.name}.", suffix=_TEMP_SUFFIX) as tmpdir:
                yield tmpdir / path.name
                _publish(tmpdir, path, overwrite, package)
        except OSError as err:
            if err.filename or not err.strerror:
                raise
            # A full disk while writing names no file ("No space left on device"): name the output it was for.
            raise OSError(err.errno, err.strerror, str(path)) from err
        finally:
            remove_created()


@contextlib.contextmanager
def library_temp_files_in(folder: Path) -> Iterator[None]:
    """Libraries that make their own temporary files (coremltools' packages) make them in ``folder`` meanwhile,
    so that they go with it, also when fvdeploy is ended by a signal before the library cleans up."""
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = previous


@contextlib.contextmanager
def scratch_folder(parent: Path | None = None, prefix: str = "fvdeploy-", suffix: str = "") -> Iterator[Path]:
    """A new folder (in ``parent``, else the system's temp folder) removed when the block ends, also
    when fvdeploy is ended by a signal (``lifecycle``)."""
    made: list[Path] = []

    def remove() -> None:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)

    with lifecycle.on_end(remove):  # entered before the folder exists
        try:
            made.append(Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=suffix)))
            yield made[0]
        finally:
            remove()


def write_text_atomic(path: Path, text: str, overwrite: bool = True) -> Path:
    """A small output (JSON report, cache) written whole or not at all."""
    with atomic_output(path, overwrite) as tmp:
        tmp.write_text(text)
    return path
