"""The options of `nima train` and `nima predict`, defined once for everything that takes them:
the `nima` command (nima.cli), the Docker launcher (./train-local, ./predict: nima.launch) and
the remote launcher (./train-remote: nima.remote), plus the image and device flags the two
launchers share.

An option is one `Option` in TRAIN or PREDICT: its argparse arguments, and what its value names
on disk (`Names`), which is all a launcher needs to check it on the host and mount it into a
container. Adding a predict option is one line in PREDICT; a launcher passes options that name
nothing on disk through unchanged.

Imports nothing heavy: the launchers run where only python3 and the docker SDK are installed.
"""

from __future__ import annotations

import argparse
import enum
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


class UsageError(Exception):
    """Options that do not go together, or one that is missing (a usage error, exit 2)."""


class Names(enum.Enum):
    """What an option's value names on the host, so a launcher can check and mount it."""

    FILE = "file"  # an input file, read-only
    DIR = "dir"  # an input folder, read-only
    FILE_OR_DIR = "file or dir"  # an input file or folder, read-only
    MODEL = "model"  # a model file or folder, read-only; or a model's bare name (not a path)
    OUTPUT_FILE = "output file"  # written atomically beside its final name; '-' is stdout
    NEW_JOB = "new job dir"  # train's output folder: created, read-write
    JOB = "job dir"  # an existing job folder, continued: read-write


@dataclass(frozen=True)
class Option:
    """One command-line option: argparse's arguments, and what its value names on disk."""

    flags: tuple[str, ...]
    arguments: Mapping[str, Any] = field(default_factory=dict)  # add_argument's keywords
    names: Names | None = None
    what: str = ""  # how an error message names the value, e.g. "config file"

    @property
    def flag(self) -> str:
        return self.flags[0]

    @property
    def dest(self) -> str:
        return self.arguments.get("dest") or self.flag.lstrip("-").replace("-", "_")

    def values(self, a: argparse.Namespace) -> list[Any]:
        """The values `a` holds for this option: none, one, or each of a repeated option."""
        value = getattr(a, self.dest, None)
        if value is None:
            return []
        return list(value) if self.arguments.get("action") == "append" else [value]


def option(*flags: str, names: Names | None = None, what: str = "", **arguments: Any) -> Option:
    return Option(flags, arguments, names, what)


MODEL_HELP = ("a shipped model's name (aesthetic, technical), a .keras model, a job or model "
              "directory, or weights (.weights.h5, Keras 2 .hdf5) with --config-file")

TRAIN: tuple[Option, ...] = (
    option("--config-file", type=Path, names=Names.FILE, what="config file",
           help="JSON config, e.g. models/MobileNet/config_aesthetic_cpu.json"),
    option("--samples-file", type=Path, names=Names.FILE, what="samples file",
           help='label JSON: [{"image_id": ..., "label": [10 numbers]}, ...]'),
    option("--image-dir", type=Path, names=Names.DIR, what="image directory",
           help="folder with <image_id>.<ext> files; with --resume, overrides the folder the "
           "job was started with"),
    option("--job-dir", type=Path, names=Names.NEW_JOB, what="job directory",
           help="output folder (default: train_jobs/<timestamp>)"),
    option("--resume", type=Path, metavar="JOB_DIR", names=Names.JOB, what="job directory",
           help="continue a stopped or killed job from its last completed epoch"),
    option("--init-model", type=Path, metavar="MODEL", names=Names.MODEL, what="init model",
           help="fine-tune a trained NIMA model of the config's base model: a shipped model's "
           "name (aesthetic), a .keras model, a job or model directory, or Keras 2 .hdf5 "
           "weights (idealo's); replaces the config's base_weights"),
)

PREDICT: tuple[Option, ...] = (
    option("--image-source", type=Path, required=True, names=Names.FILE_OR_DIR,
           what="image source", help="an image file, or a folder walked recursively"),
    option("--weights-file", "--model", dest="model", type=Path, metavar="MODEL",
           action="append", names=Names.MODEL, what="weights file",
           help=f"{MODEL_HELP}; repeat to average several models (an ensemble); default: "
           "aesthetic (idealo's AVA model)"),
    option("--also", type=Path, metavar="MODEL", action="append", default=[],
           names=Names.MODEL, what="model",
           help="also score with this model, as a separate score under \"scores\" (e.g. "
           "--also technical); each image is decoded once for all models"),
    option("--config-file", type=Path, names=Names.FILE, what="config file",
           help="training config for a weights file"),
    option("--batch-size", type=int, default=32, help="images per batch (default 32)"),
    option("--predictions-file", type=Path, names=Names.OUTPUT_FILE, what="predictions file",
           help="write results here (atomically; partial results beside it in FILE.partial "
           "while running; run metadata in FILE.meta.json); default or '-': stdout"),
    option("--format", choices=("json", "jsonl", "csv"),
           help="JSON array, JSON lines or CSV (default: from the suffix of --predictions-file, "
           ".jsonl/.ndjson or .csv, else json)"),
    option("--backend", choices=("auto", "keras", "tflite"), default="auto",
           help="auto (default): Keras on a GPU, TFLite/XNNPACK on CPU"),
    option("--workers", type=int, help="decoding threads (default: all CPUs)"),
    option("--num-shards", type=int, default=1,
           help="split the folder into N deterministic shards (by relative path)"),
    option("--shard-index", type=int, default=0, help="which shard to score (0..N-1)"),
    option("--resume", action="store_true", help="continue an interrupted run from FILE.partial"),
    option("--normalize", choices=("minmax",),
           help="rescale this run's mean scores to --range (default 1 10)"),
    option("--range", dest="norm_range", type=float, nargs=2, metavar=("LO", "HI"),
           help="target range of --normalize (default 1 10)"),
)

# What a new training job needs (--resume JOB_DIR instead continues one).
NEW_JOB_INPUTS = ("config_file", "samples_file", "image_dir")


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                options: Sequence[Option], notes: Mapping[str, str] | None = None,
                required: bool = True) -> None:
    """Add `options` to `parser`. notes: {flag: text} appended to an option's help, e.g. how
    a launcher treats its value. required=False: a launcher reports a missing option itself."""
    for o in options:
        arguments = dict(o.arguments)
        if notes and notes.get(o.flag):
            arguments["help"] = f"{arguments['help']} ({notes[o.flag]})"
        if not required:
            arguments.pop("required", None)
        parser.add_argument(*o.flags, **arguments)


def given(a: argparse.Namespace, dests: Sequence[str]) -> list[str]:
    """The flags (--like-this) of those of `dests` that `a` has a value for."""
    return [f"--{d.replace('_', '-')}" for d in dests if getattr(a, d, None) is not None]


def missing(a: argparse.Namespace, dests: Sequence[str]) -> list[str]:
    """The flags of those of `dests` that `a` lacks."""
    return [f"--{d.replace('_', '-')}" for d in dests if getattr(a, d, None) is None]


def check_train(a: argparse.Namespace) -> None:
    """Train's options among themselves; raises UsageError. (What the paths name is checked
    by whoever can see them: nima itself, or a launcher on the host.)"""
    if a.resume is None:
        lacking = missing(a, NEW_JOB_INPUTS)
        if lacking:
            raise UsageError(f"train needs {', '.join(lacking)} (or --resume JOB_DIR)")
        return
    if a.init_model is not None:
        raise UsageError("--init-model starts a new job; --resume continues one")
    ignored = given(a, ("config_file", "samples_file", "job_dir"))
    if ignored:  # they were silently ignored: e.g. a config with more epochs did nothing
        raise UsageError("--resume continues a job with the config.json and samples.json in "
                         f"its directory: {', '.join(ignored)} does not go with it")


# --- the launchers' own flags, shared by ./train-local, ./predict and ./train-remote ------------

LAUNCHER_FLAGS = ("--gpu", "--cpu", "--rebuild", "--detach")  # `nima` itself has none of them


def add_launcher_options(parser: argparse.ArgumentParser, detach: bool) -> None:
    """--gpu/--cpu and --rebuild; --detach where training can run on in the background."""
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--gpu", action="store_true", help="use the GPU image and all GPUs "
                        "(default for a *_gpu or mixed_precision config, and for resuming one)")
    device.add_argument("--cpu", action="store_true", help="use the CPU image even for a *_gpu "
                        "or mixed_precision config")
    parser.add_argument("--rebuild", action="store_true",
                        help="rebuild the image even if the engine has it")
    if detach:
        parser.add_argument("--detach", action="store_true",
                            help="leave training running in the background and print how to "
                            "follow it")


# --- subcommands --------------------------------------------------------------------------------

Run = Callable[[argparse.Namespace], int]


def command(name: str, help: str) -> Callable:
    """Mark a subcommand's adder: `add(parser) -> run` adds its arguments and returns what
    runs it; the adder's docstring is the command's --help description."""
    def mark(add: Callable[[argparse.ArgumentParser], Run]) -> Callable:
        add.command = (name, help)  # type: ignore[attr-defined]
        return add
    return mark


def install(sub: argparse._SubParsersAction, add: Callable) -> argparse.ArgumentParser:
    """Add a marked subcommand to `sub`."""
    name, help = add.command
    p = sub.add_parser(name, help=help, description=inspect.cleandoc(add.__doc__ or "") or None)
    p.set_defaults(run=add(p))
    return p
