"""AVA.txt -> train/test label files of vote counts.

AVA.txt has one image per line: index, image_id, ten vote counts for ratings 1..10, semantic
tag 1, semantic tag 2 (0 = none), challenge id. tags.txt maps tag ids to names ("15 Interior"),
so `--tags Interior` keeps one category as in the NIMA paper's per-category experiments. The
split is either seeded-random or an official list of test ids (AVA's aesthetics_image_lists).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nima.data.labelfile import input_error, read_lines, write_label_rows
from nima.errors import DataError
from nima.labels import find_image, index_images, split, validate_image_id

log = logging.getLogger(__name__)

N_FIELDS = 15


@dataclass(frozen=True)
class AvaRow:
    image_id: str
    votes: tuple[int, ...]
    tags: tuple[int, int]
    challenge: int
    lineno: int


def read_ava(path: str | Path) -> list[AvaRow]:
    rows: list[AvaRow] = []
    first_line: dict[str, int] = {}
    for lineno, line in read_lines(path, "AVA file"):
        fields = line.split()
        if len(fields) != N_FIELDS:
            raise input_error(path, lineno, f"expected {N_FIELDS} fields (index, image id, 10 "
                              f"vote counts, 2 tags, challenge), got {len(fields)}")
        numbers = []
        for col, f in enumerate(fields[2:], 3):
            try:
                numbers.append(int(f))
            except ValueError:
                raise input_error(path, lineno, f"field {col} must be an integer (vote counts, "
                                  f"tags and challenge are), got {f!r}") from None
        image_id = fields[1]
        why = validate_image_id(image_id)
        if why:
            raise input_error(path, lineno, why)
        votes = tuple(numbers[:10])
        if any(v < 0 for v in votes):
            raise input_error(path, lineno, f"negative vote count for image {image_id}")
        if image_id in first_line:
            raise input_error(path, lineno, f"duplicate image id {image_id} (first on line "
                              f"{first_line[image_id]})")
        first_line[image_id] = lineno
        rows.append(AvaRow(image_id, votes, (numbers[10], numbers[11]), numbers[12], lineno))
    if not rows:
        raise DataError(f"{path}: contains no images")
    return rows


def read_names(path: str | Path, what: str) -> dict[int, str]:
    """tags.txt / challenges.txt: "id name" per line; names may contain spaces."""
    names: dict[int, str] = {}
    for lineno, line in read_lines(path, what):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise input_error(path, lineno, "expected 'id name'")
        try:
            names[int(parts[0])] = parts[1].strip()
        except ValueError:
            raise input_error(path, lineno, f"id must be an integer, got {parts[0]!r}") from None
    return names


def resolve_tags(wanted: Sequence[str], tags_file: str | Path | None) -> set[int]:
    """Tag names (case-insensitive, needs tags.txt) or numeric ids -> tag ids."""
    names = read_names(tags_file, "tags file") if tags_file else {}
    by_name = {n.lower(): i for i, n in names.items()}
    ids: set[int] = set()
    for w in wanted:
        if w.strip().isdigit():
            ids.add(int(w))
        elif w.lower() in by_name:
            ids.add(by_name[w.lower()])
        elif not names:
            raise DataError(f"tag {w!r} is a name: give --tags-file tags.txt to look it up")
        else:
            raise DataError(f"unknown tag {w!r}; {tags_file} has: "
                            + ", ".join(sorted(names.values())))
    if 0 in ids:
        raise DataError("tag 0 means 'no tag' and cannot be selected")
    return ids


def read_id_list(path: str | Path) -> set[str]:
    """Official split files: image ids separated by whitespace or newlines."""
    ids: set[str] = set()
    for lineno, line in read_lines(path, "test id file"):
        for token in line.split():
            why = validate_image_id(token)
            if why:
                raise input_error(path, lineno, why)
            ids.add(token)
    return ids


@dataclass
class AvaResult:
    total: int
    train: list[AvaRow]
    test: list[AvaRow]
    dropped: dict[str, int]


def build(ava_file: str | Path, out_dir: str | Path, *, tags: Sequence[str] = (),
          tags_file: str | Path | None = None, test_fraction: float = 0.1, seed: int = 0,
          test_ids: str | Path | None = None, min_votes: int = 1,
          image_dir: str | Path | None = None, prefix: str = "ava_labels") -> AvaResult:
    if not 0 <= test_fraction < 1:
        raise DataError(f"test fraction must be in [0, 1), got {test_fraction}")
    rows = read_ava(ava_file)
    dropped: dict[str, int] = {}
    kept = rows
    if tags:
        wanted = resolve_tags(tags, tags_file)
        kept = [r for r in kept if wanted & set(r.tags)]
        dropped["not in selected tags"] = len(rows) - len(kept)
    n = len(kept)
    kept = [r for r in kept if sum(r.votes) >= max(min_votes, 1)]
    dropped[f"fewer than {max(min_votes, 1)} votes"] = n - len(kept)
    if image_dir is not None:
        index = index_images(image_dir)
        n = len(kept)
        kept = [r for r in kept if find_image(index, r.image_id)]
        dropped["image missing"] = n - len(kept)
    if not kept:
        raise DataError(f"no images of {ava_file} are left after filtering: "
                        + ", ".join(f"{v} {k}" for k, v in dropped.items() if v))
    if test_ids is not None:
        ids = read_id_list(test_ids)
        test = [r for r in kept if r.image_id in ids]
        train = [r for r in kept if r.image_id not in ids]
        unknown = len(ids) - len(test)
        if unknown:
            log.info("%d ids of %s are not among the kept AVA images", unknown, test_ids)
    else:
        train, test = split(kept, test_fraction, seed)
    out_dir = Path(out_dir)
    for name, part in (("train", train), ("test", test)):
        write_label_rows(out_dir / f"{prefix}_{name}.json", [(r.image_id, r.votes) for r in part])
    return AvaResult(len(rows), train, test, dropped)
