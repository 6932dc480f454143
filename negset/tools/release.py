"""Step 6, version: a refresh that changes the negative set becomes a release.

A release is: ``dvc push`` of every output to the configured remote, a git
commit of ``dvc.lock`` (it pins each stage's inputs and outputs, the ingest
manifest ``data/ingest`` included) and an annotated tag
``negatives-YYYYMMDD-N`` on that commit. A consumer takes a release with
``dvc get``/``dvc import --rev TAG`` or ``dvc.api`` (see README).

The order keeps the last release intact whatever fails: the data is pushed
before the commit, so a tag never names data the remote lacks; a failure
before the commit restores ``dvc.lock`` (and the workspace, ``dvc checkout``)
to the last commit; a run killed outright leaves a marker
(``data/.release-pending``) that the next run sees and repairs before it
starts. Nothing here imports Prefect: ``tasks/release.py`` wraps these
functions and ``flows/refresh.py`` composes them.

Failures are of two kinds: ``NegsetError`` (bad parameters or project state,
retrying cannot help) and ``TransientError`` (the remote or the network:
worth a retry).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from negset.core.errors import NegsetError

log = logging.getLogger("negset.version")

TAG_PREFIX = "negatives-"
TAG_RE = re.compile(r"^negatives-(\d{8})-(\d+)$")
COMMIT_PREFIX = "negset release "
LOCK_FILE = "dvc.lock"
MANIFEST = "data/negatives/manifest.parquet"
METRICS = "data/negatives/metrics.json"
PENDING = "data/.release-pending"
# dvc/negset output that means the user's input is wrong: a retry cannot help
_USER_ERROR = re.compile(r"^negset: error: (.*)$", re.M)
_HINT = re.compile(r"^\s+hint: (.*)$", re.M)


class TransientError(RuntimeError):
    """A failure that may pass: the remote, the network, a killed process."""


@dataclass
class Change:
    """How the set built in the workspace differs from the last release."""

    changed: bool  # dvc.lock differs from the last release's (or there is none): a release is due
    needs_commit: bool  # dvc.lock differs from the last commit
    set_changed: bool  # the negatives themselves (manifest or images) differ
    previous: str | None  # the last release tag, if any
    added: list[dict] = field(default_factory=list)  # negatives new since the last release
    removed: list[dict] = field(default_factory=list)  # negatives gone since the last release
    negatives: int = 0
    history_known: bool = True  # the last release's manifest could be read (cache or remote)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- processes


def _tool(name: str) -> str:
    """The executable beside this Python first (the venv), then PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NegsetError(f"{root}: `git {' '.join(args)}` failed: {proc.stderr.strip()[-500:]}",
                          hint="negset refresh needs a git repository with a committed dvc.yaml")
    return proc


def dvc(root: Path, *args: str, env: dict | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run dvc; a negset input error becomes NegsetError, anything else TransientError."""
    full_env = dict(os.environ)
    full_env.setdefault("DVC_NO_ANALYTICS", "1")
    full_env.update(env or {})
    # the stages call `negset`: the venv's bin must be on PATH
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    cmd = [_tool("dvc"), *args]
    log.info("$ dvc %s", " ".join(args))
    try:
        proc = subprocess.run(cmd, cwd=root, env=full_env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise TransientError(f"`dvc {' '.join(args)}` did not finish within {timeout}s") from exc
    if proc.stdout.strip():
        log.info("%s", proc.stdout.strip()[-4000:])
    if proc.returncode != 0:
        text = proc.stderr + proc.stdout
        user = _USER_ERROR.search(text)
        if user:
            hint = _HINT.search(text, user.end())
            raise NegsetError(user.group(1).strip(), hint=hint.group(1).strip() if hint else None)
        invalid = re.search(r"'(\S*dvc\.yaml|\S*params\.yaml|\S*dvc\.lock)' is invalid", text)
        if invalid:  # the project's files are wrong: a retry cannot help
            raise NegsetError(f"{invalid.group(1)}: invalid ({text.strip()[-500:]})",
                              hint="fix the file (`dvc repro` shows the line) and commit it")
        raise TransientError(f"`dvc {' '.join(args)}` failed ({proc.returncode}): {text.strip()[-2000:]}")
    return proc


# ------------------------------------------------------------------ state


def releases(root: Path) -> list[str]:
    """Release tags reachable from HEAD, oldest first (by date, then N)."""
    out = git(root, "tag", "--list", f"{TAG_PREFIX}*", "--merged", "HEAD", check=False).stdout.split()
    tags = [t for t in out if TAG_RE.match(t)]
    return sorted(tags, key=lambda t: (TAG_RE.match(t).group(1), int(TAG_RE.match(t).group(2))))


def last_release(root: Path) -> str | None:
    tags = releases(root)
    return tags[-1] if tags else None


def next_tag(root: Path, today: _dt.date | None = None) -> str:
    """``negatives-YYYYMMDD-N``: N counts from 1 within a day, over every tag in the repo."""
    day = (today or _dt.datetime.now(_dt.timezone.utc).date()).strftime("%Y%m%d")
    used = [int(m.group(2)) for t in git(root, "tag", "--list", f"{TAG_PREFIX}{day}-*").stdout.split()
            if (m := TAG_RE.match(t))]
    return f"{TAG_PREFIX}{day}-{max(used, default=0) + 1}"


def dirty_paths(root: Path) -> list[str]:
    """Tracked or untracked (not ignored) paths that differ from HEAD."""
    out = git(root, "status", "--porcelain", "--untracked-files=all").stdout
    return [line[3:] for line in out.splitlines() if line.strip()]


def _head(root: Path) -> str | None:
    proc = git(root, "rev-parse", "--verify", "-q", "HEAD", check=False)
    return proc.stdout.strip() or None


def _tracked_at_head(root: Path, path: str) -> bool:
    return git(root, "cat-file", "-e", f"HEAD:{path}", check=False).returncode == 0


def check_project(root: Path) -> None:
    """A release is made from a git + dvc repository with a clean work tree and a remote."""
    inside = git(root, "rev-parse", "--is-inside-work-tree", check=False).stdout.strip() == "true"
    if not inside or _head(root) is None:
        raise NegsetError(f"{root}: not a git repository with a commit",
                          hint="git init && dvc init && git add -A && git commit -m project")
    if not (root / ".dvc").is_dir():
        raise NegsetError(f"{root}: not a DVC repository", hint="run `dvc init` and commit .dvc/")
    dirty = [p for p in dirty_paths(root) if p != LOCK_FILE]
    if dirty:
        raise NegsetError(
            f"{root}: uncommitted changes in {', '.join(dirty[:5])}{' ...' if len(dirty) > 5 else ''}",
            hint="a release pins committed code and parameters: commit or stash these first",
        )
    proc = subprocess.run([_tool("dvc"), "remote", "default"], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise NegsetError(f"{root}/.dvc/config: no default DVC remote",
                          hint="dvc remote add -d NAME s3://bucket/path (or a folder), then commit .dvc/config")


def recover(root: Path, env: dict | None = None) -> list[str]:
    """Repair what a killed refresh left behind; return what was done.

    A run killed between its commit and its tag leaves an untagged release
    commit at HEAD: tag it. A run killed before its commit leaves dvc.lock
    changed and the pending marker: restore the last release.
    """
    done = []
    subject = git(root, "log", "-1", "--format=%s", check=False).stdout.strip()
    if subject.startswith(COMMIT_PREFIX):
        tag = subject[len(COMMIT_PREFIX):].split()[0]
        at_head = git(root, "tag", "--points-at", "HEAD").stdout.split()
        if TAG_RE.match(tag) and tag not in at_head and not git(root, "tag", "--list", tag).stdout.strip():
            git(root, "tag", "-a", tag, "-m", f"{tag} (tagged on recovery)")
            done.append(f"tagged {tag}")
    if (root / PENDING).exists():
        restore(root, env=env)
        done.append("restored dvc.lock and the workspace to the last commit")
    if done:
        log.warning("recovered from an interrupted refresh: %s", "; ".join(done))
    return done


def restore(root: Path, env: dict | None = None) -> None:
    """Put dvc.lock and the workspace back to the last commit (best effort for the data)."""
    if _tracked_at_head(root, LOCK_FILE):
        git(root, "checkout", "HEAD", "--", LOCK_FILE)
        try:
            dvc(root, "checkout", "--force", "--quiet", env=env, timeout=600)
        except (NegsetError, TransientError) as exc:  # the data is rebuilt by the next repro anyway
            log.warning("dvc checkout after a failed refresh: %s", exc)
    elif (root / LOCK_FILE).exists():
        (root / LOCK_FILE).unlink()
    (root / PENDING).unlink(missing_ok=True)


# -------------------------------------------------------------------- steps


def mark_pending(root: Path, what: str) -> None:
    from negset.core import atomic

    atomic.write_json(root / PENDING, dict(pid=os.getpid(), what=what, head=_head(root)))


def repro(root: Path, force_ingest: bool = True, env: dict | None = None, timeout: float | None = None) -> None:
    """Rebuild what changed. ``force_ingest`` re-lists the sources first (new objects
    in a bucket change no file DVC can see); the later stages run only when their
    inputs changed.

    The stages run their steps directly (``NEGSET_NO_PREFECT=1``): the refresh
    is already orchestrated (the Prefect refresh flow's ``dvc-repro`` task), and a
    Prefect flow run per stage costs seconds each (a temporary API server per
    stage without ``PREFECT_API_URL``), more than a small refresh's work. Set
    ``NEGSET_NO_PREFECT=0`` to keep one flow run per stage."""
    env = {"NEGSET_NO_PREFECT": os.environ.get("NEGSET_NO_PREFECT", "1"), **(env or {})}
    mark_pending(root, "repro")
    if force_ingest:
        dvc(root, "repro", "--force", "--single-item", "ingest", env=env, timeout=timeout)
    dvc(root, "repro", env=env, timeout=timeout)


def lock_outs(text: str | None) -> dict[str, str]:
    """{output path: md5} from the text of a dvc.lock."""
    if not text:
        return {}
    data = yaml.safe_load(text) or {}
    outs = {}
    for stage in (data.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            outs[out["path"]] = out.get("md5", "")
    return outs


def lock_at(root: Path, rev: str | None) -> str | None:
    if rev is None:
        return None
    proc = git(root, "show", f"{rev}:{LOCK_FILE}", check=False)
    return proc.stdout if proc.returncode == 0 else None


def _cache_file(root: Path, md5: str) -> Path:
    return root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def manifest_at(root: Path, rev: str | None) -> list[dict] | None:
    """The negatives' manifest rows at a release (DVC cache, else the remote via dvc.api);
    None when it cannot be read."""
    import io

    import pyarrow.parquet as pq

    if rev is None:
        return []
    md5 = lock_outs(lock_at(root, rev)).get(MANIFEST)
    if not md5:
        return []
    cached = _cache_file(root, md5)
    if cached.exists():
        data = cached.read_bytes()
    else:
        import dvc.api

        try:
            data = dvc.api.read(MANIFEST, repo=str(root), rev=rev, mode="rb")
        except Exception as exc:  # gone from the cache and the remote: the diff is unknown
            log.warning("%s at %s is in neither the DVC cache nor the remote: %s", MANIFEST, rev, exc)
            return None
    return pq.read_table(io.BytesIO(data)).to_pylist()


def _brief(row: dict) -> dict:
    return {k: row.get(k) for k in ("sha256", "uri", "stratum", "image")}


def detect_change(root: Path) -> Change:
    """Compare the workspace's dvc.lock and manifest with the last commit and release."""
    import pyarrow.parquet as pq

    lock_now = (root / LOCK_FILE).read_text() if (root / LOCK_FILE).exists() else None
    head_lock = lock_at(root, "HEAD")
    previous = last_release(root)
    prev_outs = lock_outs(lock_at(root, previous))
    now_outs = lock_outs(lock_now)
    new_rows = pq.read_table(root / MANIFEST).to_pylist() if (root / MANIFEST).exists() else []
    old_rows = manifest_at(root, previous)
    old = {r["sha256"]: r for r in old_rows or []}
    if old_rows is None:  # unknown history: report no differences rather than wrong ones
        old = {r["sha256"]: r for r in new_rows}
    new = {r["sha256"]: r for r in new_rows}
    set_keys = (MANIFEST, "data/negatives/images")
    return Change(
        changed=lock_now is not None and (previous is None or lock_now != lock_at(root, previous)),
        needs_commit=lock_now is not None and lock_now != head_lock,
        set_changed=previous is None or any(prev_outs.get(k) != now_outs.get(k) for k in set_keys),
        previous=previous,
        added=[_brief(new[s]) for s in sorted(new.keys() - old.keys(), key=lambda s: new[s]["uri"])],
        removed=[_brief(old[s]) for s in sorted(old.keys() - new.keys(), key=lambda s: old[s]["uri"])],
        negatives=len(new_rows),
        history_known=old_rows is not None,
    )


def push(root: Path, env: dict | None = None, timeout: float | None = 900) -> None:
    """Upload every output to the default remote (a failure here is transient)."""
    mark_pending(root, "push")
    dvc(root, "push", env=env, timeout=timeout)


def commit_and_tag(root: Path, change: Change, today: _dt.date | None = None, env: dict | None = None) -> str:
    """Commit dvc.lock (when it changed since the last commit) and tag; return the tag."""
    tag = next_tag(root, today)
    message = f"{COMMIT_PREFIX}{tag}\n\n{release_notes(root, change)}"
    if change.needs_commit:
        git(root, "add", LOCK_FILE)
        git(root, "commit", "-q", "--no-verify", "-m", message)
    git(root, "tag", "-a", tag, "-m", message)
    (root / PENDING).unlink(missing_ok=True)
    log.info("released %s", tag)
    return tag


def finish_unchanged(root: Path) -> None:
    (root / PENDING).unlink(missing_ok=True)


# ------------------------------------------------------------------ reports


def metrics(root: Path) -> dict:
    path = root / METRICS
    return json.loads(path.read_text()) if path.exists() else {}


def audit_line(m: dict, released: bool = True) -> str:
    """The audited contamination as one sentence; a release made while the audit is incomplete says so."""
    from negset.review.audit import statement

    audit = m.get("audit")
    text = f"Audit: {statement(audit)}."
    if released and not (audit or {}).get("complete"):
        text = "**Released while the audit is incomplete.** " + text
    return text


def release_notes(root: Path, change: Change) -> str:
    m = metrics(root)
    lines = [
        f"negatives: {m.get('negatives', change.negatives)} for {m.get('positives', '?')} positives; "
        f"since {change.previous or 'the start'}: {len(change.added)} added, {len(change.removed)} removed",
        audit_line(m).replace("**", ""),
    ]
    lines += [f"+ {r['sha256'][:12]} {r['uri']}" for r in change.added]
    lines += [f"- {r['sha256'][:12]} {r['uri']}" for r in change.removed]
    return "\n".join(lines)


def summary_markdown(root: Path, change: Change, tag: str | None) -> str:
    m = metrics(root)
    lines = ["# negset refresh", ""]
    if tag:
        lines.append(f"New release **{tag}** (previous: {change.previous or 'none'}).")
        if not change.set_changed:
            lines.append("The inputs changed (dvc.lock) but the chosen negatives are the same.")
    else:
        lines.append(f"Nothing changed since {change.previous or 'the last commit'}: no commit, no tag.")
    if not change.history_known:
        lines.append(f"The manifest of {change.previous} is in neither the DVC cache nor the remote: "
                     "images added and removed are unknown.")
    lines += ["", f"Negatives: {m.get('negatives', change.negatives)} for {m.get('positives', '?')} positives "
                  f"(pool {m.get('candidates', '?')} candidates, strata TV distance {m.get('strata_tv_distance', '?')})."]
    lines += ["", audit_line(m, released=tag is not None)]
    if m.get("reviews"):
        r = m["reviews"]
        lines.append(f"Quarantine: {r['quarantine_reviewed']} of {r['quarantined']} suspected positives reviewed "
                     f"({r['quarantine_contains_target']} contain the target).")
    lines += ["", "| stratum | positives | negatives |", "|---|---:|---:|"]
    for name, c in sorted((m.get("per_stratum") or {}).items()):
        lines.append(f"| {name} | {c['positives']} | {c['negatives']} |")
    lines += ["", f"## Added since {change.previous or 'the start'}: {len(change.added)}", ""]
    lines += [f"- `{r['sha256'][:12]}` {r['uri']} ({r['stratum']})" for r in change.added] or ["(none)"]
    lines += ["", f"## Removed: {len(change.removed)}", ""]
    lines += [f"- `{r['sha256'][:12]}` {r['uri']} ({r['stratum']})" for r in change.removed] or ["(none)"]
    return "\n".join(lines) + "\n"


def summary_table(root: Path, change: Change) -> list[dict]:
    """One row per negative in the set, plus the removed ones, with what happened to each."""
    import pyarrow.parquet as pq

    added = {r["sha256"] for r in change.added}
    rows = []
    if (root / MANIFEST).exists():
        for r in pq.read_table(root / MANIFEST).to_pylist():
            rows.append(dict(sha256=r["sha256"], uri=r["uri"], stratum=r["stratum"],
                             change="added" if r["sha256"] in added else "kept"))
    rows += [dict(sha256=r["sha256"], uri=r["uri"], stratum=r["stratum"], change="removed") for r in change.removed]
    return rows


# ---------------------------------------------------------- all in one go


def refresh(root: Path | str, force_ingest: bool = True, today: _dt.date | None = None,
            push_retries: int = 2) -> dict:
    """Ingest -> dvc repro -> release when changed, without Prefect (the flow does the same in tasks)."""
    from negset.core.lock import child_env, project_lock

    root = Path(root).resolve()
    with project_lock(root / "data", "negset refresh"):
        env = child_env(root / "data")
        recover(root, env=env)
        check_project(root)
        tag = None
        try:
            repro(root, force_ingest=force_ingest, env=env)
            change = detect_change(root)
            if change.changed:
                for attempt in range(push_retries + 1):
                    try:
                        push(root, env=env)
                        break
                    except TransientError as exc:
                        if attempt == push_retries:
                            raise
                        log.warning("dvc push failed (attempt %d), retrying: %s", attempt + 1, exc)
                        time.sleep(5 * 4**attempt)  # 5 s, 20 s, ... as the Prefect task
                tag = commit_and_tag(root, change, today=today, env=env)
            else:
                finish_unchanged(root)
        except BaseException:
            restore(root, env=env)
            raise
        return dict(tag=tag, change=change.to_dict(), summary=summary_markdown(root, change, tag))
