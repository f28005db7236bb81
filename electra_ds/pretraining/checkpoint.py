"""DeepSpeed checkpoints: loading without unpickling arbitrary objects; manifests; choosing what to resume.

DeepSpeed's own loaders call ``torch.load(..., weights_only=False)``. Inside :func:`weights_only_loading`
every ``torch.load`` is forced to ``weights_only=True`` and only the few plain data classes DeepSpeed
stores in its checkpoints are allowlisted, so a tampered checkpoint cannot run code on load.

Each checkpoint also gets a manifest (run config, every file with size and sha256; see below).
:func:`choose_checkpoint` resumes from the newest intact checkpoint, skips damaged or interrupted ones with
a warning, and refuses another run's checkpoints before any weight is loaded; :func:`prune` never deletes
the last intact checkpoint.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from electra_ds.common.errors import UserError
from electra_ds.common.fileio import sha256_file
from electra_ds.pretraining import config

# Data classes DeepSpeed 0.19 writes into model/optimizer state files (no behaviour on unpickling).
DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


def _resolve(names):
    out = []
    for dotted in names:
        module, _, name = dotted.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if callable(obj) or isinstance(obj, type):
            out.append(obj)
    return out


@contextlib.contextmanager
def weights_only_loading():
    import torch

    original = torch.load

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    with torch.serialization.safe_globals(_resolve(DEEPSPEED_SAFE_GLOBALS)):
        torch.load = load
        try:
            yield
        finally:
            torch.load = original


# --------------------------------------------------------------------------------------------------
# Manifests: which checkpoint is complete, intact and from this run's configuration
#
# Save protocol (pretrain._save): every rank writes its DeepSpeed files; after the barrier the ranks hash
# the tag directory's files in parallel (each rank a disjoint share), rank 0 writes
# ``<tag>/electra_ds_manifest.json`` (run config, every file with size and sha256) atomically, and only
# then points ``latest`` at the tag, also atomically. A tag directory without a manifest is therefore an
# interrupted save, and a manifest whose sizes/digests no longer match means the files were damaged later.
#
# Why full sha256 and not sizes only: sizes catch truncation and missing files, but not a bad block, a
# half-synced copy or bit rot on a shared filesystem, which would otherwise load silently. sha256 runs at
# ~0.5-1 GB/s per core; the files were just written (page cache) and every rank hashes its own share, so a
# multi-GB ZeRO checkpoint adds seconds per save, and the load-time check costs about what reading the
# checkpoint costs anyway (once per restart). Sizes are checked first (free), digests only for the
# candidate that is about to be loaded.

MANIFEST = "electra_ds_manifest.json"
MANIFEST_FORMAT = 1
# step<digits>, or DeepSpeed's ds_to_universal output for it (README: resuming on another world size); a user's
# copy beside them (step00000020.bak) is neither resumed from nor pruned
_TAG = re.compile(r"^step(\d+)(_universal)?$")


def tag_step(name: str) -> int | None:
    m = _TAG.match(name)
    return int(m.group(1)) if m else None


def checkpoint_files(tag_dir) -> list[str]:
    """Every regular file under a tag directory (relative POSIX paths), the manifest itself excluded."""
    tag_dir = Path(tag_dir)
    out = []
    for path in tag_dir.rglob("*"):
        rel = path.relative_to(tag_dir).as_posix()
        if path.is_file() and not path.is_symlink() and not rel.startswith((MANIFEST, f".{MANIFEST}")):
            out.append(rel)
    return sorted(out)


def hash_share(tag_dir, names: list[str], rank: int, world: int) -> dict:
    """sha256 of this rank's share of ``names`` (every world-th file); an unreadable file maps to an error text."""
    out = {}
    for name in names[rank::world]:
        try:
            out[name] = sha256_file(Path(tag_dir) / name)
        except OSError as exc:
            out[name] = f"error: {exc.strerror or exc}"
    return out


def _atomic_write(path: Path, text: str) -> None:
    """``text`` into ``path`` by a rename, durable before this returns (the file and then its directory are synced).

    Not electra_ds.common.fileio.atomic_path, on purpose: (1) the manifest must be on disk before ``latest`` names
    its checkpoint, and ``latest`` before older checkpoints are pruned, so a crash or power cut right after a save
    never leaves ``latest`` naming a checkpoint without its manifest (atomic_path renames but does not sync);
    (2) a failed write stays an OSError, which Trainer.save turns into one error on every rank together, where
    atomic_path's UserError for a full disk would end rank 0 alone and leave the others waiting in a collective."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # the rename itself is durable only once the directory is synced
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_manifest(tag_dir, *, tag: str, step: int, run_config: dict, world_size: int, digests: dict) -> dict:
    tag_dir = Path(tag_dir)
    files = {name: {"size": (tag_dir / name).stat().st_size, "sha256": digests[name]} for name in sorted(digests)}
    manifest = {"format": MANIFEST_FORMAT, "tag": tag, "step": step, "world_size": world_size,
                "run_config": run_config, "files": files}
    _atomic_write(tag_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def write_latest(ckpt_dir, tag: str) -> None:
    _atomic_write(Path(ckpt_dir) / "latest", tag)


def read_latest(ckpt_dir) -> tuple[str | None, str | None]:
    """(tag named by ``latest``, None) or (None, why it is unusable); (None, None) when there is no file."""
    path = Path(ckpt_dir) / "latest"
    if not path.exists():
        return None, None
    try:
        raw = path.read_bytes()[:4096]
        tag = raw.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"unreadable ({type(exc).__name__})"
    if not tag:
        return None, "empty"
    if "/" in tag or tag in (".", "..") or not (Path(ckpt_dir) / tag).is_dir():
        return None, f"names {tag[:60]!r}, which is not a checkpoint directory here"
    return tag, None


# What checkpoints written before a run-config field existed did: such a checkpoint resumes when this run asks
# for that behaviour: the pretrain settings' from their declaration (``before`` in electra_ds.pretraining.config),
# the model shape's listed here.
BEFORE_FIELD = {**config.BEFORE_FIELD, "model.generator_layers": 1.0, "model.attention_bias": "none"}


# Fields checked only since checkpoints recorded them: an older checkpoint, without them, resumes with any value.
UNRECORDED_BEFORE = config.UNRECORDED_BEFORE


# Fields that choose how a result is computed, not what is computed: a run may resume with another value.
NOT_CHECKED = ("model.attn_implementation",)  # eager / sdpa / auto: the same attention, other kernels


_ABSENT = object()


def field_differences(saved, current, prefix: str = "") -> list[tuple]:
    """``(field, the checkpoint's value, this run's value, predates)`` for every leaf that differs (nested dicts
    flattened with dots). A field the checkpoint predates gets the value such a checkpoint ran with
    (``BEFORE_FIELD``) and ``predates`` True; ``_ABSENT`` stands for a field one side does not have at all."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current), key=str):
            name = f"{prefix}{key}"
            if name in NOT_CHECKED or (key not in saved and name in UNRECORDED_BEFORE):
                continue
            if key not in saved and name in BEFORE_FIELD:
                if current[key] != BEFORE_FIELD[name]:
                    out.append((name, BEFORE_FIELD[name], current[key], True))
            elif key not in saved or key not in current:
                out.append((name, saved.get(key, _ABSENT), current.get(key, _ABSENT), False))
            else:
                out.extend(field_differences(saved[key], current[key], name + "."))
        return out
    return [] if saved == current else [(prefix.rstrip("."), saved, current, False)]


def difference_line(difference: tuple) -> str:
    """``field: checkpoint X, this run Y`` for one :func:`field_differences` entry."""
    name, was, now, predates = difference
    if was is _ABSENT:
        return f"{name}: not in the checkpoint, this run {now!r}"
    if now is _ABSENT:
        return f"{name}: checkpoint {was!r}, not in this run"
    recorded = " (written before the field was recorded)" if predates else ""
    return f"{name}: checkpoint {was!r}{recorded}, this run {now!r}"


def config_differences(saved, current) -> list[str]:
    """``field: checkpoint X, this run Y`` for every leaf that differs (:func:`field_differences`); a field the
    checkpoint predates says so (``checkpoint X (written before the field was recorded)``)."""
    return [difference_line(d) for d in field_differences(saved, current)]


def _hint(differences: list[tuple]) -> str:
    pairs = [(name, was) for name, was, now, _ in differences if was is not _ABSENT and now is not _ABSENT]
    if not pairs:
        return ""
    shown = ", ".join(f"{name} = {json.dumps(was)}" for name, was in pairs[:4])
    return (f"to continue this run, give it the checkpoint's values ({shown}: in the pipeline's config, or the "
            "pretrain command's options); ")


def continue_hint(saved, current, allow_changes=()) -> str:
    """How to give this run the checkpoint's values: ``field = value`` for the fields that differ (at most
    four; not those in ``allow_changes``), '' when no field has a value on both sides."""
    return _hint([d for d in field_differences(saved, current) if d[0] not in allow_changes])


def _foreign(saved, run_config: dict, allow_changes) -> dict | None:
    """The ``foreign`` verdict when the run may not resume from a checkpoint of run config ``saved``: the
    differences outside ``allow_changes`` and how to continue the run; None when it may."""
    refused = [d for d in field_differences(saved, run_config) if d[0] not in allow_changes]
    if not refused:
        return None
    return {"status": "foreign", "differences": [difference_line(d) for d in refused], "continue": _hint(refused)}


def _legacy_run_config(tag_dir: Path):
    """run_config from the client state in a DeepSpeed model-states file (memory-mapped: no weights read)."""
    import torch

    states = sorted(tag_dir.glob("*model_states.pt"))
    with weights_only_loading():
        client = torch.load(states[0], map_location="cpu", mmap=True)
    return client.get("run_config")


def inspect(ckpt_dir, tag: str, run_config: dict, latest_tag: str | None, allow_changes=()) -> dict:
    """Cheap verdict on one tag directory (no digests): status is one of

    * ``sized``: manifest present, every file there with its size; digests still to be checked;
    * ``legacy``: no manifest but DeepSpeed's files, and ``latest`` names it (see below);
    * ``damaged``: incomplete or damaged, with ``reason``;
    * ``foreign``: written with another run configuration, with ``differences``.

    Legacy checkpoints (written before manifests existed, or converted by DeepSpeed's ds_to_universal) are
    accepted with a warning, but only the one ``latest`` names: DeepSpeed wrote ``latest`` after all ranks had
    saved, and this code never points ``latest`` at a tag without a manifest, so a manifest-less directory that
    ``latest`` does not name is an interrupted save. Their run config is read from the client state (memory-
    mapped) before anything is loaded; their files cannot be verified.
    """
    tag_dir = Path(ckpt_dir) / tag
    mpath = tag_dir / MANIFEST
    if not mpath.exists():
        if not any(tag_dir.glob("*model_states.pt")):
            return {"status": "damaged", "reason": "no manifest and no model states: the save did not finish"}
        if tag != latest_tag:
            return {"status": "damaged", "reason": "no manifest: the save did not finish"}
        try:
            saved = _legacy_run_config(tag_dir)
        except Exception as exc:  # any unreadable pickle/zip: this checkpoint cannot be used
            return {"status": "damaged", "reason": f"legacy checkpoint unreadable ({type(exc).__name__}: {exc})"[:300]}
        foreign = _foreign(saved, run_config, allow_changes) if saved is not None else None
        if foreign:
            return foreign
        return {"status": "legacy", "reason": "written without a manifest (before checksums, or converted); "
                                              "its files cannot be verified"}
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
        saved = manifest["run_config"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {"status": "damaged", "reason": f"unreadable manifest ({type(exc).__name__})"}
    foreign = _foreign(saved, run_config, allow_changes)
    if foreign:
        return foreign
    problem = size_problem(tag_dir, files)
    if problem:
        return {"status": "damaged", "reason": problem}
    return {"status": "sized", "files": {n: m["sha256"] for n, m in files.items()}}


def size_problem(tag_dir, files: dict | None = None) -> str | None:
    """What is wrong with a manifest checkpoint's files by their sizes (missing, truncated), else None.

    ``files``: the manifest's ``files`` (read from the tag directory when not given). A checkpoint without
    a manifest has nothing to check against: None."""
    tag_dir = Path(tag_dir)
    if files is None:
        try:
            files = json.loads((tag_dir / MANIFEST).read_text())["files"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"unreadable manifest ({type(exc).__name__})"
    for name, meta in files.items():
        path = tag_dir / name
        if not path.is_file():
            return f"file {name} is missing"
        size = path.stat().st_size
        if size != meta["size"]:
            return f"file {name} has {size} bytes, the manifest says {meta['size']}"
    return None


def candidates(ckpt_dir, latest_tag: str | None) -> list[str]:
    """Tag directories newest first (by step; at equal steps the one ``latest`` names first)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    tags = [p.name for p in ckpt_dir.iterdir() if p.is_dir() and tag_step(p.name) is not None]
    return sorted(tags, key=lambda t: (tag_step(t), t == latest_tag, t), reverse=True)


def _identity(obj):
    return obj


def _single(obj):
    return [obj]


def choose_checkpoint(ckpt_dir, run_config: dict, rank: int = 0, world: int = 1, broadcast=_identity,
                      all_gather=_single, log=None, allow_changes=()) -> tuple[str | None, str | None]:
    """The tag to resume from (newest intact), as (tag, status), or (None, None) to start fresh.

    Rank 0 decides and every decision goes through ``broadcast`` (ranks on other nodes may see a shared
    filesystem at another moment); digests are computed by all ranks in parallel (``all_gather``). Damaged
    checkpoints are skipped with a warning; another run's checkpoint, or damaged ones only, are a UserError
    raised on every rank before any weight is loaded. ``allow_changes``: run-config fields that may differ (the
    user's --allow-resume-change).
    """

    log = log or logging.getLogger(__name__)
    ckpt_dir = Path(ckpt_dir)
    survey = None
    if rank == 0:
        latest_tag, problem = read_latest(ckpt_dir)
        survey = {"latest": latest_tag, "problem": problem, "tags": candidates(ckpt_dir, latest_tag)}
    survey = broadcast(survey)
    if survey["problem"] and rank == 0:
        log.warning("ignoring %s: it is %s; looking for the newest intact checkpoint instead",
                    ckpt_dir / "latest", survey["problem"])
    rejected = []
    for tag in survey["tags"]:
        verdict = broadcast(inspect(ckpt_dir, tag, run_config, survey["latest"], allow_changes) if rank == 0 else None)
        status = verdict["status"]
        if status == "foreign":
            shown = "; ".join(verdict["differences"][:8])
            raise UserError(f"checkpoint {tag} was written by a run with a different configuration ({shown}); "
                            "nothing was loaded", path=ckpt_dir,
                            fix=f"{verdict.get('continue', '')}to start this configuration afresh, use a new "
                                f"output/results directory or delete {ckpt_dir}; to continue this run with another "
                                f"{_either(config.RESUME_CHANGEABLE)} on purpose, name them in "
                                "--allow-resume-change (pretrain.allow_resume_change)")
        if status == "sized":
            names = sorted(verdict["files"])
            parts = all_gather(hash_share(ckpt_dir / tag, names, rank, world))
            bad = None
            if rank == 0:
                got = {k: v for part in parts for k, v in part.items()}
                wrong = [n for n in names if got.get(n) != verdict["files"][n]]
                bad = f"checksum mismatch in {', '.join(wrong[:3])}" + (" ..." if len(wrong) > 3 else "") \
                    if wrong else None
            bad = broadcast(bad)
            if bad is None:
                return tag, "intact"
            verdict = {"status": "damaged", "reason": bad}
        if verdict["status"] == "legacy":
            if rank == 0:
                log.warning("checkpoint %s: %s; resuming from it", ckpt_dir / tag, verdict["reason"])
            return tag, "legacy"
        rejected.append((tag, verdict["reason"]))
        if rank == 0:
            log.warning("skipping checkpoint %s: %s", ckpt_dir / tag, verdict["reason"])
    if rejected:
        listing = "; ".join(f"{t}: {r}" for t, r in rejected)
        paths = " ".join(str(ckpt_dir / t) for t, _ in rejected)
        raise UserError(f"no intact checkpoint to resume from ({listing})", path=ckpt_dir,
                        fix=f"delete the damaged checkpoints (rm -r {paths}) to start again from step 0, "
                            "or restore them from a copy")
    return None, None


def _either(names) -> str:
    """``a, b or c``."""
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def intact_for_pruning(ckpt_dir, tag: str, latest_tag: str | None) -> bool:
    """Manifest present and sizes right (or the legacy checkpoint ``latest`` names): worth keeping."""
    tag_dir = Path(ckpt_dir) / tag
    mpath = tag_dir / MANIFEST
    if not mpath.exists():
        return tag == latest_tag and any(tag_dir.glob("*model_states.pt"))
    return size_problem(tag_dir) is None


def prune(ckpt_dir, current: str, keep: int, previous_latest: str | None = None) -> list[str]:
    """Delete checkpoints older than ``current`` except the newest ``keep`` intact ones (``current`` counts).

    Only intact checkpoints count towards ``keep``, so pruning never removes the last intact one because
    newer ones are damaged. Directories newer than ``current`` (left by a run that fell back past them) are
    left alone: the run overwrites them when it reaches their step. ``previous_latest``: what ``latest``
    named before this save (a legacy checkpoint there counts as intact).
    """
    if keep <= 0:
        return []
    ckpt_dir = Path(ckpt_dir)
    step = tag_step(current)
    older = [t for t in candidates(ckpt_dir, previous_latest) if t != current and tag_step(t) <= step]
    kept = 1  # current: its manifest was just written
    removed = []
    for tag in older:  # newest first
        if kept < keep and intact_for_pruning(ckpt_dir, tag, previous_latest):
            kept += 1
            continue
        shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
        removed.append(tag)
    return removed
