"""`nima data <tool>`: the dataset tools' arguments (the tools live beside this module).

One adder per tool, in help order; append new tools to DATA_COMMANDS. Like nima.cli, each
tool imports its module when it runs, so `nima data --help` stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from nima.errors import EXIT_OK, EXIT_PARTIAL
from nima import options
from nima.options import UsageError


@options.command("ava", help="AVA.txt -> train/test label files (vote counts)")
def _data_ava(p: argparse.ArgumentParser) -> options.Run:
    """Make ava_labels_train.json and ava_labels_test.json from AVA.txt (index, image id, 10
    vote counts, tag 1, tag 2, challenge).
    """
    p.add_argument("ava_file", type=Path, metavar="AVA.txt", help="AVA's AVA.txt")
    p.add_argument("--out-dir", type=Path, required=True,
                   help="folder for ava_labels_train.json and ava_labels_test.json")
    p.add_argument("--tags", nargs="+", metavar="TAG", default=(),
                   help="keep images with one of these semantic tags (names need --tags-file)")
    p.add_argument("--tags-file", type=Path, metavar="tags.txt", help="tag id -> name list")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="random test share (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--test-ids", type=Path, metavar="FILE",
                   help="official split: file of test image ids (overrides --test-fraction)")
    p.add_argument("--min-votes", type=int, default=1, help="drop images with fewer votes")
    p.add_argument("--image-dir", type=Path, help="drop ids whose image is not in this folder")

    def run(a: argparse.Namespace) -> int:
        from nima.data import ava

        r = ava.build(a.ava_file, a.out_dir, tags=a.tags, tags_file=a.tags_file,
                      test_fraction=a.test_fraction, seed=a.seed, test_ids=a.test_ids,
                      min_votes=a.min_votes, image_dir=a.image_dir)
        dropped = ", ".join(f"{v} {k}" for k, v in r.dropped.items() if v) or "none"
        print(f"{a.ava_file}: {r.total} images; dropped: {dropped}\n"
              f"train: {len(r.train)} -> {a.out_dir / 'ava_labels_train.json'}\n"
              f"test: {len(r.test)} -> {a.out_dir / 'ava_labels_test.json'}")
        return EXIT_OK

    return run


@options.command("tid2013", help="TID2013 MOS -> train/test max-entropy labels")
def _data_tid2013(p: argparse.ArgumentParser) -> options.Run:
    """Make tid_labels_train.json and tid_labels_test.json from mos_with_names.txt: MOS 0..9 is
    rescaled to 1..10 and spread by maximum entropy; the split is by reference image
    (default test I01-I03, as in the shipped data/TID2013 files).
    """
    p.add_argument("mos_file", type=Path, metavar="mos_with_names.txt",
                   help="TID2013's 'MOS filename' list")
    p.add_argument("--out-dir", type=Path, required=True,
                   help="folder for tid_labels_train.json and tid_labels_test.json")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--test-refs", nargs="+", metavar="REF", help="test reference images, "
                   "e.g. I01 I02 I03 (default)")
    g.add_argument("--test-fraction", type=float, help="random share of reference images")
    p.add_argument("--seed", type=int, default=0, help="seed for --test-fraction (default 0)")

    def run(a: argparse.Namespace) -> int:
        from nima.data import tid2013

        r = tid2013.build(a.mos_file, a.out_dir, test_refs=a.test_refs,
                          test_fraction=a.test_fraction, seed=a.seed)
        refs = " ".join(f"I{n:02d}" for n in r.test_refs)
        print(f"train: {len(r.train)} -> {a.out_dir / 'tid_labels_train.json'}")
        print(f"test: {len(r.test)} (references {refs}) -> {a.out_dir / 'tid_labels_test.json'}")
        return EXIT_OK

    return run


@options.command("mos", help="score table (your CSV, KonIQ-10k, SPAQ, KADID-10k, LIVE, CSIQ, "
                 "TID2013, AVA, pyiqa metadata) -> label files")
def _data_mos(p: argparse.ArgumentParser) -> options.Run:
    """Columns by header name (image, mos/score/dmos, std, n, vote counts such as 'score
    1'..'score 10' or c1..c5, reference, split) or flag, or in the order image, mos,
    std, n without a header. Vote counts are the label; otherwise scores on --scale are
    mapped to 1..10 and spread by maximum entropy or as a discretised normal (needs
    std). --out-dir splits train/test without a reference image on both sides.
    """
    p.add_argument("csv_file", type=Path, metavar="FILE.csv",
                   help="one image per line; comma, semicolon, tab or spaces")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", type=Path, metavar="FILE.json", help="one label file, all rows")
    out.add_argument("--out-dir", type=Path, metavar="D", help="folder for PREFIX_train.json "
                     "and PREFIX_test.json (and PREFIX_val.json from an official split)")
    p.add_argument("--prefix", help="file name prefix in --out-dir (default: from FILE, e.g. "
                   "koniq_10k_labels)")
    p.add_argument("--scale", type=float, nargs=2, default=(1.0, 10.0), metavar=("LO", "HI"),
                   help="the score scale of the file (default 1 10)")
    p.add_argument("--method", choices=("maxent", "normal"), default="maxent",
                   help="maxent (default): maximum-entropy distribution with the mean; "
                   "normal: discretised N(mos, std), needs a std column")
    p.add_argument("--min-n", type=float, help="drop images rated fewer times (needs n or "
                   "vote counts)")
    p.add_argument("--invert", action="store_true", help="lower scores are better (e.g. "
                   "LIVE's DMOS): each score s is read as LO + HI - s")
    p.add_argument("--clip", action="store_true", help="clamp scores outside --scale to its "
                   "ends instead of stopping (LIVE's realigned DMOS runs from -3 to 112)")
    for role, what in (("image", "image path or name"), ("score", "mean score"),
                       ("std", "raters' standard deviation"), ("n", "number of ratings"),
                       ("reference", "reference image, for the split"),
                       ("split", "official split: train/training, val/validation, test")):
        p.add_argument(f"--{role}-column", metavar="NAME", help=f"column of the {what}: a "
                       "header name or a 1-based number (default: recognised header names)")
    p.add_argument("--vote-columns", nargs="+", metavar="NAME", default=(),
                   help="vote counts for ratings 1..K in order (default: columns like "
                   "'score 1'..'score 10' or c1..c5)")
    p.add_argument("--image-root", metavar="PREFIX", help="folder prefix of the file's image "
                   "paths that ids are relative to (default: the folder all paths share; '' "
                   "keeps whole paths)")
    p.add_argument("--test-fraction", type=float, metavar="F",
                   help="with --out-dir: random test share of reference images (or images "
                   "without references), default 0.2")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--test-ids", type=Path, metavar="FILE",
                   help="official split: file of test ids or file names")
    p.add_argument("--reference-pattern", metavar="REGEX", help="reference of each image "
                   "from its id when the file has no reference column, e.g. '^(I\\d+)_' "
                   "(group 1, or the whole match)")

    def run(a: argparse.Namespace) -> int:
        from nima.data import mos, table

        split_flags = (a.test_ids, a.prefix, a.reference_pattern, a.test_fraction)
        if a.out and any(f is not None for f in split_flags):
            raise UsageError("--test-fraction, --test-ids, --prefix and --reference-pattern "
                             "need --out-dir")
        columns = table.Columns(image=a.image_column, mos=a.score_column, std=a.std_column,
                                n=a.n_column, reference=a.reference_column,
                                split=a.split_column, votes=tuple(a.vote_columns))
        r = mos.convert(a.csv_file, a.out, out_dir=a.out_dir, prefix=a.prefix,
                        scale=tuple(a.scale), method=a.method, min_n=a.min_n,
                        invert=a.invert, clip=a.clip, columns=columns,
                        image_root=a.image_root, seed=a.seed,
                        test_fraction=0.2 if a.test_fraction is None else a.test_fraction,
                        test_ids=a.test_ids, reference_pattern=a.reference_pattern)
        source = (f"vote counts {r.from_votes[0]}..{r.from_votes[-1]}" if r.from_votes
                  else f"scores on {a.scale[0]:g}..{a.scale[1]:g}"
                  + (", inverted" if a.invert else "") + f", {a.method}")
        extra = f"; {r.dropped_min_n} with n < {a.min_n:g} dropped" if r.dropped_min_n else ""
        extra += f"; {r.clipped} scores clipped to the scale" if r.clipped else ""
        print(f"{a.csv_file}: {r.rows} images ({source}){extra}")
        if r.image_root:
            print(f"ids are relative to {r.image_root} (use that folder as --image-dir)")
        if r.split:
            print(f"split: {r.split}")
        for part, (file, n) in r.files.items():
            print(f"{part}: {n} -> {file}" if part != "all" else f"{n} of {r.rows} images "
                  f"-> {file}")
        return EXIT_OK

    return run


@options.command("undersample", help="at most N images per rating bin")
def _data_undersample(p: argparse.ArgumentParser) -> options.Run:
    """Keep at most N images per rating bin (mean score rounded to 1..10), chosen with a seed;
    rows keep their order and raw labels.
    """
    p.add_argument("labels", type=Path, metavar="LABELS", help="label file")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.json",
                   help="the undersampled label file to write")
    p.add_argument("--max-per-bin", type=int, required=True, metavar="N",
                   help="keep at most N images per rating bin")
    p.add_argument("--seed", type=int, default=0, help="which images are kept (default 0)")

    def run(a: argparse.Namespace) -> int:
        from nima.data.undersample import undersample

        r = undersample(a.labels, a.out, a.max_per_bin, a.seed)
        print("bin  before  after")
        for b in r.before:
            print(f"{b:3d} {r.before[b]:7d} {r.after[b]:6d}")
        print(f"{sum(r.after.values())} of {sum(r.before.values())} images -> {a.out}")
        return EXIT_OK

    return run


@options.command("check", help="find bad rows and missing/broken/tiny images")
def _data_check(p: argparse.ArgumentParser) -> options.Run:
    """Report every bad label row (with its index), duplicate id, missing, unreadable,
    truncated and tiny image. Exit code 3 if any.
    """
    p.add_argument("labels", type=Path, metavar="LABELS", help="label file")
    p.add_argument("--image-dir", type=Path, help="folder with <image_id>.<ext> files "
                   "(without it only the rows are checked)")
    p.add_argument("--write-clean", type=Path, metavar="OUT", help="write only the good rows")
    p.add_argument("--full-decode", action="store_true",
                   help="decode every image (slow) instead of header and end-marker checks")
    p.add_argument("--min-size", type=int, default=0, metavar="PX",
                   help="images with a side shorter than PX are 'tiny'")
    p.add_argument("--workers", type=int, help="threads (default 4 per CPU, at most 32)")
    p.add_argument("--report", type=Path, metavar="FILE.json", help="every problem as JSON")

    def run(a: argparse.Namespace) -> int:
        from dataclasses import asdict

        from nima import files
        from nima.data.check import check, format_summary

        r = check(a.labels, a.image_dir, full_decode=a.full_decode, min_size=a.min_size,
                  workers=a.workers, write_clean=a.write_clean)
        print(format_summary(r, a.labels))
        if a.report:
            files.write_json(a.report, {"rows": r.rows, "good": len(r.good),
                                        "counts": r.counts(),
                                        "problems": [asdict(x) for x in r.problems]})
        if a.write_clean:
            print(f"{len(r.good)} good rows -> {a.write_clean}")
        return EXIT_PARTIAL if r.problems else EXIT_OK

    return run


@options.command("stats", help="counts, votes per image, mean-score histogram")
def _data_stats(p: argparse.ArgumentParser) -> options.Run:
    """Summarise a label file; --png also draws the histogram."""
    p.add_argument("labels", type=Path, metavar="LABELS", help="label file")
    p.add_argument("--png", type=Path, metavar="OUT.png", help="histogram as a PNG")

    def run(a: argparse.Namespace) -> int:
        from nima.data import stats

        st = stats.compute(a.labels)
        print(stats.format_text(st))
        if a.png:
            stats.write_png(st, a.png)
            print(f"histogram -> {a.png}")
        return EXIT_OK

    return run


@options.command("distort", help="make a technical-quality dataset from pristine photos")
def _data_distort(p: argparse.ArgumentParser) -> options.Run:
    """From pristine photos, write random crops with Gaussian blur, Gaussian noise, JPEG
    compression and contrast/exposure change at 5 levels each, label files (mean score
    8.5 pristine falling to 2.0 at level 5) split train/test by source photo, and a
    manifest. See docs/technical-model.md.
    """
    p.add_argument("--source", type=Path, required=True, help="folder of pristine photos")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: images/, labels_train.json, labels_test.json, "
                   "manifest.json")
    p.add_argument("--seed", type=int, default=0, help="crops, noise and split (default 0)")
    p.add_argument("--crops", type=int, default=8, help="random crops per photo (default 8)")
    p.add_argument("--size", type=int, default=192, help="crop side in pixels (default 192)")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="fraction of source photos held out for testing (default 0.2)")

    def run(a: argparse.Namespace) -> int:
        from nima.data.distort import distort_dataset

        m = distort_dataset(a.source, a.out, seed=a.seed, crops=a.crops, size=a.size,
                            test_fraction=a.test_fraction)
        n_test = sum(s["split"] == "test" for s in m["sources"])
        print(f"{len(m['sources'])} source photos ({n_test} held out): "
              f"{m['n_images']['train']} training and {m['n_images']['test']} test images "
              f"in {a.out}")
        return EXIT_OK

    return run


# `nima data <tool>`: one adder per tool, in help order; append new tools here.
DATA_COMMANDS: list[Callable] = [
    _data_ava, _data_tid2013, _data_mos, _data_undersample, _data_check, _data_stats,
    _data_distort]


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset tools: AVA, TID2013, MOS files, checks, stats, "
                       "distort",
                       description="Make, clean and inspect label files.")
    data_sub = p.add_subparsers(dest="data_command", metavar="TOOL", required=True)
    for tool in DATA_COMMANDS:
        options.install(data_sub, tool)
