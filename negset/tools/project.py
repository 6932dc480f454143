"""A negset project's files, generated: dvc.yaml, the params.yaml template, .gitignore files, prefect.yaml.

``dvc.yaml`` is written from ``negset.pipeline.STEPS`` and ``STAGES`` below
(what each stage reads and writes), so a new step is one entry here plus its
name in ``STEPS``. A user's project (``negset init``) depends on its data, its
``params.yaml`` sections and ``negset.lock`` (the installed negset's version:
an upgrade recorded there reruns every stage); this repository's own
``dvc.yaml`` (``dev=True``) also depends on negset's source files, the code each
stage runs (``tests/core/test_layering.py`` checks that list is complete).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from negset import __version__
from negset.core.config import Params, safe_load
from negset.core.errors import NegsetError
from negset.pipeline import STEPS

VERSION_FILE = "negset.lock"
PLOT_TEMPLATES = ("grouped_hbar", "grouped_vbar")


@dataclass(frozen=True)
class Path_:
    """A dvc.yaml path with its options and the comment written beside it."""

    path: str
    note: str = ""
    persist: bool = False
    cache: bool = True


@dataclass(frozen=True)
class Stage:
    deps: tuple[Path_, ...]  # files of earlier stages it reads
    outs: tuple[Path_, ...]
    params: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()  # other steps' reader modules it imports (dev deps)
    metrics: tuple[Path_, ...] = ()
    notes: tuple[str, ...] = field(default=())  # comment lines above the deps


IMAGES = Path_("data/ingest/images.parquet")
LABELS = Path_("data/ingest/labels.parquet")
TAGS = Path_("data/tags/tags.parquet")
REVIEWS = "reviews.csv"  # written by `negset review`; negset init writes its header

STAGES: dict[str, Stage] = {
    "ingest": Stage(
        deps=(),
        params=("ingest",),
        outs=(Path_("data/ingest", persist=True, note="kept between runs: a refresh fetches only new objects"),),
    ),
    "embed": Stage(
        deps=(Path_("data/ingest/images.parquet", note="the image list pins every stored object by sha256"),
              Path_("data/ingest/labels.parquet", note="the positives' target boxes (embed.regions)")),
        params=("embed",),
        outs=(Path_("data/embed"),),
    ),
    "detect": Stage(
        deps=(IMAGES, LABELS),
        params=("detect", "ingest.target", "ingest.positives"),
        outs=(Path_("data/detect"),),
        reads=("negset/tools/confusers.py",),
    ),
    "tag": Stage(
        deps=(IMAGES, LABELS, Path_("data/embed"), Path_("data/detect")),
        params=("tag",),
        reads=("negset/embed/store.py", "negset/detect/store.py", "negset/detect/names.py"),
        outs=(Path_("data/tags/tags.parquet"), Path_("data/tags/clusters.json"),
              Path_("data/tags/centroids.parquet", persist=True, note="kept: clusters stay stable on refreshes")),
    ),
    "select": Stage(
        deps=(IMAGES, Path_("data/embed"), TAGS,
              Path_("data/detect", note="the target evidence (rule detected_target, evidence hardness)"),
              Path_(REVIEWS, note="what `negset review` decided (a header-only file when nothing yet)")),
        params=("select",),
        reads=("negset/embed/store.py", "negset/tag/quality.py", "negset/tag/percentile.py", "negset/review/decisions.py",
               "negset/detect/store.py", "negset/detect/names.py"),
        outs=(Path_("data/select"),),
    ),
    "export": Stage(
        deps=(IMAGES, Path_("data/ingest/summary.json"), Path_("data/embed/model.json"), TAGS, Path_("data/select"),
              Path_(REVIEWS, note="the audit's decisions: contamination in metrics.json")),
        params=("export",),
        reads=("negset/review/audit.py", "negset/review/decisions.py"),
        outs=(Path_("data/negatives/manifest.parquet"), Path_("data/negatives/manifest.csv"),
              Path_("data/negatives/images"), Path_("data/negatives/run.json")),
        metrics=(Path_("data/negatives/metrics.json", cache=False),),
    ),
    "report": Stage(
        deps=(IMAGES, Path_("data/ingest/rejected.parquet"), TAGS,
              Path_("data/select"), Path_("data/negatives/manifest.parquet"), Path_("data/negatives/run.json"),
              Path_("data/negatives/metrics.json", note="its cards: counts, audited contamination, review progress"),
              Path_("data/detect", note="the boxes drawn on the thumbnails")),
        reads=("negset/detect/store.py", "negset/detect/names.py"),
        outs=(Path_("data/negatives/report.html"), Path_("data/negatives/plots", cache=False)),
    ),
}

PLOTS = (
    ("data/negatives/plots/strata.csv", "Strata: share of positives and negatives", "grouped_hbar",
     dict(x="share", y="stratum", x_label="share of the set")),
    ("data/negatives/plots/hardness.csv", "Hardness: similarity of the negatives to the positives", "grouped_vbar",
     dict(x="hardness", y="share", x_label="hardness the bands used (bin centre; data/select/scores.parquet)",
          y_label="share of the set")),
)


def _scalar(value: Any) -> str:
    """One YAML scalar as text (quoted only when YAML needs it)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _item(indent: str, p: Path_) -> list[str]:
    note = f"  # {p.note}" if p.note else ""
    options = ([f"{indent}    persist: true"] if p.persist else []) + ([f"{indent}    cache: false"] if not p.cache else [])
    if not options:
        return [f"{indent}- {_scalar(p.path)}{note}"]
    return [f"{indent}- {_scalar(p.path)}:{note}", *options]


def _project_path(path: Path, root: Path) -> str:
    """A path as dvc.yaml and params.yaml name it: relative inside the project, absolute outside."""
    path = path.resolve()
    try:
        return path.relative_to(root.resolve()).as_posix() or "."
    except ValueError:
        return str(path)


def data_deps(params: Params, root: Path) -> dict[str, list[Path_]]:
    """Per step, the project's own files it reads, from the parameters (labels, image folders, sources...)."""
    root = Path(root)
    out: dict[str, list[Path_]] = {step: [] for step in STEPS}

    def add(step: str, value: str | None, note: str) -> None:
        if value and "://" not in value:
            out[step].append(Path_(_project_path(root / value, root), note=note))

    cfg = params.ingest
    pos = cfg.positives
    add("ingest", pos.path, "ingest.positives.path")
    add("ingest", pos.images, "ingest.positives.images")
    add("ingest", pos.classes, "ingest.positives.classes")
    if pos.format == "list" and (not cfg.sources or cfg.include_positive_folders):
        from negset.ingest.labels import load_list_entries

        paths, _ = load_list_entries((root / pos.path).resolve())
        for folder in sorted({p.parents[min(cfg.source_depth, len(p.parents) - 1)] for p in paths}):
            add("ingest", str(folder), "a folder the positives live in (a default source)")
    for i, src in enumerate(cfg.sources):
        if src.type == "local":
            add("ingest", src.path, f"ingest.sources[{i}]")
        elif src.type == "http":
            add("ingest", src.urls, f"ingest.sources[{i}].urls")
    add("embed", params.embed.weights, "embed.weights")
    for i, src in enumerate(params.detect.sources):
        if src.model and not src.model.startswith("builtin:"):
            add("detect", src.model, f"detect.sources[{i}].model")
        add("detect", src.predictions, f"detect.sources[{i}].predictions")
        add("detect", src.classes, f"detect.sources[{i}].classes")
        add("detect", src.coco, f"detect.sources[{i}].coco")
    add("tag", params.tag.user_tags, "tag.user_tags")
    if params.tag.background.panoptic is not None:
        add("tag", params.tag.background.panoptic.json_path, "tag.background.panoptic.json")
    if params.tag.occlusion.detector is not None:
        add("tag", params.tag.occlusion.detector.weights, "tag.occlusion.detector.weights")
    for step, deps in out.items():  # a file inside a folder already listed adds nothing
        folders = [Path(d.path) for d in deps]
        out[step] = [d for d in deps if not any(f != Path(d.path) and f in Path(d.path).parents for f in folders)]
    return out


def render_dvc_yaml(params: Params, root: Path, dev: bool = False) -> str:
    """dvc.yaml for the project at ``root``; ``dev``: this repository's, with negset's code as deps too."""
    missing = set(STEPS) ^ set(STAGES)
    if missing:
        raise RuntimeError(f"negset.tools.project.STAGES and negset.pipeline.STEPS differ: {sorted(missing)}")
    own = data_deps(params, root)
    template_dir = "negset/report/dvc_plots/{}.json" if dev else "{}"
    lines = [
        "# negset pipeline: " + " -> ".join(STEPS) + ".",
        ("# Generated by `python -m negset.tools.project` from its STAGES and negset.pipeline.STEPS: edit those."
         if dev else "# Written by `negset init` (negset.tools.project, from the steps in negset.pipeline.STEPS)."),
        f"# Each stage runs `negset STEP` and depends on {VERSION_FILE} (the negset version: an upgrade",
        "# recorded there by `negset init` reruns every stage), the project's files it reads (named",
        "# in params.yaml), its own params.yaml section and the outputs of the stages before it.",
        "# A new source folder in params.yaml: add it to the ingest stage's deps (`negset check` says so).",
    ]
    if dev:
        lines += [
            "# This is negset's own repository: each stage also depends on its step's package (negset/STEP/),",
            "# the shared core (negset/core/) and the reader files of other steps it imports",
            "# (tests/core/test_layering.py checks that this covers every module the step loads).",
        ]
    lines += ["metrics:", "  - data/negatives/metrics.json", "",
              "# `dvc plots show` (written by the report stage; see README \"DVC metrics and plots\")", "plots:"]
    for path, title, template, axes in PLOTS:
        lines.append(f"  - {path}:")
        lines.append(f"      title: {_scalar(title)}")
        lines.append(f"      template: {template_dir.format(template)}")
        lines += [f"      {k}: {_scalar(v)}" for k, v in axes.items()]
    lines += ["", "stages:"]
    for step in STEPS:
        stage = STAGES[step]
        lines += [f"  {step}:", f"    cmd: negset {step}", "    deps:"]
        deps = [Path_(VERSION_FILE)]
        if dev:
            deps += [Path_("negset/__init__.py"), Path_("negset/core"), Path_(f"negset/{step}")]
            deps += [Path_(r) for r in stage.reads]
        for d in deps + own[step] + list(stage.deps):
            lines += _item("      ", d)
        if stage.params:
            lines += ["    params:", *[f"      - {p}" for p in stage.params]]
        lines += ["    outs:"]
        for o in stage.outs:
            lines += _item("      ", o)
        if stage.metrics:
            lines += ["    metrics:"]
            for m in stage.metrics:
                lines += _item("      ", m)
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def missing_deps(params: Params, root: Path) -> list[str]:
    """Sentences for the project files named in params.yaml that their dvc.yaml stage does not depend on.

    Such a file can change without `dvc repro` noticing (a source folder added
    to ``ingest.sources`` after ``negset init``, for instance).
    """
    root = Path(root)
    path = root / "dvc.yaml"
    try:
        stages = (safe_load(path.read_text(encoding="utf-8")) or {}).get("stages") or {}  # at each step's start
        wanted = data_deps(params, root)
    except (OSError, yaml.YAMLError, AttributeError, NegsetError):
        return []  # no dvc.yaml (a plain `negset build` project) or a list that ingest will name itself
    out = []
    for step, deps in wanted.items():
        stage = stages.get(step)
        if not isinstance(stage, dict):
            continue
        have = [(root / (d if isinstance(d, str) else next(iter(d)))).resolve() for d in stage.get("deps") or ()]
        for dep in deps:
            target = (root / dep.path).resolve()
            if not any(target == h or h in target.parents for h in have):
                out.append(f"dvc.yaml: stage '{step}' does not depend on {dep.path} ({dep.note}): add it to its "
                           "deps, or `dvc repro` will not notice when it changes")
    return out


def version_file_text(version: str = __version__) -> str:
    return (
        "# The negset version this project's outputs are built with. Every stage in dvc.yaml depends on\n"
        "# this file: after upgrading negset, run `negset init` to record the new version here, and the\n"
        "# next `dvc repro` rebuilds every stage with it.\n"
        f"negset: {version}\n"
    )


def recorded_version(root: Path) -> str | None:
    """The version in ``root/negset.lock``, or None when the project has no such file."""
    path = Path(root) / VERSION_FILE
    if not path.is_file():
        return None
    try:
        data = safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return ""
    return str(data.get("negset", "")) if isinstance(data, dict) else ""


def version_warning(root: Path) -> str | None:
    """A sentence when negset.lock records another negset than the one running (an upgrade not recorded)."""
    recorded = recorded_version(root)
    if recorded is None or recorded == __version__:
        return None
    return (f"{VERSION_FILE} records negset {recorded or '(unreadable)'} but negset {__version__} is running: "
            "run `negset init` to record the upgrade, so that `dvc repro` rebuilds every stage with it")


DATA_GITIGNORE = """\
# negset: nothing under data/ goes to git. The stage outputs are DVC's (dvc.lock pins them,
# `dvc push` stores them in the DVC remote); the rest is rebuilt or belongs to this machine:
# cache/ (embeddings, ONNX export, thumbnails), catalog.duckdb, .negset.lock (the run lock),
# ingest/objects/ (the stored images) and exports/.
/*
!/.gitignore
"""

ROOT_GITIGNORE = """\
# negset project
__pycache__/
.prefect/
.dvc-remote/
"""

REMOTE_GITIGNORE = "# the project's local DVC remote: DVC's, never git's\n*\n"


def prefect_yaml() -> str:
    """prefect.yaml of a user's project: the flows are negset's installed modules (no flows/ folder needed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        prefect_version = version("prefect")
    except PackageNotFoundError:  # pragma: no cover - prefect is a dependency
        prefect_version = "3"
    return f"""\
# Prefect deployments of this negset project (Prefect 3). Deploy from the project folder:
#   prefect --no-prompt deploy --all
# and run them with a process worker in a work pool named "local":
#   prefect work-pool create local --type process
#   prefect worker start --pool local
# See negset's README, "Scheduled refreshes and releases".
name: negset
prefect-version: {prefect_version}

# At deploy time: remember the project folder (the folder `prefect deploy` runs in).
build:
  - prefect.deployments.steps.run_shell_script:
      id: project-dir
      script: pwd
      stream_output: false

push: null

# At run time: the process worker runs each flow in the project folder, where
# params.yaml, dvc.yaml and the git + dvc repository are.
pull:
  - prefect.deployments.steps.set_working_directory:
      directory: "{{{{ project-dir.stdout }}}}"

deployments:
  - name: nightly-refresh
    description: >-
      Ingest new source objects, dvc repro, and when the negative set changed:
      dvc push, commit dvc.lock, tag negatives-YYYYMMDD-N.
    entrypoint: flows.refresh.refresh
    parameters:
      root: "."
      force_ingest: true
    schedules:
      - cron: "0 3 * * *"
        timezone: UTC
        active: true
    concurrency_limit:
      limit: 1
      collision_strategy: ENQUEUE
    tags: [negset, refresh]
    work_pool:
      name: local
      work_queue_name: null
      job_variables: {{}}

  - name: manual-build
    description: Run every step (ingest -> export) in one flow run, without releasing.
    entrypoint: flows.build.build
    parameters:
      params_path: params.yaml
      root: "."
    concurrency_limit: 1
    tags: [negset, build]
    work_pool:
      name: local
      work_queue_name: null
      job_variables: {{}}
"""


# ------------------------------------------------------------------ params.yaml template

_SECTION_NOTES = {
    "ingest": "where the positives are, what the target is, where candidates come from",
    "embed": "the embedder (offline: its weights come with negset)",
    "tag": "lighting, background and occlusion tags",
    "select": "which candidates become negatives, and how many",
    "export": "what the export step writes",
}


def _default_of(info) -> Any:
    if info.default_factory is not None:
        return info.default_factory()
    return info.default


def _flow(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True)
    return _scalar(value)


def _commented_fields(fields: dict, indent: int) -> list[str]:
    """Every key of a section (its pydantic ``model_fields``) with its default, commented out, and its description."""
    lines = []
    pad = "  " * indent
    for name, info in fields.items():
        key = info.alias or name
        annotation = info.annotation
        sub = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        note = f"  # {info.description}" if info.description else ""
        if sub is not None and _default_of(info) is not None:
            lines.append(f"{pad}# {key}:{note}")
            lines += _commented_fields(sub.model_fields, indent + 1)
        else:
            lines.append(f"{pad}# {key}: {_flow(_default_of(info))}{note}")
    return lines


def render_params_yaml(target: list[str], positives: dict, sources: list[dict]) -> str:
    """A commented params.yaml: the ingest keys filled in, every other key at its default, commented out.

    Every section is present (dvc.yaml tracks each one); a section with all its
    keys commented out is empty, which means the defaults.
    """
    ingest = {"target": target if len(target) > 1 else target[0], "positives": positives}
    lines = [
        f"# negset parameters (written by `negset init`, negset {__version__}): one section per step;",
        "# each dvc.yaml stage tracks its own section. Paths are relative to this file's folder.",
        "# Every key is in negset's README (\"Parameters\"); a commented-out key is at its default.",
        "# Keep every section's name, even with nothing under it (dvc.yaml tracks each section).",
        "",
        f"ingest:  # {_SECTION_NOTES['ingest']}",
        f"  target: {_flow(ingest['target'])}  # the class (or list of classes) the negatives must not contain",
        "  positives:  # the images labelled with the target",
    ]
    for key in ("format", "path", "images", "classes"):
        if positives.get(key) is not None:
            lines.append(f"    {key}: {_scalar(positives[key])}")
    lines.append("  # candidate sources: [] = the folders the positives live in; each entry {type: local|s3|http, ...}")
    if sources:
        lines.append("  sources:")
        lines += [f"    - {_flow(s)}" for s in sources]
    else:
        lines.append("  sources: []")
    ingest_fields = Params.model_fields["ingest"].annotation.model_fields
    lines += _commented_fields({k: v for k, v in ingest_fields.items() if k not in ("target", "positives", "sources")}, 1)
    for section, info in Params.model_fields.items():
        if section == "ingest":
            continue
        lines += ["", f"{section}:  # {_SECTION_NOTES.get(section, section)}"]
        if section == "select":
            lines.append("  count: 8  # negatives to choose (or set ratio: negatives per positive, and remove count)")
            lines += _commented_fields({k: v for k, v in info.annotation.model_fields.items() if k != "count"}, 1)
        else:
            lines += _commented_fields(info.annotation.model_fields, 1)
    return "\n".join(lines) + "\n"


def key_differences(ours: Any, theirs: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two parsed YAML documents (for 'kept params.yaml')."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        out = []
        for k in sorted(set(ours) | set(theirs), key=str):
            out += key_differences(ours.get(k), theirs.get(k), f"{prefix}{k}.")
        return out
    if ours != theirs:
        return [prefix.rstrip(".")]
    return []



if __name__ == "__main__":  # rewrite this repository's dvc.yaml from STAGES (its tests check it is current)
    from negset.core.config import load_params

    repo = Path(__file__).resolve().parents[2]
    (repo / "dvc.yaml").write_text(render_dvc_yaml(load_params(repo / "params.yaml"), repo, dev=True))
    print(f"wrote {repo / 'dvc.yaml'}")
