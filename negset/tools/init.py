"""``negset init [DIR]``: a negset project of one's own, from nothing.

Writes what a project needs and nothing it already has: ``params.yaml``
(commented, every section present), ``dvc.yaml`` (stages on the project's
data, its params sections and ``negset.lock``), ``negset.lock`` (the negset
version), ``data/.gitignore``, ``.gitignore``, ``prefect.yaml``, ``reviews.csv`` (its header) and the DVC plot
templates; runs ``git init`` and ``dvc init`` when the folder is not a
repository yet and adds a local DVC remote when there is no default remote.
A file that exists is kept byte for byte (and reported: kept, or unchanged
when it is what init would write), so running init twice changes nothing;
the one exception is ``negset.lock`` after an upgrade, which init updates to
the running version (that is how an upgrade reaches ``dvc repro``).
"""

from __future__ import annotations

import configparser
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import yaml

from negset import __version__
from negset.core import atomic
from negset.core.config import parse_params
from negset.core.errors import NegsetError
from negset.tools import project

log = logging.getLogger("negset.init")

FORMATS = ("coco", "yolo", "list")
LOCAL_REMOTE = ".dvc-remote"


@dataclass
class Options:
    folder: Path
    positives: str | None = None
    format: str | None = None
    target: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    images: str | None = None
    classes: str | None = None
    remote: str | None = None


@dataclass
class Report:
    """What init did to each path: wrote, unchanged, kept (with why), updated; and the commands it ran."""

    lines: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, action: str, path: str, note: str = "") -> None:
        self.lines.append((action, path, note))

    def text(self) -> str:
        width = max((len(a) for a, _, _ in self.lines), default=0)
        return "\n".join(f"  {a:<{width}}  {p}{'  (' + n + ')' if n else ''}" for a, p, n in self.lines)

    def as_dict(self) -> list[dict]:
        return [dict(action=a, path=p, note=n) for a, p, n in self.lines]


# ------------------------------------------------------------------ the parameters


def _guess_format(path: Path) -> str | None:
    if path.is_dir():
        return "yolo"
    return {".json": "coco", ".txt": "list", ".csv": "list"}.get(path.suffix.lower())


def _first_existing(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.exists()), None)


def _positives(opts: Options, ask: Callable[[str, str | None], str]) -> tuple[dict, list[str]]:
    """The ``ingest.positives`` mapping and the targets, from the options (asking for what is missing)."""
    where = opts.positives or ask("positives: the COCO JSON, YOLO label folder or list of images", None)
    if not where:
        raise NegsetError("negset init: --positives is required for a new project",
                          hint="--positives FILE_OR_FOLDER (a COCO JSON, a YOLO label folder, or a list of images)")
    path = Path(where).expanduser().resolve()
    if not path.exists():
        raise NegsetError(f"--positives {where}: not found", hint="give the COCO JSON, the YOLO label folder or the list file")
    fmt = opts.format or _guess_format(path) or ask(f"format of {path.name} ({'/'.join(FORMATS)})", None)
    if fmt not in FORMATS:
        raise NegsetError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    out: dict = {"format": fmt, "path": path}
    if fmt in ("coco", "yolo"):
        images = opts.images or _first_existing(path.parent / "images", path.parent.parent / "images")
        images = images or ask("images: the folder the labels refer to", None)
        if not images or not Path(images).expanduser().is_dir():
            raise NegsetError(f"--images {images or '(not given)'}: the image folder of the {fmt} labels was not found",
                              hint="--images FOLDER (the folder the labels' file names are relative to)")
        out["images"] = Path(images).expanduser().resolve()
    if fmt == "yolo":
        classes = opts.classes or _first_existing(path.parent / "classes.txt", path.parent / "data.yaml",
                                                  path / "classes.txt")
        classes = classes or ask("classes: the class names file (one per line, or a YOLO data.yaml)", None)
        if not classes or not Path(classes).expanduser().is_file():
            raise NegsetError(f"--classes {classes or '(not given)'}: the YOLO class names file was not found",
                              hint="--classes FILE (names one per line, or a data.yaml with names)")
        out["classes"] = Path(classes).expanduser().resolve()
    targets = list(opts.target) or [t.strip() for t in ask("target class (or classes, comma-separated)", None).split(",")
                                    if t.strip()]
    if not targets:
        raise NegsetError("negset init: --target is required for a new project",
                          hint="--target CLASS: the class the negatives must not contain (repeat for several)")
    return out, targets


def _sources(opts: Options) -> list[dict]:
    out = []
    for s in opts.sources:
        if s.startswith("s3://"):
            bucket, _, prefix = s[len("s3://"):].partition("/")
            out.append({"type": "s3", "bucket": bucket, "prefixes": [prefix]})
        elif s.startswith(("http://", "https://")):
            raise NegsetError(f"--source {s}: give a file listing the URLs (an http source reads a list)",
                              hint="--source urls.txt: a text file with one URL a line")
        elif s.lower().endswith((".txt", ".csv")) and Path(s).expanduser().is_file():
            out.append({"type": "http", "urls": Path(s).expanduser().resolve()})
        else:
            folder = Path(s).expanduser().resolve()
            if not folder.is_dir():
                raise NegsetError(f"--source {s}: not a folder", hint="--source FOLDER, s3://BUCKET/PREFIX or a URL list file")
            out.append({"type": "local", "path": folder})
    return out


def _relative(value, root: Path):
    """Paths in the parameters: relative to the project when inside it, else absolute."""
    if isinstance(value, Path):
        return project._project_path(value, root)
    if isinstance(value, dict):
        return {k: _relative(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, root) for v in value]
    return value


def new_params_text(opts: Options, root: Path, ask) -> str:
    positives, targets = _positives(opts, ask)
    sources = _sources(opts)
    text = project.render_params_yaml(targets, _relative(positives, root), _relative(sources, root))
    params = parse_params(yaml.safe_load(text), source="params.yaml (from the options)")
    from negset.ingest.labels import load_positives

    load_positives(params.ingest.positives, params.ingest.target, root)  # a wrong target or folder fails here
    return text


# ------------------------------------------------------------------ files and repositories


def _write_new(root: Path, name: str, text: str, report: Report) -> None:
    path = root / name
    if path.exists():
        same = path.is_file() and path.read_bytes() == text.encode()
        report.add("unchanged" if same else "kept", name, "" if same else "exists; not changed")
        return
    atomic.write_text(path, text)
    report.add("wrote", name)


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NegsetError(f"{cwd}: `{' '.join(Path(cmd[0]).name if i == 0 else c for i, c in enumerate(cmd))}` "
                          f"failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
    return proc.stdout


def _dvc() -> str:
    from negset.tools.release import _tool

    return _tool("dvc")


def _git_toplevel(root: Path) -> Path | None:
    proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    return Path(proc.stdout.strip()).resolve() if proc.returncode == 0 else None


def default_remote(root: Path) -> str | None:
    """The default DVC remote named in .dvc/config (read directly: no dvc process, nothing written)."""
    parser = configparser.ConfigParser()
    try:
        parser.read([root / ".dvc" / "config", root / ".dvc" / "config.local"], encoding="utf-8")
    except configparser.Error:
        return None
    return parser.get("core", "remote", fallback=None)


def _repositories(root: Path, opts: Options, report: Report) -> None:
    top = _git_toplevel(root)
    if top is None:
        _run(["git", "init", "-q"], root)
        report.add("ran", "git init")
        top = root
    if not (root / ".dvc").is_dir():
        _run([_dvc(), "init", "-q"] + (["--subdir"] if top != root else []), root)
        _run([_dvc(), "config", "core.analytics", "false"], root)
        report.add("ran", "dvc init" + (" --subdir" if top != root else ""), "analytics off")
    remote = default_remote(root)
    if remote:
        report.add("kept", f"DVC remote '{remote}'", "the default remote in .dvc/config")
        return
    url = opts.remote or LOCAL_REMOTE
    _run([_dvc(), "remote", "add", "-d", "local", url], root)
    report.add("ran", f"dvc remote add -d local {url}",
               "a folder in the project; `dvc remote add -d -f local s3://...` for a shared one" if url == LOCAL_REMOTE else "")
    if url == LOCAL_REMOTE:
        (root / LOCAL_REMOTE).mkdir(exist_ok=True)
        _write_new(root, f"{LOCAL_REMOTE}/.gitignore", project.REMOTE_GITIGNORE, report)


def _version_file(root: Path, report: Report) -> None:
    recorded = project.recorded_version(root)
    if recorded == __version__ and (root / project.VERSION_FILE).read_text() == project.version_file_text():
        report.add("unchanged", project.VERSION_FILE, f"negset {__version__}")
    elif recorded is None:
        atomic.write_text(root / project.VERSION_FILE, project.version_file_text())
        report.add("wrote", project.VERSION_FILE, f"negset {__version__}")
    elif recorded == __version__:
        report.add("kept", project.VERSION_FILE, f"negset {__version__}")
    else:
        atomic.write_text(root / project.VERSION_FILE, project.version_file_text())
        report.add("updated", project.VERSION_FILE,
                   f"negset {recorded or '?'} -> {__version__}: the next dvc repro rebuilds every stage")


def _plot_templates(root: Path, report: Report) -> None:
    folder = resources.files("negset.report") / "dvc_plots"
    for name in project.PLOT_TEMPLATES:
        _write_new(root, f".dvc/plots/{name}.json", (folder / f"{name}.json").read_text(encoding="utf-8"), report)


def _params_report(root: Path, ours_text: str | None, report: Report) -> None:
    """params.yaml exists: keep it, and say how it differs from what the options would have written."""
    path = root / "params.yaml"
    if ours_text is None:
        report.add("kept", "params.yaml", "exists; not changed")
    elif path.read_text(encoding="utf-8") == ours_text:
        report.add("unchanged", "params.yaml")
    else:
        theirs = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        diff = project.key_differences(yaml.safe_load(ours_text), theirs)
        shown = ", ".join(diff[:6]) + (" ..." if len(diff) > 6 else "") if diff else "comments or layout only"
        report.add("kept", "params.yaml", f"yours differs from the options in: {shown}")


def _has_new_params(opts: Options) -> bool:
    return bool(opts.positives or opts.target or opts.sources or opts.images or opts.classes or opts.format)


def init(opts: Options, ask: Callable[[str, str | None], str] | None = None) -> dict:
    """Create (or complete) the project in ``opts.folder``; return what was done and the next commands."""
    ask = ask or _no_prompt
    root = opts.folder.expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise NegsetError(f"{root}: exists and is not a folder")
    report = Report()
    params_path = root / "params.yaml"
    # everything is checked before anything is written
    if params_path.exists():
        from negset.core.config import load_params

        params_text = new_params_text(opts, root, ask) if _has_new_params(opts) else None
        params = load_params(params_path)  # the project's own parameters decide its dvc.yaml
    else:
        params_text = new_params_text(opts, root, ask)
        params = parse_params(yaml.safe_load(params_text))
    dvc_text = project.render_dvc_yaml(params, root)

    root.mkdir(parents=True, exist_ok=True)
    _repositories(root, opts, report)
    if params_path.exists():
        _params_report(root, params_text, report)
    else:
        atomic.write_text(params_path, params_text)
        report.add("wrote", "params.yaml")
    _write_new(root, "dvc.yaml", dvc_text, report)
    _version_file(root, report)
    _write_new(root, "data/.gitignore", project.DATA_GITIGNORE, report)
    _write_new(root, ".gitignore", project.ROOT_GITIGNORE, report)
    _write_new(root, "prefect.yaml", project.prefect_yaml(), report)
    from negset.review.decisions import HEADER as REVIEWS_HEADER

    _write_new(root, project.REVIEWS, REVIEWS_HEADER, report)  # `negset review` appends; select depends on it
    _plot_templates(root, report)
    shown = str(opts.folder)
    nxt = ([f"cd {shown}"] if root != Path.cwd().resolve() else ["negset check"]) + [
        "dvc repro",
        'git add -A && git commit -m "negset project" && dvc push',
    ]
    return dict(root=str(root), actions=report.as_dict(), next=nxt, report=report.text(),
                changed=any(a in ("wrote", "ran", "updated") for a, _, _ in report.lines))


def _no_prompt(question: str, default: str | None) -> str:
    return default or ""


def terminal_prompt(question: str, default: str | None) -> str:
    """Ask on the terminal (only used when stdin and stdout are one)."""
    suffix = f" [{default}]" if default else ""
    answer = input(f"{question}{suffix}: ").strip()
    return answer or (default or "")


def interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def text_summary(result: dict) -> str:
    head = "negset init: " + (result["root"] if result["changed"] else f"{result['root']}: nothing to do, the project is complete")
    lines = [head, result["report"], "", "next:"] + [f"  {c}" for c in result["next"]]
    return "\n".join(lines)
