"""The ``negset`` command line: one sub-command per step, plus ``build`` and ``check``."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

from negset import __version__
from negset.core.errors import NegsetError
from negset.pipeline import STEPS

EPILOG = """\
examples:
  negset init pets --positives labels.json --images photos/ --target dog
                                    a project of your own (params.yaml, dvc.yaml, git + dvc)
  negset check                      validate params.yaml and print the parsed values
  negset build                      run every step in one Prefect flow
  negset refresh                    ingest new objects, dvc repro, release when the set changed
  negset ingest                     run one step (what each dvc.yaml stage calls)
  negset select --no-prefect        run a step without Prefect (global options go before or after the command)
  negset --params other.yaml --json export
  negset report                     write data/negatives/report.html (open it in any browser, offline)
  negset export-coco                negatives as COCO images, merged into the positives' COCO file
  negset export-coco --no-merge --out negatives.json
  negset export-yolo --out /data/yolo-negatives
                                    Ultralytics layout: images/, labels/ (empty .txt), negatives.txt
  negset evaluate --target dog      chosen vs random negatives on a labelled pool
  negset check-tags --panoptic panoptic.json --masks panoptic/
                                    tags vs ground truth (panoptic labels, hand lighting labels)
  negset review                     review the quarantine and audit the negatives in a local web page
  negset review --reviewer ana --port 8765 --audit 100 --hardest 30
  dvc repro                         run the stages that changed, each through negset
"""

STEP_HELP = {
    "ingest": "pull candidates from the sources, pin and store them (data/ingest)",
    "embed": "one vector per image with a pretrained CNN (data/embed)",
    "detect": "object detections, the calibrated target threshold and each image's evidence (data/detect)",
    "tag": "lighting, background and occlusion tags (data/tags)",
    "select": "choose negatives with per-stratum quotas (data/select)",
    "export": "manifest, images, metrics and run record (data/negatives)",
    "report": "offline HTML report and DVC plots (data/negatives/report.html, plots/)",
}


def _global_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The options every command takes, before or after its name (``negset --json ingest`` = ``negset ingest --json``).

    After the command they are added with no default, so a value given before
    the command is not overwritten by the sub-command's default.
    """
    def default(value):
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--params", default=default("params.yaml"), help="parameters file (default: params.yaml)")
    parser.add_argument("--root", default=default(None), help="project folder holding data/ (default: the params file's folder)")
    parser.add_argument("--json", action="store_true", default=default(False), help="print the step's summary as JSON on stdout")
    parser.add_argument(
        "--no-prefect",
        action="store_true",
        default=default(os.environ.get("NEGSET_NO_PREFECT") == "1"),
        help="run without Prefect (also NEGSET_NO_PREFECT=1)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", default=default(False), help="only warnings and errors")


# Long: the declarative list of every subcommand and its options (one place for the help text).
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="negset",
        description="Build the negative half of a computer-vision dataset.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _global_options(p, defaults=True)
    p.add_argument("--version", action="version", version=f"negset {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, defaults=False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    _add_init(add)
    for step in STEPS:
        add(step, help=STEP_HELP[step], description=STEP_HELP[step])
    coco = add(
        "export-coco",
        help="the negatives as a COCO file (merged into the positives' COCO file when there is one)",
        description="Write the negatives as COCO images without annotations. When the positives are a COCO "
        "file, the output is a copy of it with the negatives added (new unique image ids; every original "
        "image, annotation and category kept). file_name is relative to the image root.",
        epilog="examples:\n  negset export-coco\n  negset export-coco --positives train.json --image-root images/train "
        "--out train_with_negatives.json\n  negset --json export-coco --no-merge --out negatives.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    coco.add_argument("--out", help="output JSON (default: data/exports/coco/instances.json)")
    coco.add_argument("--positives", help="COCO file to merge into (default: ingest.positives.path when its format is coco)")
    coco.add_argument("--no-merge", action="store_true", help="write the negatives alone, not merged")
    coco.add_argument("--image-root", help="folder file_name is relative to (default: ingest.positives.images when merging, else data/negatives/images)")
    yolo = add(
        "export-yolo",
        help="the negatives in the Ultralytics YOLO layout (images/, empty labels/, negatives.txt)",
        description="Write images/ and labels/ siblings with matching stems (one empty .txt per negative: no "
        "objects) and negatives.txt, the image list; add the folder or the list to train: in data.yaml.",
        epilog="examples:\n  negset export-yolo\n  negset export-yolo --out /data/yolo-negatives",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    yolo.add_argument("--out", help="output folder (default: data/exports/yolo); replaced whole on each export")
    add("build", help="run all steps in order, in one flow run")
    add("check", help="validate the parameters file")
    ev = add(
        "evaluate",
        help="on a labelled pool: chosen vs random, oracle and plain-similarity negatives, per proxy probe",
        description="Compare the chosen negatives with random ones, an oracle set (confuser images first) and a "
        "plain-similarity reference of the same size on a labelled pool (run ingest, embed, detect and tag first), "
        "with each proxy probe (regions, image, detector), and say whether each proxy can see the oracle's benefit. "
        "Writes data/evaluate/TARGET.json (every seed and parameter).",
    )
    ev.add_argument("--target", help="class to evaluate (default: the first ingest.target)")
    ev.add_argument("--confusers", help="comma-separated classes easily confused with the target (default: the other classes of "
                    "its COCO supercategory and known cross-category confusers, negset/tools/confusers.py)")
    ev.add_argument("--seeds", type=int, default=50, help="random splits to average over (default 50)")
    ev.add_argument("--count", type=int, help="negatives per split (default: select.count / select.ratio)")
    ct = add(
        "check-tags",
        help="agreement of the tags with ground truth: panoptic stuff labels, hand lighting labels, masks",
        description="After `negset tag` on a labelled project: background clusters vs COCO panoptic stuff labels "
        "(indoor/outdoor accuracy, purity, AMI), lighting vs hand labels, occlusion from boxes vs from masks. "
        "Writes data/tags/agreement.json.",
    )
    ct.add_argument("--panoptic", help="COCO panoptic JSON (default: tag.background.panoptic.json)")
    ct.add_argument("--masks", help="folder of the panoptic PNGs (default: tag.background.panoptic.masks)")
    ct.add_argument("--lighting-labels", help="CSV file,lighting,note (default: examples/lighting-labels-coco128.csv)")
    add("refresh", help="ingest new objects, dvc repro, and release (dvc push, commit, tag) when the set changed")
    rv = add(
        "review",
        help="a local web page to review the quarantine and audit the chosen negatives (decisions: reviews.csv)",
        description="Start a web server on 127.0.0.1 over the built project: the quarantine (suspected positives), "
        "a seeded random audit sample of the chosen negatives and optionally the hardest ones. Keys: n no target, "
        "t contains the target, u unsure, arrows move, z undo. Each decision is appended at once to reviews.csv "
        "in the project (commit it); `dvc repro` then rebuilds what depends on it.",
        epilog="examples:\n  negset review\n  negset review --reviewer ana --port 8765\n"
        "  negset review --audit 100 --hardest 30",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rv.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    rv.add_argument("--audit", type=int, default=50, metavar="N", help="random chosen negatives to audit (default 50)")
    rv.add_argument("--hardest", type=int, default=0, metavar="N", help="also review the N hardest chosen negatives (default 0: off)")
    rv.add_argument("--reviewer", help="name written with each decision (default: the user name)")
    return p


def _add_init(add) -> None:
    init = add(
        "init",
        help="start a project of your own: params.yaml, dvc.yaml, .gitignore files, prefect.yaml, git + dvc",
        description=textwrap.fill("Create a negset project in DIR (default: here): a commented params.yaml with every section, "
        "a dvc.yaml whose stages depend on your data, their params sections and negset.lock (the negset version), "
        "data/.gitignore, prefect.yaml; git init and dvc init when DIR is not a repository yet, and a local DVC "
        "remote (.dvc-remote/) when there is no default remote. Files that exist are kept as they are, so running "
        "it again changes nothing (after an upgrade it records the new version in negset.lock). Asks for what is "
        "missing only when a terminal is attached.", 100),
        epilog="examples:\n  negset init pets --positives /data/pets/instances.json --images /data/pets/images "
        "--target dog\n  negset init --positives labels/ --format yolo --classes classes.txt --target car "
        "--source /data/raw --source s3://bucket/raw/\n  negset init            (in a project, after upgrading "
        "negset: records the new version)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument("dir", nargs="?", default=".", help="project folder (created when missing; default: here)")
    init.add_argument("--positives", help="the COCO JSON, the YOLO label folder, or a list (text/CSV) of image paths")
    init.add_argument("--format", choices=("coco", "yolo", "list"), help="format of --positives (default: from it: "
                      ".json coco, a folder yolo, .txt/.csv list)")
    init.add_argument("--target", action="append", default=[], help="class the negatives must not contain (repeat, "
                      "or comma-separated)")
    init.add_argument("--source", action="append", default=[], help="where candidates come from: a folder, "
                      "s3://BUCKET/PREFIX or a URL list file (repeat; default: the positives' own folders)")
    init.add_argument("--images", help="coco/yolo: the image folder the labels refer to (default: images/ beside "
                      "the labels)")
    init.add_argument("--classes", help="yolo: the class names file (default: classes.txt or data.yaml beside the labels)")
    init.add_argument("--remote", help="DVC remote URL or folder when there is none (default: a folder in the "
                      "project, .dvc-remote/)")


def _init(args) -> dict:
    from negset.tools import init as project_init

    targets = [t.strip() for value in args.target for t in value.split(",") if t.strip()]
    opts = project_init.Options(folder=Path(args.dir), positives=args.positives, format=args.format, target=targets,
                                sources=args.source, images=args.images, classes=args.classes, remote=args.remote)
    ask = project_init.terminal_prompt if project_init.interactive() else None
    result = project_init.init(opts, ask)
    if not args.json:
        print(project_init.text_summary(result))
    return {k: v for k, v in result.items() if k != "report"}


def _project_check(params, root: str) -> None:
    """Warn when negset.lock or dvc.yaml lag behind (an upgrade not recorded, a data folder not a dep)."""
    from negset.tools.project import missing_deps, version_warning

    for warning in [version_warning(Path(root))] + missing_deps(params, Path(root)):
        if warning:
            logging.getLogger("negset").warning("%s", warning)


def _setup_logging(quiet: bool) -> None:
    logger = logging.getLogger("negset")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s negset %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def _run(args) -> dict:
    if args.command == "init":  # before any params.yaml exists
        return _init(args)
    from negset.core.config import load_params
    from negset.pipeline import run_step

    params = load_params(args.params)  # fail fast, before any orchestration starts
    root = str(Path(args.root).resolve()) if args.root else str(Path(args.params).resolve().parent)
    params_path = str(Path(args.params).resolve())
    _project_check(params, root)
    if args.command == "check":
        return params.model_dump(mode="json")
    if args.command in ("export-coco", "export-yolo"):  # quick file writes: no orchestration
        from negset.core.layout import Layout
        from negset.export import formats as exports

        layout = Layout.at(root)
        if args.command == "export-coco":
            return exports.coco(params, layout, out=args.out, positives=args.positives, merge=not args.no_merge, image_root=args.image_root)
        return exports.yolo(params, layout, out=args.out)
    if args.command == "evaluate":
        from negset.core.layout import Layout
        from negset.tools.evaluate import evaluate, report

        if args.seeds < 1 or (args.count is not None and args.count < 1):
            raise NegsetError("--seeds and --count must be at least 1")
        confusers = [c.strip() for c in args.confusers.split(",") if c.strip()] if args.confusers else None
        result = evaluate(params, Layout.at(root), args.target, confusers, args.seeds, args.count)
        if not args.json:
            print(report(result))
        return result
    if args.command == "check-tags":
        from negset.core.layout import Layout
        from negset.tools.tagcheck import check, report

        result = check(params, Layout.at(root), args.panoptic, args.masks, args.lighting_labels)
        if not args.json:
            print(report(result))
        return result
    if args.command == "review":  # writes reviews.csv only (locked per decision): no project lock
        from negset.core.layout import Layout
        from negset.review.server import serve

        if not 0 <= args.port <= 65535 or args.audit < 0 or args.hardest < 0:
            raise NegsetError("--port must be 0..65535, --audit and --hardest at least 0")
        target = ", ".join(params.ingest.target)
        return serve(Layout.at(root), target, port=args.port, audit=args.audit, hardest=args.hardest, reviewer=args.reviewer)
    if args.command == "refresh":  # takes the project lock itself and hands it to `dvc repro`
        if args.no_prefect:
            from negset.tools.release import refresh

            return refresh(root)
        from flows.refresh import refresh

        return refresh(root=root)
    if args.no_prefect:
        from negset.core.lean import skip_pandas
        from negset.core.lock import project_lock

        skip_pandas()  # the steps never use pandas; pyarrow would import it anyway
        with project_lock(Path(root) / "data", f"negset {args.command}"):
            if args.command == "build":
                return {step: run_step(step, params_path, root) for step in STEPS}
            return run_step(args.command, params_path, root)
    from flows import build as flows_build
    from negset.core.lock import project_lock

    with project_lock(Path(root) / "data", f"negset {args.command}"):  # held across all steps of a build
        if args.command == "build":
            return flows_build.build(params_path=params_path, root=root)
        if args.command in ("embed", "detect") and (params.embed.dask_workers or params.embed.dask_address):
            # detect reuses embed's cluster settings (flows/distributed.py says why)
            from flows import distributed

            run = distributed.embed_distributed if args.command == "embed" else distributed.detect_distributed
            return run(params_path=params_path, root=root)
        return flows_build.stage(step=args.command, params_path=params_path, root=root)


def _quiet_orchestration() -> None:
    """No telemetry from Prefect or DVC: negset runs where only the package registries are reachable."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # the temporary local API can take longer than Prefect's 20 s default to start on a busy machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _fewer_collections() -> None:
    """Collect cyclic garbage every 100,000 new objects instead of every 700.

    A step builds rows for every image of the pool (dicts, lists, strings)
    that live until it ends; with CPython's default threshold the collector
    re-walks them hundreds of times. At 10,000 images that was 0.03-0.3 s of
    each `negset STEP` process, 0.93 s of a `dvc repro` refresh's seven, and
    0.30 s after this, mostly while the modules import (gc.callbacks). The
    objects alive at start-up (the imported modules) are frozen out of the
    collector's walks too. Only this command line does so, not ``import negset``.
    """
    gc.freeze()
    threshold, *older = gc.get_threshold()
    gc.set_threshold(max(threshold, 100_000), *older)


def main(argv: list[str] | None = None) -> int:
    _fewer_collections()
    _quiet_orchestration()
    args = _parser().parse_args(argv)
    _setup_logging(args.quiet)
    try:
        result = _run(args)
    except NegsetError as exc:
        print(f"negset: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # about a named file (read-only data/, a missing input): one line, no traceback
        from negset.core.errors import user_error

        error = user_error(exc)
        if error is None:
            raise
        print(f"negset: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("negset: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    elif args.command == "check":
        print(f"{args.params}: valid")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
