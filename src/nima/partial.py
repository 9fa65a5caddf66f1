"""The partial file of a running `nima predict`: results stream into `FILE.partial` (JSON
lines) batch by batch, a lock keeps a second run off it, `FILE.partial.run.json` records what
made it (so `--resume` continues only the same run), and at the end `finish` writes FILE in
its format from it. A kill at any moment leaves whole lines and no FILE, or a complete FILE.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path
from typing import IO, Iterable, Iterator, Sequence

from nima import files, results
from nima.errors import NimaError

log = logging.getLogger(__name__)


def path_for(predictions_file: Path) -> Path:
    return predictions_file.with_name(predictions_file.name + results.PARTIAL_SUFFIX)


@contextlib.contextmanager
def closing_quietly(f: IO[bytes]) -> Iterator[IO[bytes]]:
    """Close `f` at the end, ignoring a failed last flush: on a full disk it fails again after
    the error that matters was raised, and the partial file keeps its whole lines either way
    (a successful run flushes and syncs before it gets here)."""
    try:
        yield f
    finally:
        try:
            f.close()
        except OSError:
            pass


def run_path(partial: Path) -> Path:
    """What made a partial file: --resume continues only the same run."""
    return partial.with_name(partial.name + ".run.json")


def check_same_run(partial: Path, run: dict) -> None:
    try:
        earlier = json.loads(run_path(partial).read_text())
    except (OSError, ValueError):
        return  # a partial file from before run records were kept: nothing to compare
    changed = [k for k in run if k in earlier and earlier[k] != run[k]]
    if changed:
        k = changed[0]
        raise NimaError(f"--resume: {partial} was made with {k} {earlier[k]}, this run has "
                        f"{run[k]}; give the same arguments, or drop --resume to start over")


def read_partial(path: Path) -> tuple[set[str], int, int]:
    """Scored images of an interrupted run; cuts a half-written last line (kill -9) off."""
    done: set[str] = set()
    failed = 0
    good_end = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                r = json.loads(line)
                done.add(r["image"])
            except (ValueError, KeyError, TypeError):
                break
            failed += "error" in r
            good_end += len(line)
    if good_end != path.stat().st_size:
        log.warning("%s ends with a half-written line; dropping it", path)
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return done, len(done), failed


def lock(f: IO[bytes], partial: Path) -> None:
    """Refuse a second run on the same predictions file: both would append to one partial
    file and the first to finish would publish the other's half-written lines."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise NimaError(f"another nima predict is writing {partial}; wait for it to finish "
                        "or choose another --predictions-file") from None
    except OSError as e:  # a file system without locks (some network mounts): go on
        log.debug("cannot lock %s: %s", partial, e)
        return
    try:
        same = os.path.samestat(os.fstat(f.fileno()), os.stat(partial))
    except FileNotFoundError:
        same = False
    if not same:  # a run finished and removed it between our open() and our lock
        raise NimaError(f"another nima predict has just finished with {partial}; run again "
                        "to score the images anew")


def finish(partial: Path, predictions_file: Path | None, fmt: str,
                normalization: results.Normalization | None,
                score_keys: Sequence[str] = ()) -> tuple[dict | None, int, int]:
    """The finished predictions file from the partial one (normalised if asked)."""
    fitted = normalization.fit(results.read_results(partial, "jsonl")) if normalization else None
    with results.ResultWriter(predictions_file, fmt, score_keys) as writer:
        for r in results.read_results(partial, "jsonl"):
            writer.write(normalization.apply(r, fitted) if normalization else r)
    return fitted, writer.count, writer.failed


def start(out, partial: Path, resume: bool, record: dict,
                   keep_record: bool) -> tuple[set[str], int]:
    """(images already scored, how many): continue the partial file, or empty it."""
    done: set[str] = set()
    resumed = 0
    if resume and out.seek(0, os.SEEK_END):
        check_same_run(partial, record)
        done, resumed, _ = read_partial(partial)
        log.info("resuming: %d images already scored in %s", resumed, partial)
    elif out.seek(0, os.SEEK_END):
        log.warning("discarding the partial results of an earlier run (%s); use --resume to "
                    "continue it instead", partial)
        out.truncate(0)
    elif resume:
        log.warning("nothing to resume: no partial results in %s; scoring every image", partial)
    if keep_record:
        files.write_json(run_path(partial), record)
    return done, resumed


def append(out, scored: Iterable[dict], batch_size: int) -> int:
    """Append results as JSON lines, one write per batch (whole lines reach the file), synced
    at the end; returns how many."""
    new = 0
    buf = io.BytesIO()
    for result in scored:
        buf.write(json.dumps(result).encode("ascii") + b"\n")
        new += 1
        if new % batch_size == 0:
            out.write(buf.getvalue())
            out.flush()
            buf = io.BytesIO()
    out.write(buf.getvalue())
    out.flush()
    os.fsync(out.fileno())
    return new
