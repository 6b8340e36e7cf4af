"""``mldiff <step>``: one subcommand per pipeline step, thin wrappers over the package.

Every step reads the validated ``params.yaml`` (``--params``) and takes explicit input and
output paths, so a Snakemake rule or a DVC stage is a one-line call. Outputs are written
atomically. Bad input ends with one line ``mldiff: error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import io as textio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mldiff import __version__, config, io
from mldiff.errors import MldiffError, one_line

log = logging.getLogger("mldiff")


def _params_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", type=Path, help="params file")


def guard(inputs: Mapping[str, Path | None], outputs: Mapping[str, Path],
          folders: Mapping[str, Path] | None = None) -> None:
    """Refuse, before anything runs, an output (file, or in ``folders`` a directory) that is an
    input, overlaps an input folder or another output, or cannot be written there: an existing
    directory where a file goes, a parent that is a file, a folder that is not writable (or on
    a read-only file system). Keys are the command-line flags that the messages name."""
    folders = dict(folders or {})
    ins = {flag: path.resolve() for flag, path in inputs.items() if path is not None}
    seen: dict[Path, str] = {}
    for flag, out in {**outputs, **folders}.items():
        where = out.resolve()
        is_folder = flag in folders
        for in_flag, path in ins.items():
            if where == path or (is_folder and (path.is_relative_to(where)
                                                or where.is_relative_to(path))):
                raise MldiffError(f"{flag} {out}: overlaps {in_flag} {inputs[in_flag]}; an output "
                                  "must not overwrite an input")
        if where in seen:
            raise MldiffError(f"{flag} {out}: is also {seen[where]}; give distinct outputs")
        seen[where] = flag
        if out.is_dir() and not is_folder:
            raise MldiffError(f"{flag} {out}: is a directory; expected a file path")
        if is_folder and out.exists() and not out.is_dir():
            raise MldiffError(f"{flag} {out}: is a file; expected a folder")
        parent = where if is_folder else where.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise MldiffError(f"{flag} {out}: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise MldiffError(f"{flag} {out}: folder {parent} is not writable")


def power_of_two(flag: str, n: int, low: int = 4, high: int = 4096) -> int:
    """``n`` if it is a power of two in ``[low, high]``; else one line naming ``flag``."""
    if not (low <= n <= high and n & (n - 1) == 0):
        raise MldiffError(f"{flag} {n}: expected a power of two from {low} to {high}")
    return n


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; an option's default (when it has one) shown."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, argparse.SUPPRESS) or action.required:
            return action.help or ""
        return f"{action.help} (default: {action.default})"


# One example per step, as the Snakemake rules and DVC stages call them (README "The pipeline").
EXAMPLES = {
    "simulate": "mldiff simulate --out data/raw/simulation.nc",
    "store": "mldiff store --input data/raw/simulation.nc --level 32 --out data/store/level_32.nc",
    "reference": "mldiff reference --store data/store --resolution 128 "
                 "--out data/reference/n128.nc",
    "train": "mldiff train --run fno_matern_l16 --store data/store "
             "--out data/models/fno_matern_l16/model.pt --resume",
    "sample": "mldiff sample --model data/models/fno_matern_l16/model.pt --resolution 64 "
              "--out data/samples/fno_matern_l16/n64.nc",
    "evaluate": "mldiff evaluate --store data/store --samples data/samples --models data/models "
                "--reference data/reference --out data/results",
    "report": "mldiff report --results data/results --out data/results/report.html",
    "schema": "mldiff schema --out workflow/schemas/params.schema.json",
    "preset": "mldiff preset tiny",
}


def cmd_simulate(args: argparse.Namespace) -> None:
    """Simulate the configured PDE, or import ``data.source``, into the raw dataset."""
    from mldiff.datasets import read_source
    from mldiff.pde import simulate_dataset

    params = config.load_params(args.params)
    source = params.data.source
    guard({"--params": args.params, "data.source.path": source and Path(source.path)},
          {"--out": args.out})
    if source is not None:
        ds = read_source(**source.model_dump())
        absent = [s for s in params.store.species if s not in ds.data_vars]
        if absent:
            raise MldiffError(f"{source.path}: store.species {absent} are not among its variables "
                              f"over the sample, y and x dims {sorted(map(str, ds.data_vars))}")
        size = ds.sizes["x"]
        try:
            params.check_split(ds.sizes["sample"], source.path)
        except ValueError as exc:
            raise MldiffError(str(exc)) from None
        bad = [n for n in params.store.levels if size % n or (size // n) & (size // n - 1)]
        if bad:
            raise MldiffError(f"{source.path}: grid {size}x{size} is not a power-of-two multiple "
                              f"of store.levels {bad}")
        log.info("imported %s (%d samples)", source.path, ds.sizes["sample"])
    else:
        pde = params.pde
        ds = simulate_dataset(pde.system, pde.parameters, pde.n, pde.times, pde.n_samples,
                              params.seed, **pde.solver_kwargs())
    ds.attrs.update(io.provenance(config.step_params(params, "simulate")))
    io.write_netcdf(ds, args.out)
    log.info("wrote %s", args.out)


def cmd_store(args: argparse.Namespace) -> None:
    """Build one level of the multiresolution store from the raw dataset."""
    from mldiff.datasets import build_level, read_source

    params = config.load_params(args.params)
    if args.level not in params.store.levels:
        raise MldiffError(f"--level {args.level}: not in store.levels {params.store.levels}")
    guard({"--params": args.params, "--input": args.input}, {"--out": args.out})
    imported = params.data.source is not None
    source = read_source(
        args.input,
        variables=params.store.species,
        time=None if imported else {"dim": "time", "value": params.store.time},
    )
    level = build_level(
        source,
        args.level,
        method=params.store.method,
        species=params.store.species,
        split=list(params.store.split.model_dump().values()),
        seed=params.store.seed,
        params=config.step_params(params, "store"),
    )
    io.write_netcdf(level, args.out)
    log.info("wrote level %d to %s", args.level, args.out)


def cmd_reference(args: argparse.Namespace) -> None:
    """Simulate reference data on a grid finer than the store (reference.resolutions)."""
    from mldiff.datasets.reference import build_reference

    params = config.load_params(args.params)
    if args.resolution not in params.reference.resolutions:
        raise MldiffError(f"--resolution {args.resolution}: not in reference.resolutions "
                          f"{params.reference.resolutions}")
    level = args.store / f"level_{params.store.levels[-1]}.nc"
    guard({"--params": args.params, "--store": args.store}, {"--out": args.out})
    ds = build_reference(params, level, args.resolution)
    io.write_netcdf(ds, args.out)
    log.info("wrote %s (relative L2 difference to the store at its finest level: %.3g)",
             args.out, ds.attrs["relative_l2_to_store"])


def _level_paths(params: config.Params, store: Path) -> dict[int, Path]:
    return {n: store / f"level_{n}.nc" for n in params.store.levels}


def cmd_train(args: argparse.Namespace) -> None:
    """Train one run (per-level or multilevel) on the store's levels."""
    from mldiff.train import TRAIN_SIDE_OUTPUTS, train_run

    params = config.load_params(args.params)
    if args.run not in params.train.runs:
        raise MldiffError(f"--run {args.run!r}: not in train.runs {sorted(params.train.runs)}")
    levels = _level_paths(params, args.store)
    checkpoint = args.checkpoint or args.out.with_name("checkpoint.pt")
    guard({"--params": args.params, "--store": args.store,
           **{f"--store level {n}": path for n, path in levels.items()}},
          {"--out": args.out, "--checkpoint": checkpoint,
           **{f"{name} beside --out": args.out.with_name(name) for name in TRAIN_SIDE_OUTPUTS}})
    if params.train.processes > 1 and "LOCAL_RANK" not in os.environ:
        _relaunch_with_torchrun(params.train.processes, args.argv)
        return
    summary = train_run(params, args.run, levels, args.out, checkpoint, resume=args.resume)
    log.info("trained %s: %s", args.run, summary)


def _relaunch_with_torchrun(processes: int, argv: list[str]) -> None:
    """Run this same command as ``processes`` data-parallel ranks (torchrun's launcher, called
    as a library: its command line would misread our ``--run`` as its ``--run-path``)."""
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config_ = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=uuid.uuid4().hex,
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
    )
    log.info("launching %d data-parallel processes", processes)
    try:
        elastic_launch(config_, sys.executable)("-m", "mldiff.cli", *argv)
    except Exception as exc:  # noqa: BLE001 - ChildFailedError carries the ranks' exit codes
        raise MldiffError(f"train: a data-parallel rank failed ({type(exc).__name__}); "
                          "see the ranks' errors above") from None


def cmd_sample(args: argparse.Namespace) -> None:
    """Draw fields from a trained model at one resolution."""
    from mldiff.sample import generate

    params = config.load_params(args.params)
    power_of_two("--resolution", args.resolution)
    guard({"--params": args.params, "--model": args.model}, {"--out": args.out})
    cfg = params.sample
    ds = generate(
        args.model,
        args.resolution,
        sampler=cfg.sampler,
        steps=cfg.steps,
        n_samples=cfg.n_samples,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        device=cfg.device,
    )
    ds.attrs.update(io.provenance(config.step_params(params, "sample")))
    io.write_netcdf(ds, args.out)
    log.info("wrote %s", args.out)


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Compare every run's samples with held-out data at every resolution (+ reference rows)."""
    from mldiff.evaluate import evaluate

    params = config.load_params(args.params)
    guard({"--params": args.params, "--store": args.store, "--samples": args.samples,
           "--models": args.models, "--reference": args.reference}, {}, {"--out": args.out})
    evaluate(params, args.store, args.samples, args.models, args.out,
             reference_dir=args.reference)
    log.info("wrote results to %s", args.out)


def cmd_report(args: argparse.Namespace) -> None:
    """Write the self-contained HTML report from the evaluation results."""
    from mldiff.evaluate import write_report

    params = config.load_params(args.params)
    guard({"--params": args.params, "--results": args.results}, {"--out": args.out})
    write_report(params, args.results, args.out)
    log.info("wrote %s", args.out)


def cmd_schema(args: argparse.Namespace) -> None:
    """Write the JSON schema of params.yaml (used by Snakemake's ``validate``)."""
    import json

    guard({}, {"--out": args.out})
    io.write_text(args.out, json.dumps(config.json_schema(), indent=2, sort_keys=True) + "\n")


def cmd_preset(args: argparse.Namespace) -> None:
    """Write params.yaml as the defaults overridden by a preset file (``default``: none),
    keeping the comments of the file it replaces."""
    base, inputs = config.Params().model_dump(mode="json"), {}
    if args.name != "default":
        path = config.PRESETS_DIR / f"{args.name}.yaml"
        names = sorted(p.stem for p in config.PRESETS_DIR.glob("*.yaml"))
        if args.name not in names:
            raise MldiffError(f"preset {args.name!r}: not one of default, "
                              f"{', '.join(names)} (the files of {config.PRESETS_DIR})")
        base, inputs = config.deep_merge(base, config.read_yaml(path), depth=2), {"preset": path}
    guard(inputs, {"--out": args.out})
    config.validate(base, f"preset {args.name}")
    text = _commented_yaml(args.out, base)
    header = PRESET_LINE + f"{args.name!r} (written by `mldiff preset {args.name}`)\n"
    lines = [line for line in text.splitlines(keepends=True)
             if not line.startswith(PRESET_LINE)]
    io.write_text(args.out, ("" if args.name == "default" else header) + "".join(lines))
    log.info("wrote %s from preset %s", args.out, args.name)


PRESET_LINE = "# mldiff params: preset "
COMMENT_COLUMN = 29  # where params.yaml's end-of-line comments start


def _commented_yaml(path: Path, values: dict) -> str:
    """``values`` as YAML in the layout of the file at ``path``: its comments, key order and
    flow style kept where its keys remain (a plain dump when there is no readable file)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    def flow(value: Any) -> Any:
        if isinstance(value, dict | list):
            node = (CommentedMap((k, flow(v)) for k, v in value.items())
                    if isinstance(value, dict) else CommentedSeq(flow(v) for v in value))
            node.fa.set_flow_style()
            return node
        return value

    def update(node: CommentedMap, target: dict, indent: int = 0) -> None:
        for key in [k for k in node if k not in target]:
            del node[key]
        for key, value in target.items():
            old = node.get(key)
            if isinstance(value, dict) and isinstance(old, CommentedMap):
                update(old, value, indent + 2)
            elif key not in node or old != value or type(old) is not type(value):
                node[key] = flow(value)
                token = (node.ca.items.get(key) or [None] * 3)[2]
                if token is not None:  # the file's column, or two spaces after a long value
                    text = yaml.safe_dump(value, default_flow_style=True, width=4096)
                    width = indent + len(f"{key}: {text.removesuffix('...').strip()}")
                    token.column = max(COMMENT_COLUMN, width + 2)
            node.move_to_end(key)

    rt = YAML()
    rt.width = 4096
    rt.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    try:
        doc = rt.load(Path(path).read_text())
    except Exception:  # noqa: BLE001 - missing or unreadable: nothing to keep
        doc = None
    if not isinstance(doc, CommentedMap):
        return yaml.safe_dump(values, sort_keys=False)
    update(doc, values)
    buf = textio.StringIO()
    rt.dump(doc, buf)
    return buf.getvalue()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mldiff", description="Multilevel diffusion pipeline: one subcommand per step."
    )
    parser.add_argument("--version", action="version", version=f"mldiff {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<step>")

    def step(name: str, func) -> argparse.ArgumentParser:
        summary = func.__doc__.split("\n\n")[0].replace("``", "`")
        p = sub.add_parser(name, help=summary, description=summary,
                           epilog=f"example:\n  {EXAMPLES[name]}", formatter_class=_HelpFormatter)
        p.set_defaults(func=func)
        return p

    p = step("simulate", cmd_simulate)
    _params_arg(p)
    p.add_argument("--out", required=True, type=Path, help="raw dataset (NetCDF)")

    p = step("store", cmd_store)
    _params_arg(p)
    p.add_argument("--input", required=True, type=Path, help="raw dataset from `simulate`")
    p.add_argument("--level", required=True, type=int, help="grid size n of the level")
    p.add_argument("--out", required=True, type=Path, help="level file (NetCDF)")

    p = step("reference", cmd_reference)
    _params_arg(p)
    p.add_argument("--store", required=True, type=Path, help="folder of level_<n>.nc files")
    p.add_argument("--resolution", required=True, type=int, help="grid size n of the reference")
    p.add_argument("--out", required=True, type=Path, help="reference file (NetCDF)")

    p = step("train", cmd_train)
    _params_arg(p)
    p.add_argument("--run", required=True, help="name in train.runs")
    p.add_argument("--store", required=True, type=Path, help="folder of level_<n>.nc files")
    p.add_argument("--out", required=True, type=Path, help="trained model file (.pt)")
    p.add_argument("--checkpoint", type=Path, help="default: checkpoint.pt beside --out")
    p.add_argument("--resume", action="store_true", help="continue from a matching checkpoint")

    p = step("sample", cmd_sample)
    _params_arg(p)
    p.add_argument("--model", required=True, type=Path, help="trained model file")
    p.add_argument("--resolution", required=True, type=int, help="output grid size n")
    p.add_argument("--out", required=True, type=Path, help="samples (NetCDF)")

    p = step("evaluate", cmd_evaluate)
    _params_arg(p)
    p.add_argument("--store", required=True, type=Path, help="folder of level_<n>.nc files")
    p.add_argument("--samples", required=True, type=Path, help="folder of <run>/n<res>.nc")
    p.add_argument("--models", required=True, type=Path, help="folder of <run>/train.json")
    p.add_argument("--reference", type=Path, help="folder of n<res>.nc from `reference` "
                   "(needed when reference.resolutions is set)")
    p.add_argument("--out", required=True, type=Path, help="results folder")

    p = step("report", cmd_report)
    _params_arg(p)
    p.add_argument("--results", required=True, type=Path, help="folder written by evaluate")
    p.add_argument("--out", required=True, type=Path, help="HTML report")

    p = step("schema", cmd_schema)
    p.add_argument("--out", required=True, type=Path, help="schema file (JSON)")

    p = step("preset", cmd_preset)
    p.add_argument("name", help="preset name in workflow/presets/, or 'default'")
    p.add_argument("--out", default="params.yaml", type=Path, help="params file to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.threads is not None:
            if not 1 <= args.threads <= 1024:
                raise MldiffError(f"--threads {args.threads}: expected 1 to 1024")
            import torch

            torch.set_num_threads(args.threads)
        args.func(args)
    except MldiffError as exc:
        print(f"mldiff: error: {one_line(exc, 1000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside training (which checkpoints first, see train.stop_flag)
        print(f"mldiff: error: {args.command}: interrupted (Ctrl-C); outputs are written "
              "atomically, so nothing partial was left", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
