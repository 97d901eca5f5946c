"""Plan and run a recipe: fingerprint each stage, skip what is done, resume what was cut off.

A stage is complete only when `run_dir/<stage>/DONE` holds its current fingerprint; DONE is
written last, after the outputs and the manifest, so a kill at any moment leaves either a
complete stage or one that the next run resumes (training) or redoes (everything else).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tempa.chat_templates.one_line import first_line, typed_line
from tempa.merge.eval_data import evaluation_prompts
from tempa.merge.publish import FINAL_RECORD, write_final_record
from tempa.recipes import __version__
from tempa.recipes.errors import RecipeError
from tempa.recipes.fingerprint import located, referenced_files
from tempa.recipes.held_signals import hangup_stops
from tempa.recipes.launcher import deepspeed_config_path, hardware_problem, reap_stale_launch, run_launch
from tempa.recipes.loader import LoadedRecipe, stage_reads
from tempa.recipes.registry import stage_kind
from tempa.recipes.rundir import (
    Manifest,
    RunLock,
    check_run_dir,
    clear_stage,
    clear_stage_but,
    damaged_output,
    done_fingerprint,
    forced_run,
    lost_record,
    mark_done,
    read_manifest,
    record_forced_run,
    remove_unused_run_dir,
    resolved_recipe,
    run_in_progress,
    stale_inputs,
    sweep_trash,
    write_metrics,
)
from tempa.recipes.schema import TINY_DEFAULT, LaunchConfig
from tempa.recipes.software import software
from tempa.sft.checkpoints import CheckpointLaunch, last_complete_checkpoint, launch_refusal
from tempa.sft.files import cache_root, digest, file_digest, path_digest, point_link, write_atomic
from tempa.sft.global_batch import rows_per_step
from tempa.sft.run_layout import (
    CHECKPOINTS_DIR,
    DONE,
    FINAL_DIR,
    FINAL_LINK,
    FORCED_RUN,
    LOGS_DIR,
    RESERVED_NAMES,
    RESOLVED_RECIPE,
    TOKENIZER_DIR,
)
from tempa.sft.stage_api import (
    API_USAGE,
    ApiUsage,
    Artifact,
    EvalPrompts,
    RecipeInfo,
    StageConfigBase,
    StageContext,
    StageError,
    StageKind,
    TrainingEnv,
    Upstream,
    fingerprinted,
    format_metric,
    secret_env_names,
)
from tempa.sft.throughput_summary import latest_progress

log = logging.getLogger("tempa")


@dataclass
class StageDecision:
    """What `tempa run` will do with one stage, and why (what `tempa plan` shows)."""

    index: int
    name: str
    kind: str
    upstream: str | None  # the stage whose model it starts from (None: the base model)
    reads: list[str]  # further stages it reads
    fingerprint: str
    components: dict[str, Any]
    action: str  # skip | run | resume | rerun; running (only in `tempa plan` while another run holds the folder)
    reason: str
    resumable: bool = False
    complete: bool = False  # DONE holds the current fingerprint (before any forcing)
    finished: bool = False  # its last run finished (a done manifest): a skip can hand on its results
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config (stored in the manifest)
    inputs: list[str] = field(default_factory=list)  # the earlier stages it is handed (its from and reads)
    stale: list[str] = field(default_factory=list)  # inputs that ran (or will run) again since it ran
    # The checkpoint an interrupted run of it reached, which this re-run would delete (its config or inputs changed
    # since): the run refuses unless --from/--only names it (check_discards).
    discards: str | None = None
    # A re-run that keeps the stage's journals (its kind's `journals`), clearing the rest of its folder: their own
    # signatures decide which teacher answers, judge replies and samples are still valid.
    keeps_journals: bool = False
    # Its record (manifest.json) is there but cannot be read, or DONE is there without it: what it ran with and what
    # it made are unknown, so only --from/--only re-runs it (lost_record says what is wrong).
    lost: str | None = None


@dataclass
class RunSummary:
    run_dir: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # complete: their results stand
    not_run: list[str] = field(default_factory=list)  # passed over by --only with no finished run: nothing stands
    stale: list[str] = field(default_factory=list)  # skipped by --only although an input re-ran: out of date
    final_model: Path | None = None
    final_origin: str | None = None  # which stage's model it is, and what that is made of (model_origin)
    notes: list[str] = field(default_factory=list)  # the stages' own notes (StageResult.notes), in order


# --------------------------------------------------------------------------- inputs


def resolve_base_model(loaded: LoadedRecipe) -> Path:
    """The base model as a local safetensors folder (tiny default built/cached, hub ids downloaded).

    A pickled base model is refused, or with ``allow_pickle_weights`` converted once into the
    cache, so that no later stage (or mergekit) ever unpickles anything.
    """
    from tempa.alignment.model_files import base_model_problem, pickle_files

    ref = loaded.recipe.base_model
    if ref == TINY_DEFAULT:
        from tempa.recipes.tiny import cached_tiny_default

        return cached_tiny_default()
    allow_pickle = loaded.recipe.allow_pickle_weights
    folder = Path(ref) if Path(ref).is_dir() else _download_model(ref, allow_pickle=allow_pickle)
    problem = base_model_problem(folder, allow_pickle=allow_pickle)
    if problem is not None:
        raise StageError(f"base_model {ref}: {problem}")
    if not any(folder.glob("*.safetensors")) and pickle_files(folder):
        return _as_safetensors(folder, loaded)
    return folder


def _download_model(ref: str, *, allow_pickle: bool) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    # safetensors only: pickled weights are never downloaded (unless the recipe opts in), so never loaded.
    from tempa.alignment.model_files import LICENSE_FILE_PATTERNS

    patterns = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "*.py", *LICENSE_FILE_PATTERNS]
    try:
        return Path(snapshot_download(ref, allow_patterns=patterns + (["*.bin", "*.pt"] if allow_pickle else [])))
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise StageError(
                f"base_model '{ref}': not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading "
                f"it; download it first (hf download {ref}) or set base_model to a local folder"
            ) from None
        raise StageError(
            f"base_model '{ref}': the Hugging Face Hub cannot be reached and the model is not in the local cache; "
            "check the network, or set base_model to a local folder"
        ) from None
    except RepositoryNotFoundError:
        raise StageError(
            f"base_model '{ref}': no such model on the Hugging Face Hub (or it is gated/private: log in with "
            "`hf auth login`); a local folder must exist"
        ) from None
    except HfHubHTTPError as exc:
        first = first_line(exc)
        raise StageError(f"base_model '{ref}': download failed: {first}") from None


def _as_safetensors(folder: Path, loaded: LoadedRecipe) -> Path:
    """The opted-in pickled base model, converted once into the cache (keyed by its contents)."""
    from tempa.alignment.model_files import convert_to_safetensors
    from tempa.sft.files import staging_dir

    root = cache_root()
    out = root / "safetensors-models" / path_digest(folder)[:32]
    if (out / DONE).is_file():
        return out
    log.warning("base model %s: converting pickled weights to safetensors once (allow_pickle_weights) -> %s",
                folder, out)
    with staging_dir(out, inside=[root]) as tmp:
        convert_to_safetensors(folder, tmp, trust_remote_code=loaded.recipe.trust_remote_code)
        write_atomic(tmp / DONE, f"{folder}\n")
    return out


def base_model_fingerprint(loaded: LoadedRecipe) -> str:
    ref = loaded.recipe.base_model
    if ref == TINY_DEFAULT:
        from tempa.recipes.tiny import tiny_default_key

        return digest({"tiny": tiny_default_key()})
    path = Path(ref)
    return path_digest(path) if path.exists() else digest({"hub": ref})


def template_defaults(loaded: LoadedRecipe):
    """The recipe's `thinking_default` / `stock_preamble`, as the baked template's defaults."""
    from tempa.chat_templates import TemplateDefaults

    return TemplateDefaults(thinking_mode=loaded.recipe.thinking_default, stock_preamble=loaded.recipe.stock_preamble)


def template_text(loaded: LoadedRecipe) -> str:
    """The recipe's chat template with its defaults baked in: the text every stage renders with."""
    from tempa.chat_templates import load_template, with_defaults

    try:
        return with_defaults(load_template(loaded.recipe.chat_template), template_defaults(loaded),
                             origin=f"chat template {loaded.recipe.chat_template}")
    except (OSError, ValueError) as exc:
        raise StageError(f"{loaded.path}: chat_template: {exc}") from None


# --------------------------------------------------------------------------- plan


def exports_in(stage_dir: Path) -> list[str]:
    """Files ``tempa export gguf`` wrote into a stage's final folder (its default place): a GGUF, its Modelfile."""
    from tempa.merge.gguf_export import exports_in_folder

    final = stage_dir / FINAL_DIR
    if not final.is_dir() or final.is_symlink():
        return []
    return [path.name for path in exports_in_folder(final)]


def _removes_exports(names: list[str], kind: StageKind) -> str:
    if FINAL_DIR in kind.kept_until_replaced:
        # the stage writes its new final folder itself (the bake), and keeps the exports if they are still right
        return (f"keeps {', '.join(names)} that `tempa export gguf` wrote into its final folder if the weights, "
                "tokenizer, chat template, generation config and licence they were made from come out unchanged, "
                "else removes them")
    return (f"removes {', '.join(names)} that `tempa export gguf` wrote into its final folder (made from the "
            "previous model: export again)")


def plan_run(
    loaded: LoadedRecipe, run_dir: Path, *, from_stage: str | None = None, only: str | None = None,
    running_elsewhere: bool = False,
) -> list[StageDecision]:
    """Decide, for every stage, whether it is skipped, run, resumed or re-run (and why).

    ``running_elsewhere``: another runner holds the run directory now (``tempa plan`` during a run), so an
    unfinished stage is running, not interrupted.
    """
    for flag, forced in (("--from", from_stage), ("--only", only)):
        if forced is not None:
            loaded.stage(forced, who=f"{flag} {forced}")  # unknown name -> RecipeError listing the stages
    base_fp = base_model_fingerprint(loaded)
    template_fp = digest(template_text(loaded))
    resolved = loaded.resolved()
    decisions: list[StageDecision] = []
    fps: dict[str, str] = {}
    run_ids: dict[str, str] = {}  # each earlier stage's last run, from its manifest
    will_run: set[str] = set()
    out_of_date: set[str] = set()  # stale stages: what is built on them is stale too, even where --only skips them
    forcing = False
    continued = forced_run(run_dir, from_stage, only)  # the unfinished run these flags started, if any
    for i, config in enumerate(loaded.stages):
        name = config.name
        kind = stage_kind(config.kind)
        upstream, reads = loaded.upstream(i), stage_reads(loaded, i)
        implicit = None  # the start an earlier tempa counted for a stage that never opens it
        if not kind.reads_start_model and upstream not in reads:
            # its implicit start (the stage before it) is no input of it; a stage it reads stays its upstream, so
            # that the fingerprint of a merge of the stage before it is as an earlier tempa recorded it
            implicit, upstream = upstream, None
        dump = config.model_dump(mode="json", by_alias=True)
        kept = fingerprinted(config)
        reads = [dep for dep in reads if dep != upstream]
        inputs = loaded.names[:i] if kind.sees_all_earlier else [dep for dep in (upstream, *reads) if dep]
        files = referenced_files(kept)  # files a setting that plays no part names are no input
        components = {
            "tempa_version": __version__,
            # less what changes how it runs, not what it makes; its paths by name, not where (what they hold: "files")
            "config": digest(located(kept, files, content=False)),
            # each file's digest, so that the plan can name the one that changed; the fingerprint holds their digest
            "files": files,
            "upstream": fps[upstream] if upstream else base_fp,
            "depends_on": {dep: fps.get(dep) for dep in reads},
            "template": template_fp,
            "seed": loaded.recipe.seed,
            "trust_remote_code": loaded.recipe.trust_remote_code,
        }
        if kind.shows_recipe is not None:
            components["recipe"] = kind.shows_recipe(resolved)
        fp = digest(_fingerprinted(components))
        stage_dir = run_dir / name
        manifest = read_manifest(stage_dir)
        unfingerprinted = frozenset(_flatten(dump)) - frozenset(_flatten(kept))
        done = done_fingerprint(stage_dir)
        recorded = manifest.components if manifest is not None else {}
        if implicit is not None and recorded.get("upstream") == fps.get(implicit):
            # an earlier tempa counted the stage before it, as it is now, for its start: counted differently only
            recorded = {**recorded, "upstream": components["upstream"]}
        if (done not in (None, fp) and manifest is not None and manifest.status == "done"
                and manifest.fingerprint == done
                and _counted_differently(recorded, components, manifest.config, dump, unfingerprinted)):
            # Its settings and inputs are as it ran them; only this tempa's way of counting them changed (an
            # upgrade): its results stand, and its fingerprint stays the one the stages built on it recorded.
            fp = done
        fps[name] = fp
        forcing = forcing or name == from_stage
        forced = forcing or name == only
        # what the unfinished run these flags started has (re)started already: it stands, or resumes, as in a plain run
        forced_before = forced and continued is not None and manifest is not None and \
            manifest.started_at >= continued.started_at
        forced = forced and not forced_before
        action, reason, discards = _decide(stage_dir, manifest, fp, components, dump, forced, kind.resumable,
                                           from_stage or only, kind.resume_point, running_elsewhere,
                                           starts_from=_starts_from(loaded, upstream),
                                           unfingerprinted=unfingerprinted)
        if forced_before:
            reason += f"; the unfinished `{continued.command}` run re-ran it, and this one continues that run"
        damaged = damaged_output(manifest, run_dir) if action == "skip" and manifest is not None else []
        if damaged:  # complete by its marker, but what it made is not all there: what is built on it re-runs too
            action, reason = "rerun", f"its output is damaged: {'; '.join(damaged[:3])}"
        lost = lost_record(stage_dir) if manifest is None else None
        if lost is not None:
            # Read as "changed since it ran" (every component) or "not run yet", a finished stage was cleared and
            # trained again, unasked.
            if forced:
                action, reason, discards = "rerun", f"forced by --from/--only {from_stage or only}; {lost}", None
            elif only is None:
                raise StageError(lost_refusal(name, lost))
        stale: list[str] = []
        reran: list[str] = []  # stale inputs that ran again (or run now)
        behind: list[str] = []  # stale inputs that are stale themselves
        if action == "skip" and manifest is not None:
            # Complete for its fingerprint, but built on an earlier stage that has run again since (--only),
            # or that runs again now: its outputs are out of date.
            reran = [dep for dep in inputs if dep in will_run or dep in stale_inputs(manifest, run_ids)]
            behind = [dep for dep in inputs if dep in out_of_date and dep not in reran]
            stale = [dep for dep in inputs if dep in reran or dep in behind]
            if stale:
                action, reason = "rerun", f"stale: {_stale_why(reran, behind)}"
                out_of_date.add(name)
        if action == "resume" and manifest is not None:
            # Cut off while built on an earlier stage that has run again since (--only), or runs again now: what it
            # completed started from that stage's previous model, and resuming would finish it on the old one.
            stale = [dep for dep in inputs if dep in will_run or dep in stale_inputs(manifest, run_ids)]
            if stale:
                discards = kind.resume_point(stage_dir) if kind.resume_point is not None else None
                ended = "failed" if manifest.status == "failed" else "interrupted"
                action, reason = "rerun", (f"{ended}{f' at {discards}' if discards else ''} and stale: "
                                           f"{_stale_why(stale, [])}")
                out_of_date.add(name)
        finished = manifest is not None and manifest.status == "done"
        if only is not None and name != only and action != "skip":
            action, reason, discards = "skip", "not selected by --only", None
            if lost is not None:
                reason += f"; {lost}"
            elif not finished:
                reason += "; not run yet" if manifest is None else "; its last run did not finish"
            if stale:
                why = [f"stale once {_names(reran)} re-ran"] if reran else []
                why += [f"stale: {_stale_why([], behind)}"] if behind else []
                reason += f"; {'; '.join(why)} (the next plain `tempa run` re-runs it)"
        if action == "resume" and kind.trains and (refusal := _launch_refusal(loaded, config, stage_dir)):
            raise StageError(refusal)
        # the stage --from/--only names starts over whole; the later ones --from re-runs leave it to the signatures
        keeps = (action == "rerun" and name not in (from_stage, only) and kind.journals is not None and manifest is not None
                 and _journals_signed(manifest.components, components))
        if keeps:
            reason += f"; {JOURNALS_KEPT}"
            if not kind.trains or not _has_trained(stage_dir):
                discards = None  # what it has paid for stays; nothing of it is lost
        elif action == "rerun" and name in (from_stage, only) and kind.journals is not None and \
                kind.journals(stage_dir):
            reason += f"; {JOURNALS_DELETED}"
        if action in ("run", "rerun") and exports_in(stage_dir):
            reason += f"; {_removes_exports(exports_in(stage_dir), kind)}"
        if action != "skip":
            will_run.add(name)
        if manifest is not None or lost is None:  # an unreadable record's run is unknown: nothing built on it is stale
            run_ids[name] = manifest.run_id if manifest is not None else ""
        complete = done_fingerprint(stage_dir) == fp and not damaged
        decisions.append(StageDecision(i, name, config.kind, upstream, reads, fp, components, action, reason,
                                       kind.resumable, complete, finished, dump, inputs, stale, discards, keeps,
                                       lost))
    if only is not None:
        _check_only_inputs(decisions, only)
    return decisions


def planned_launch(launch: LaunchConfig, train: Mapping[str, Any]) -> CheckpointLaunch:
    """What of the recipe's ``launch`` (and a stage's trainer arguments ``train``) a resume depends on, as far as the
    recipe tells: an accelerate config that names no process count leaves it (and the global batch) to accelerate,
    and the training processes check it themselves."""
    engine = launch.engine()
    kind = {"deepspeed": "deepspeed", "fsdp1": "fsdp", "fsdp2": "fsdp"}.get(engine.name, "plain")
    processes = launch.processes(engine)
    batch = launch.global_batch_size
    per_device = train.get("per_device_train_batch_size")
    if batch is None and processes and isinstance(per_device, int):
        batch = rows_per_step(per_device, int(train.get("gradient_accumulation_steps", 1)), processes,
                              launch.sequence_parallel)
    return CheckpointLaunch(kind, processes, batch, zero_stage=engine.zero_stage,
                            sequence_parallel=launch.sequence_parallel)


def _launch_refusal(loaded: LoadedRecipe, config: StageConfigBase, stage_dir: Path) -> str | None:
    """Why the interrupted training in ``stage_dir`` cannot resume under the recipe's launch (its last complete
    checkpoint was saved under another: the launch is not in the fingerprint, so the plan said resume), or None."""
    checkpoint = last_complete_checkpoint(stage_dir / CHECKPOINTS_DIR)
    saved = CheckpointLaunch.read(checkpoint) if checkpoint is not None else None
    if saved is None:
        return None
    return launch_refusal(config.name, checkpoint, saved, planned_launch(loaded.recipe.launch, config.train_args()))


def lost_refusal(name: str, lost: str) -> str:
    """Why a run (and a plan) stops at a stage whose record cannot be read (``lost``: what :func:`lost_record` says),
    and the way out."""
    return (f"stage '{name}': {lost}: the stage's record is lost; restore it, or force the stage to run again with "
            f"--from {name} / --only {name}")


JOURNALS_KEPT = "its journals are kept: answers whose request is unchanged since its last run are reused"
# A stage --from/--only names starts over whole, its paid answers with it: said, as a user reaching for --only to
# redo a selection would not expect it.
JOURNALS_DELETED = ("deletes its journals: every teacher answer, judge reply and sample it holds is asked for again "
                    "(a plain `tempa run` after a config change reuses those whose request is unchanged)")
# What a journal's signature does not hold: the chat template a local sampler renders requests with, whether a model's
# own code ran. (Another tempa asks as its requests' text and its signatures say: a record it cannot use is not
# reused, so journals go on across an upgrade as an interrupted stage resumes across one.)
_UNSIGNED = ("template", "trust_remote_code")


def _journals_signed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether a re-run may keep a journaling stage's journals and leave them to their signatures, given what changed
    since it ran (``old``: its manifest's components): its settings, its input files, its seed, the models it starts
    from or reads (named there by the run that made them) are in them or in their records' keys; a changed template
    or trust_remote_code is not, nor a model folder named in the config and changed in place (a signature holds its
    path)."""
    if any(old.get(key) != new.get(key) for key in _UNSIGNED):
        return False
    before, after = old.get("files"), new.get("files") or {}
    if not isinstance(before, dict):  # an older manifest holds one digest of them all: which one changed is unknown
        return before == digest(after)
    # a folder moved with its recipe (the same name and content elsewhere) is no folder changed in place
    moved = set(located(list(before), before))
    return not any(Path(path).is_dir() for path, value in after.items()
                   if before.get(path) != value and located(path, after) not in moved)


def _fingerprinted(components: Mapping[str, Any]) -> dict[str, Any]:
    """What a stage's fingerprint digests: its components with the input files as one digest of what they hold,
    wherever they are (manifests before the per-file digests held one digest of them all)."""
    files = components.get("files")
    # in the config's order: which field holds which content (two sources' files swapped) is an input too
    return {**components, "files": digest(located(list(files), files))} if isinstance(files, dict) \
        else dict(components)


def _changed_files(old: Any, new: Mapping[str, str]) -> str:
    """Which input files differ from the ones a stage ran with (``old``: the manifest's per-file digests, or their
    one digest in a manifest of an older tempa, which cannot tell them apart)."""
    if not isinstance(old, dict):
        return "input files, one or more of: " + ", ".join(new) if new else "input files"
    # As the fingerprint counts a file, by its name and what it holds, not where it lies: a recipe folder moved pairs
    # each file with the one of its name it ran with (the same place first), and one that holds the same is no change.
    unpaired = {path: _content(value) for path, value in old.items() if path not in new}
    changed = []
    for path, value in new.items():
        if path in old:
            ran = _content(old[path])
        else:
            ran = next((unpaired.pop(before) for before in list(unpaired) if Path(before).name == Path(path).name),
                       None)
        if ran != _content(value):
            changed.append(f"{path} ({'new' if ran is None else 'changed'})")
    changed += [f"{path} (no longer read)" for path in unpaired]
    return "input files: " + ", ".join(changed)


def _content(value: str) -> str:
    """What a file's entry in a stage's components holds of its content: its digest, less the path a link leads to."""
    return value.split(" -> ")[0]


def _names(names: list[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def _stale_why(reran: list[str], behind: list[str]) -> str:
    """Why a stage is stale, as `tempa status` says it: inputs that ran again, and inputs that are stale themselves."""
    why = [f"{_names(reran)} ran again since it ran"] if reran else []
    if behind:
        why.append(f"{_names(behind)} {'is' if len(behind) == 1 else 'are'} stale")
    return "; ".join(why)


def _decide(stage_dir: Path, manifest: Manifest | None, fp: str, components: dict, config: dict, forced: bool,
            resumable: bool, flag: str | None, resume_point: Callable[[Path], str | None] | None = None,
            running_elsewhere: bool = False, *, starts_from: str,
            unfingerprinted: frozenset[str] = frozenset()) -> tuple[str, str, str | None]:
    """(action, reason, the checkpoint of an interrupted run a re-run would delete although nothing forced it)."""
    done = done_fingerprint(stage_dir)
    # What an interrupted run of a training stage reached (a finished one's checkpoints are its results, not this).
    point = resume_point(stage_dir) if resume_point is not None and done is None and manifest is not None else None
    if forced and (manifest is not None or done is not None):
        return "rerun", f"forced by --from/--only {flag}" + (f"; deletes {point} of its interrupted run" if point
                                                              else ""), None
    if done == fp and manifest is not None and manifest.status == "done":
        return "skip", "complete; fingerprint matches", None
    old = manifest.components if manifest is not None else {}
    old_config = manifest.config if manifest is not None else None
    if done is not None:
        return "rerun", "changed since it ran: " + _what_changed(old, components, old_config, config, starts_from,
                                                                 unfingerprinted), None
    # A stage whose manifest says failed stopped on an error; any other unfinished one was stopped.
    ended = "failed" if manifest is not None and manifest.status == "failed" else "interrupted"
    if running_elsewhere and manifest is not None and manifest.status == "running":
        return "running", "another `tempa run` is running it now (`tempa status` follows it)", None
    if manifest is not None and (manifest.fingerprint == fp or _counted_differently(
            old, components, old_config, config, unfingerprinted, across_versions=True)):
        if resumable and resume_point is not None:
            if point is None:  # no checkpoint, no journaled sample or teacher answer: whatever the kind keeps
                return "rerun", f"{ended} with nothing complete to continue from; starts over", None
            return "resume", f"{ended}; continues from {point}", None
        if resumable:
            return "resume", f"{ended}; continues from what it completed (checkpoints, samples)", None
        return "rerun", f"{ended}; starts over (not a resumable stage)", None
    if manifest is not None:
        changed = _what_changed(old, components, old_config, config, starts_from, unfingerprinted)
        if point is not None:
            return "rerun", f"{ended} at {point} and changed since: {changed}", point
        return "rerun", f"{ended} and changed since: {changed}", None
    return "run", "not run yet", None


def _counted_differently(old: dict, new: dict, old_config: dict | None, config: dict,
                         unfingerprinted: frozenset[str], *, across_versions: bool = False) -> bool:
    """Whether a stage's settings and inputs are the same as when it ran, and only the way this tempa counts them
    changed (a setting it no longer fingerprints, such as `train.logging_steps`; its input files as one digest in the
    manifest of an earlier tempa): a finished stage stands, an unfinished one resumes. ``across_versions``: another
    tempa version ran it (an unfinished stage resumes across an upgrade; a finished one re-runs, as the version is
    part of its fingerprint)."""
    if old_config is None:
        return False
    before, after = _fingerprinted(old), _fingerprinted(new)
    if isinstance(new.get("files"), dict) and not isinstance(old.get("files"), dict):
        after["files"] = digest(new["files"])  # the one digest of the manifests before per-file digests: by path
    ignored = {"config", "tempa_version"} if across_versions else {"config"}
    if isinstance(old.get("files"), dict) and isinstance(new.get("files"), dict):
        # its paths as what lies there: a recipe folder moved since an earlier tempa, whose config digest held them
        old_config, config = located(old_config, old["files"]), located(config, new["files"])
    return (all(before.get(key) == value for key, value in after.items() if key not in ignored)
            and not _changed_settings(old_config, config, unfingerprinted))


def _starts_from(loaded: LoadedRecipe, upstream: str | None) -> str:
    """What a stage's `upstream` fingerprint stands for, as the plan names a change in it: a stage that makes no model
    (evaluate, synthesize) hands on the one it started from, and a change in it is its own (a leaderboard, a
    dataset), not a model's."""
    if upstream is None:
        # the tiny default's tokenizer is trained on the shipped sample data, so an edit of it is a new base model
        return ("base model (the embedded tiny default is built from the sample data in recipes/data/)"
                if loaded.recipe.base_model == TINY_DEFAULT else "base model")
    kind = stage_kind(loaded.stages[loaded.names.index(upstream)].kind)
    return f"model of '{upstream}'" if Artifact.MODEL in kind.produces else f"'{upstream}' (or what it started from)"


def _what_changed(old: dict, new: dict, old_config: dict | None, config: dict | None, starts_from: str,
                  ignore: frozenset[str] = frozenset()) -> str:
    labels = {
        "config": "stage config",
        "upstream": starts_from,  # the base model, or the model of the stage it starts from
        "depends_on": "stages it reads",
        "template": "chat template",
        "tempa_version": "tempa version",
        "seed": "recipe seed",
        "trust_remote_code": "trust_remote_code",
    }
    changed = []
    before, after = _fingerprinted(old), _fingerprinted(new)
    for key in new:
        if before.get(key) == after.get(key):
            continue
        label = labels.get(key, key)
        if key == "config" and old_config is not None and config is not None:
            if isinstance(old.get("files"), dict) and isinstance(new.get("files"), dict):
                # its paths as what lies there: a recipe folder moved, with a setting changed, names the setting only
                old_config, config = located(old_config, old["files"]), located(config, new["files"])
            label += " changed: " + config_diff(old_config, config, ignore=ignore)
        if key == "files":
            label = _changed_files(old.get(key), new[key])
        if key == "recipe":
            label = "the recipe it shows " + (f"changed: {config_diff(old[key], new[key])}" if key in old
                                              else "(the tempa that ran it did not record it)")
        changed.append(label)
    return ", ".join(changed) or "fingerprint"


def config_diff(old: Any, new: Any, *, limit: int = 4, ignore: frozenset[str] = frozenset()) -> str:
    """What differs between two config dumps: `train.learning_rate 2e-05 → 1e-05, data.heldout 0.05 → unset`;
    keys in ``ignore`` (settings no part of the fingerprint) are left out."""
    changes = _changed_settings(old, new, ignore)
    shown = ", ".join(changes[:limit])
    # no key differs: the settings are the same and what tempa counts of them changed (a field that now plays no
    # part in what the stage makes, after an upgrade)
    return shown + (f" (+{len(changes) - limit} more)" if len(changes) > limit else "") or (
        "no setting; this tempa fingerprints the same settings another way (an upgrade)")


def _changed_settings(old: Any, new: Any, ignore: frozenset[str] = frozenset()) -> list[str]:
    """`key old → new` for each setting that differs between two config dumps, less the keys in ``ignore``."""
    before, after = _flatten(old), _flatten(new)
    # A key set to None and a key that is absent are both "unset" (a block such as `lora: null` becoming
    # `lora: {r: 16}` flattens to `lora` on one side and `lora.r` on the other).
    return [f"{key} {_shown(before.get(key))} → {_shown(after.get(key))}"
            for key in dict.fromkeys([*before, *after]) if before.get(key) != after.get(key) and key not in ignore]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        out = {}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    return format_metric(value) if isinstance(value, float) else json.dumps(value, ensure_ascii=False)


def _check_only_inputs(decisions: list[StageDecision], only: str) -> None:
    """Refuse, before any work, an --only stage whose inputs are not complete: nothing else runs to make them."""
    by_name = {d.name: d for d in decisions}
    target = by_name[only]
    needed = set(target.reads)
    name = target.upstream
    # A stage that makes no model (evaluate, synthesize) hands on the one it started from, so that one is needed too.
    while name is not None:
        needed.add(name)
        if Artifact.MODEL in stage_kind(by_name[name].kind).produces:
            break
        name = by_name[name].upstream
    for d in decisions:
        if d.name in needed and d.lost is not None:
            raise StageError(f"--only {only}: its input {lost_refusal(d.name, d.lost)}")
        if d.name in needed and not (d.complete and d.finished):
            raise StageError(
                f"--only {only}: its input stage '{d.name}' is not complete; run it first (or use --from {d.name})"
            )


def check_stage_inputs(loaded: LoadedRecipe, decisions: list[StageDecision]) -> None:
    """Each stage that will run checks what it can of its own inputs now, before the first stage starts; and the
    launch is checked against the model a training stage will launch with."""
    check_sequence_parallel(loaded, [decision for decision in decisions if decision.action != "skip"])
    for problem in _refusals(loaded, decisions, lambda kind: kind.check_inputs):
        raise StageError(problem)


def profiles_ran(run_dir: Path, names: list[str] | None = None) -> set[str]:
    """The --profile each stage of the run directory (``names``' stages, else every one) ran with ("" for none); a
    stage of a tempa that did not record it is not counted."""
    folders = [run_dir / name for name in names] if names is not None else sorted(run_dir.glob("*/"))
    return {manifest.profile for folder in folders
            if (manifest := read_manifest(folder)) is not None and manifest.profile is not None}


def check_profile(loaded: LoadedRecipe, run_dir: Path) -> None:
    """Refuse a run (and a plan) whose --profile is not the one the run directory's stages ran with: a forgotten
    `--profile tiny` read every stage as changed, and a full-scale run's finished stages would have been cleared for a
    toy run of the same recipe (given the same --run-dir, or one started before runs with a profile had a default
    folder of their own)."""
    ran = profiles_ran(run_dir, loaded.names)
    given = loaded.profile or ""
    if ran and given not in ran:
        said = ", ".join(f"--profile {p}" if p else "no --profile" for p in sorted(ran))
        raise StageError(f"{run_dir}: its stages ran with {said}, and this run has "
                         f"{f'--profile {given}' if given else 'none'}; give the same --profile to go on with that run, "
                         "or another --run-dir for this one")


def other_recipe_warning(loaded: LoadedRecipe, run_dir: Path) -> str | None:
    """A run of ``loaded`` in a folder that holds a run of an unrelated recipe (another name, none of its stage names,
    not in its `extends:` chain): what the run replaces there, one line for `tempa plan` and the run's start. A
    warning, not a refusal: a child recipe goes on in its parent's folder on purpose."""
    from tempa.recipes.loader import recipe_name

    ran = resolved_recipe(run_dir) or {}
    other = ran.get("name")
    if not isinstance(other, str) or other == loaded.recipe.name:
        return None
    # The bake stage tempa adds to every recipe is `bake` in both: sharing it says nothing of how they relate.
    stages = [stage["name"] for stage in ran.get("stages") or [] if isinstance(stage, dict)
              and isinstance(stage.get("name"), str) and stage.get("kind") != "bake"] \
        if isinstance(ran.get("stages"), list) else []
    if set(stages) & {stage.name for stage in loaded.stages if stage.kind != "bake"}:
        return None
    lineage = set()
    for file in loaded.files:
        with contextlib.suppress(RecipeError, OSError):
            lineage.add(recipe_name(file))
    if other in lineage:
        return None
    final = " and its final model link" if (run_dir / FINAL_LINK).is_symlink() else ""
    shown = f" (stages {', '.join(stages)})" if stages else ""
    return (f"{run_dir}: holds the run of recipe '{other}'{shown}, which shares no stage with '{loaded.recipe.name}': "
            f"this run replaces its {RESOLVED_RECIPE}{final}, and `tempa status` will show only this recipe's stages; "
            "give another --run-dir to keep both")


@dataclass(frozen=True)
class TrainArgs:
    """A training stage's trainer arguments, as `tempa plan` shows them."""

    stage: str
    args: dict[str, Any]
    own: frozenset[str]  # the keys the recipe sets; the rest are tempa's defaults
    # now: what it will train with; ran: what a finished stage the run skips trained with (its manifest's); unrecorded:
    # such a stage whose tempa did not record them (``args`` are then this tempa's)
    source: Literal["now", "ran", "unrecorded"]
    # key: (what it trained with, what this tempa's default gives now), for a complete stage (no part of its
    # fingerprint: it stays complete)
    new_defaults: dict[str, tuple[Any, Any]] = field(default_factory=dict)


def train_args_shown(loaded: LoadedRecipe, decisions: list[StageDecision], run_dir: Path) -> list[TrainArgs]:
    """Each training stage's trainer arguments: what it will train with, or, for a finished stage the run skips, what
    it trained with. A change of tempa's defaults is no part of a fingerprint (an upgrade re-runs nothing finished),
    so the plan showed a skipped stage the defaults of this tempa, not the arguments it trained with."""
    shown = []
    for d in decisions:
        config = loaded.stages[d.index]
        if not stage_kind(d.kind).trains:
            continue
        now, own = config.train_args(), frozenset(getattr(config, "train", {}))
        manifest = read_manifest(run_dir / d.name) if d.action == "skip" and d.finished else None
        if manifest is None:
            shown.append(TrainArgs(d.name, now, own, "now"))
        elif manifest.train_args is None:
            shown.append(TrainArgs(d.name, now, own, "unrecorded"))
        else:
            ran = manifest.train_args
            ran_own = frozenset((manifest.config or {}).get("train") or {})
            # a key the recipe set, then or now, is a change of the recipe (a run-only one: a complete stage's is
            # its own concern), not of tempa's defaults
            changed = {key: (ran.get(key), now.get(key)) for key in dict.fromkeys([*now, *ran])
                       if key not in own | ran_own and ran.get(key) != now.get(key)} if d.complete else {}
            shown.append(TrainArgs(d.name, ran, ran_own, "ran", changed))
    return shown


def _has_trained(stage_dir: Path) -> bool:
    """Whether an unfinished stage holds training that starting it over clears: a complete checkpoint or a trained
    model, of the stage or of one of its rounds (its journals, samples and scores, are kept)."""
    from tempa.sft.checkpoints import complete_checkpoints

    folders = [stage_dir, *(path for path in stage_dir.iterdir() if path.is_dir())] if stage_dir.is_dir() else []
    return any((folder / FINAL_DIR).is_dir() or complete_checkpoints(folder / CHECKPOINTS_DIR) for folder in folders)


def check_discards(decisions: list[StageDecision]) -> None:
    """Refuse to delete the checkpoints of an interrupted training stage whose config or inputs changed since (days of
    training, cleared by an edit the user may have thought harmless): the user says so with --from, or undoes it."""
    for d in decisions:
        if d.discards is not None:
            raise StageError(
                f"stage '{d.name}': {d.reason}; `tempa run` will not delete what it completed and start it over "
                f"unless told: run with --from {d.name} to start it over"
                + ("" if d.stale else f", or undo the change to continue from {d.discards}")
            )


def check_sequence_parallel(loaded: LoadedRecipe, running: list[StageDecision]) -> None:
    """What refuses ``launch.sequence_parallel`` once a training launch is up, after the stages before it:
    trl's preference and RL trainers, and DeepSpeed's Ulysses for a size that does not fit the model's
    attention heads. Every stage trains the base model's architecture, so its config (local, cached, or tempa's
    copy: no download) says it now."""
    launch = loaded.recipe.launch
    if launch.sequence_parallel <= 1 or not any(stage_kind(d.kind).trains for d in running):
        return
    # trl's GRPO/RLOO configs refuse it; its preference collator gives no position_ids, which DeepSpeed's Ulysses
    # dataloader requires, and DPO sums each row's log-probabilities over the whole sequence.
    unsplit = next((d for d in running if d.kind in ("rl", "preference")), None)
    if unsplit is not None:
        raise StageError(f"launch.sequence_parallel: {launch.sequence_parallel}: trl's preference and RL trainers "
                         f"train without sequence parallelism (stage '{unsplit.name}', {unsplit.kind}); run that "
                         "stage from a recipe with launch.sequence_parallel: 1")
    if launch.engine().name != "deepspeed":
        return
    from tempa.recipes.estimate import resolve_shape, ulysses_problem

    shape, _ = resolve_shape(loaded.recipe.base_model)
    if shape is not None and (problem := ulysses_problem(shape, launch.sequence_parallel)):
        raise StageError(f"launch.sequence_parallel: {launch.sequence_parallel}: {problem} ({shape.name}); "
                         "`tempa plan --hardware` lists the sizes that fit")


def environment_problems(loaded: LoadedRecipe, decisions: list[StageDecision], *, here: bool = True) -> list[str]:
    """What this shell or machine lacks for the stages that will run (an API key's variable, the GPUs a launch starts
    a process on each of), one line each: the run refuses the first before its first stage (a judge's key was missed
    after the stages before it trained and the stage sampled every prompt); `tempa plan` warns. ``here`` False: a
    plan for other hardware (`--hardware`), which this machine's GPUs say nothing of."""
    trains = next((d.name for d in decisions if here and d.action != "skip" and stage_kind(d.kind).trains), None)
    launch = hardware_problem(loaded.recipe.launch) if trains is not None else None
    return [*([f"stage '{trains}' would fail: {launch}"] if launch else []),
            *_refusals(loaded, decisions, lambda kind: kind.check_environment)]


def input_warnings(loaded: LoadedRecipe, decisions: list[StageDecision]) -> list[str]:
    """What the stages that will run can tell of their inputs that is likely wrong, one line each: `tempa plan` and
    the run's start print them (the stage itself fails on it, later); and :func:`unread_datasets`."""
    return [f"stage '{d.name}': {warning}" for d in decisions
            if d.action != "skip" and (warn := stage_kind(d.kind).input_warnings) is not None
            for warning in warn(loaded.stages[d.index])] + unread_datasets(loaded, decisions)


def unread_datasets(loaded: LoadedRecipe, decisions: list[StageDecision]) -> list[str]:
    """Stages that will run to make only a dataset (synthesize, translate, generate_prompts) that no later stage reads,
    in a recipe that trains after them: most likely a data source left out (a seed recipe's tiny profile ran and paid
    its teacher for rows no stage trained on). A recipe that trains nothing after them makes data on purpose."""
    read = {name for index in range(len(loaded.stages)) for name in stage_reads(loaded, index)}
    return [f"stage '{d.name}': no later stage reads the dataset it makes (a data source `path: stage:{d.name}`), "
            "though later stages train: it runs, and asks its teacher, for its files alone"
            for d in decisions
            if d.action != "skip" and d.name not in read
            and stage_kind(d.kind).produces == frozenset({Artifact.DATASET})
            and any(stage_kind(later.kind).trains for later in decisions[d.index + 1:])]


def _refusals(loaded: LoadedRecipe, decisions: list[StageDecision],
              hook: Callable[[StageKind], Callable[[Any], None] | None]) -> Iterator[str]:
    """What ``hook`` (a stage kind's check) refuses of each stage that will run, one line each."""
    for decision in decisions:
        check = hook(stage_kind(decision.kind))
        if decision.action != "skip" and check is not None:
            try:
                check(loaded.stages[decision.index])
            except StageError as exc:
                yield f"stage '{decision.name}' would fail: {exc}"


# --------------------------------------------------------------------------- run


def run_recipe(
    loaded: LoadedRecipe, run_dir: Path, *, from_stage: str | None = None, only: str | None = None
) -> RunSummary:
    run_dir = run_dir.resolve()
    check_run_dir(run_dir)
    made = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]  # deepest first
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _run_checked(loaded, run_dir, from_stage, only)
    except BaseException:
        if made and not (run_dir / RESOLVED_RECIPE).exists():
            remove_unused_run_dir(made)  # refused (or stopped) before its first stage: no folder that looks like a run
        raise


def _run_checked(loaded: LoadedRecipe, run_dir: Path, from_stage: str | None, only: str | None) -> RunSummary:
    summary = RunSummary(run_dir)
    with hangup_stops(), RunLock(run_dir):
        sweep_trash(run_dir)
        check_profile(loaded, run_dir)
        resolved = loaded.resolved()
        decisions = plan_run(loaded, run_dir, from_stage=from_stage, only=only)
        check_stage_inputs(loaded, decisions)
        check_discards(decisions)
        problems = environment_problems(loaded, decisions)
        if problems:
            raise StageError(problems[0])
        for warning in [*input_warnings(loaded, decisions), *loaded.path_warnings]:
            log.warning("%s", warning)
        base_dir = resolve_base_model(loaded)
        if (replaces := other_recipe_warning(loaded, run_dir)) is not None:
            log.warning("%s", replaces)
        # Only now, the checks passed: `tempa status`, `push` and the default-folder guard read the recipe the folder's
        # stages ran, which a refused run of another recipe replaced.
        write_atomic(run_dir / RESOLVED_RECIPE, yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
        record_forced_run(run_dir, from_stage, only)
        template = template_text(loaded)
        tokenizer_dir = prepare_tokenizer(base_dir, loaded.recipe.chat_template, template, run_dir, log,
                                          defaults=template_defaults(loaded))
        recipe = RecipeInfo(name=loaded.recipe.name, base_model=loaded.recipe.base_model,
                            chat_template=loaded.recipe.chat_template, description=loaded.recipe.description,
                            resolved=resolved)
        done: dict[str, Upstream] = {}
        run_ids: dict[str, str] = {}  # each stage's run, as later stages record it (manifest `inputs`)
        # The model each stage hands on: its own, or (evaluate, synthesize) the one it started from.
        hands_on: dict[str, Path | None] = {}
        # And the run that made that model (the base model: its fingerprint), as journal signatures name a model: its
        # folder stays when its stage trains again.
        made_by: dict[str, str | None] = {}
        for decision in decisions:
            config = loaded.stages[decision.index]
            stage_dir = run_dir / decision.name
            start_run = made_by.get(decision.upstream) if decision.upstream else decision.components["upstream"]
            if decision.action == "skip":
                log.info("stage %s (%s): skip: %s", decision.name, decision.kind, decision.reason)
                if not decision.finished:
                    summary.not_run.append(decision.name)
                    continue  # not selected by --only and never finished: nothing to hand on, none needed
                summary.skipped.append(decision.name)
                upstream, run_ids[decision.name] = _skipped(decision, config, run_dir)
                if decision.stale:
                    summary.stale.append(decision.name)
                # Under --only the stage it started from may have no results; the --only stage then does not
                # need them (_check_only_inputs).
                start_model = hands_on.get(decision.upstream) if decision.upstream else base_dir
            else:
                start_model = hands_on[decision.upstream] if decision.upstream else base_dir
                log.info("stage %s (%s): %s: %s", decision.name, decision.kind, decision.action, decision.reason)
                reap_stale_launch(stage_dir, log=log)
                if decision.action in ("rerun", "run"):
                    exports = exports_in(stage_dir)
                    kind = stage_kind(decision.kind)
                    if exports and FINAL_DIR not in kind.kept_until_replaced:  # else the stage says what it did
                        log.warning("stage %s: %s", decision.name,
                                    _removes_exports(exports, kind).replace("removes", "removing", 1))
                    keep = [stage_dir / name for name in kind.kept_until_replaced]
                    if decision.keeps_journals:
                        keep += kind.journals(stage_dir)
                    clear_stage_but(stage_dir, run_dir, keep)
                visible = _visible(decision, done)
                model_runs = {path: run for name, up in visible.items()
                              if (path := up.result.model) is not None and (run := made_by.get(name)) is not None}
                if start_run is not None:
                    model_runs[start_model] = start_run
                ctx = _context(loaded, decision, run_dir, start_model, base_dir, tokenizer_dir, template, recipe,
                               visible, model_runs)
                run_ids[decision.name] = uuid.uuid4().hex
                upstream = _run_stage(config, decision, ctx, run_dir, run_ids, loaded.profile)
                summary.ran.append(decision.name)
            done[decision.name] = upstream
            summary.notes += upstream.result.notes
            hands_on[decision.name] = upstream.result.model or start_model
            made_by[decision.name] = run_ids[decision.name] if upstream.result.model is not None else start_run
        last_model = hands_on.get(decisions[-1].name) if decisions else None
        if last_model is not None:
            _point_final(run_dir, last_model)
            summary.final_model = run_dir / FINAL_LINK
            summary.final_origin = model_origin(decisions, done)
        (run_dir / FORCED_RUN).unlink(missing_ok=True)  # complete: the same flags again force their stages anew
    return summary


def model_origin(decisions: list[StageDecision], done: dict[str, Upstream]) -> str | None:
    """Which stage's model the final one is (the bake copies the model it starts from), and what that is made of: the
    demo's final model is a merge of two SFT stages, its preference stage ranked out, which its name alone hides."""
    last = decisions[-1]
    name = last.upstream if last.kind == "bake" and last.upstream else last.name
    upstream = done.get(name)
    if upstream is None or upstream.result.model is None:
        return None
    made_of = upstream.result.model_origin()
    return f"the model of stage '{name}'" + (f": {made_of}" if made_of else "")


def _visible(decision: StageDecision, done: dict[str, Upstream]) -> dict[str, Upstream]:
    """The earlier stages a stage is handed: those it reads (every earlier one for the bake)."""
    if stage_kind(decision.kind).sees_all_earlier:
        return dict(done)
    wanted = [decision.upstream, *decision.reads]
    return {name: up for name, up in done.items() if name in wanted}


def _skipped(decision: StageDecision, config: StageConfigBase, run_dir: Path) -> tuple[Upstream, str]:
    """A complete stage as later stages see it, from its manifest, and its run id."""
    manifest = read_manifest(run_dir / decision.name)
    if manifest is None or manifest.status != "done":
        raise StageError(f"stage '{decision.name}': its manifest is missing or unreadable; run it again with "
                         f"--from {decision.name}")
    return manifest.upstream(stage_kind(decision.kind).result, config, run_dir), manifest.run_id


_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".ckpt")


def _tokenizer_inputs_digest(base_dir: Path) -> str:
    """The base folder's files the bake reads: every top-level file but the weights (tokenizer.json, its config,
    special tokens, SentencePiece models, generation_config.json, config.json)."""
    files = sorted(p for p in base_dir.iterdir() if p.is_file() and not p.name.startswith(".")
                   and not p.name.endswith(_WEIGHTS) and not p.name.endswith(".index.json"))
    return digest({p.name: file_digest(p) for p in files}) if files else str(base_dir)


def prepare_tokenizer(base_dir: Path, template_ref: str, template: str, run_dir: Path, log: logging.Logger,
                      defaults=None) -> Path:
    """The base tokenizer with the recipe's template (name or path; ``template`` is its text, ``defaults``
    the recipe's baked defaults) baked in."""
    from tempa.chat_templates import bake_tokenizer

    out = run_dir / TOKENIZER_DIR
    # tempa's version too: a bake that changed (which pad token it picks, the generation config it writes) bakes again
    fp = digest({"template": digest(template), "base": _tokenizer_inputs_digest(base_dir), "tempa": __version__})
    if done_fingerprint(out) == fp:
        return out
    clear_stage(out, run_dir)
    log.info("baking the chat template into the base tokenizer -> %s", out)
    try:
        bake_tokenizer(base_dir, template_ref, out, model_dir=base_dir, defaults=defaults)
    except ValueError as exc:
        raise StageError(f"chat template check failed on the base tokenizer: {exc}") from None
    except Exception as exc:
        # tokenizers' Rust saver reports a full disk as a bare Exception ("No space left on device (os error 28)"),
        # which named neither the folder nor the way on
        if not isinstance(exc, OSError) and "os error" not in str(exc):
            raise
        raise StageError(f"writing the run's tokenizer to {out} failed: {exc}{disk_full_hint([out])}") from None
    mark_done(out, fp)
    return out


HUB_TOKEN_VARIABLES = frozenset({"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"})


def _context(loaded: LoadedRecipe, decision: StageDecision, run_dir: Path, start_model: Path, base_dir: Path,
             tokenizer_dir: Path, template: str, recipe: RecipeInfo, upstream: dict[str, Upstream],
             model_runs: dict[Path, str] | None = None) -> StageContext:
    launch = loaded.recipe.launch
    stage_dir = run_dir / decision.name
    stage_dir.mkdir(parents=True, exist_ok=True)

    # The API keys the recipe names for other stages' servers: this stage's training processes never send them.
    # The hub's token stays whoever else sends it (an HF router endpoint): downloads and trackers read it.
    withheld = secret_env_names(recipe.resolved) - secret_env_names(decision.config) - HUB_TOKEN_VARIABLES

    def _launch(module: str, args: list[str], log_file: Path) -> None:
        run_launch(launch, module, args, log_file, log=log, run_dir=run_dir, withhold=withheld)

    ds = deepspeed_config_path(launch.deepspeed_config) if launch.launcher == "torchrun" else None
    return StageContext(
        stage_name=decision.name,
        stage_dir=stage_dir,
        seed=loaded.recipe.seed,
        start_model=start_model,
        base_model=base_dir,
        tokenizer_dir=tokenizer_dir,
        chat_template=template,
        upstream=upstream,
        launch=_launch,
        training=TrainingEnv(use_cpu=launch.use_cpu, mixed_precision=launch.mixed_precision, deepspeed_config=ds,
                             trust_remote_code=loaded.recipe.trust_remote_code,
                             global_batch_size=launch.global_batch_size, sequence_parallel=launch.sequence_parallel,
                             processes=launch.processes()),
        log=log,
        cache_dir=cache_root(),
        recipe=recipe,
        eval_prompts=evaluation_prompts(loaded.stages) if decision.kind in DECONTAMINATED_KINDS else EvalPrompts(),
        model_runs=model_runs or {},
    )


# The stage kinds whose training data is kept clear of the recipe's evaluation prompts.
DECONTAMINATED_KINDS = frozenset({"sft"})


def decontamination_lines(loaded: LoadedRecipe) -> list[str]:
    """For `tempa plan`: per stage whose data is decontaminated, one line saying what it is checked against."""
    from tempa.sft.stage import decontamination_summary

    stages = [config for config in loaded.stages if config.kind in DECONTAMINATED_KINDS]
    prompts = evaluation_prompts(loaded.stages) if stages else EvalPrompts()
    return [f"{config.name}: {decontamination_summary(config.data, prompts)}" for config in stages]


def _run_stage(config: StageConfigBase, decision: StageDecision, ctx: StageContext, run_dir: Path,
               run_ids: dict[str, str], profile: str | None) -> Upstream:
    """Run one stage; the runner alone writes its manifest, metrics and (last) DONE."""
    kind = stage_kind(decision.kind)
    stage_dir = ctx.stage_dir
    logs = stage_dir / LOGS_DIR
    logs.mkdir(parents=True, exist_ok=True)
    handler = _StageLog(logs / "stage.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    manifest = Manifest(name=decision.name, kind=decision.kind, fingerprint=decision.fingerprint,
                        components=decision.components, status="running", action=decision.action,
                        started_at=time.time(), tempa_version=__version__, software=software(),
                        start_model=ctx.start_model,
                        run_id=run_ids[decision.name], inputs={dep: run_ids.get(dep, "") for dep in decision.inputs},
                        config=decision.config, train_args=ctx.training.as_launched(config.train_args()) if kind.trains else None,
                        profile=profile or "", interrupted="")
    manifest.write(stage_dir, run_dir)
    usage = ApiUsage()  # what its HTTP backends send: their requests and the tokens their servers bill
    counting = API_USAGE.set(usage)
    try:
        result = kind.run(config, ctx)
        if not isinstance(result, kind.result):
            raise TypeError(f"{decision.kind} stage returned {type(result).__name__}, not {kind.result.__name__}")
        if usage.requests:
            result = result.model_copy(update={"metrics": {**result.metrics, **usage.metrics()}})
    except StageError as exc:
        message = str(exc) + disk_full_hint([run_dir, ctx.cache_dir])
        _fail_if_writable(manifest, stage_dir, run_dir, message, handler)
        raise StageError(f"stage '{decision.name}' failed: {message}") from None
    except Exception as exc:
        message = typed_line(exc) + disk_full_hint([run_dir, ctx.cache_dir])
        try:
            (logs / "traceback.txt").write_text(traceback.format_exc())
            message += f" (traceback: {logs / 'traceback.txt'})"
        except OSError:  # a full disk: the error itself is what the user must see
            pass
        _fail_if_writable(manifest, stage_dir, run_dir, message, handler)
        raise StageError(f"stage '{decision.name}' failed: {message}") from None
    except KeyboardInterrupt as exc:
        # The terminal says it (the CLI's last line), but it may be gone (SIGHUP): the stage's log is where a user
        # finds why a run stopped. Its manifest stays `running`, which status and plan read as interrupted.
        why = str(exc) or ("Ctrl-C" if type(exc) is KeyboardInterrupt else type(exc).__name__)
        manifest.interrupted = why
        with contextlib.suppress(OSError):
            manifest.write(stage_dir, run_dir)  # for `tempa status`, after the terminal is gone
        with contextlib.suppress(OSError):
            handler.emit(log.makeRecord(log.name, logging.WARNING, __file__, 0, "stage %s interrupted (%s); run the "
                                        "same command again to resume", (decision.name, why), None))
        raise
    finally:
        API_USAGE.reset(counting)
        log.removeHandler(handler)
        with contextlib.suppress(OSError):  # its last lines may not fit on a full disk; the error above matters more
            handler.close()
    finished = time.time()
    try:
        write_metrics(stage_dir, result.metrics)
        manifest.status, manifest.finished_at = "done", finished
        manifest.duration_s = round(finished - manifest.started_at, 3)
        manifest.result = result.model_dump(mode="json", context={"run_dir": run_dir})
        if result.model is not None and result.model.resolve().is_relative_to(stage_dir.resolve()) and \
                not (result.model / FINAL_RECORD).exists():  # the bake's own leaves its exports out
            write_final_record(result.model)  # what status and the next run check the folder against
        manifest.write(stage_dir, run_dir)
        mark_done(stage_dir, decision.fingerprint)  # last: the stage is complete from here on
    except OSError as exc:  # a full disk, say: the work is there, but the stage is not complete without its records
        message = f"its work ended, but its records could not be written: {typed_line(exc)}"
        _fail_if_writable(manifest, stage_dir, run_dir, message, logging.NullHandler())
        raise StageError(f"stage '{decision.name}' failed: {message}") from None
    log.info("stage %s: done in %.1fs", decision.name, finished - manifest.started_at)
    return Upstream(decision.name, decision.kind, config, result, manifest.duration_s, manifest.train_args)


class _StageLog(logging.FileHandler):
    """A stage's ``logs/stage.log``. A line that cannot be written (a full disk) is lost from the file alone: the
    terminal shows every line anyway, where logging's default printed a traceback for each."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def _fail_if_writable(manifest: Manifest, stage_dir: Path, run_dir: Path, message: str,
                      stage_log: logging.Handler) -> None:
    """Record the failure where the disk lets it be written: on a full disk the manifest stays `running`, which
    the next run reads as interrupted, and the error the user sees is the stage's, not this write's ENOSPC."""
    with contextlib.suppress(OSError):
        _fail(manifest, stage_dir, run_dir, message, stage_log)


# Free space below which a failed stage most likely failed because its disk filled up (a checkpoint's partial file
# stays behind, so the disk is still full when the failure is reported).
LOW_DISK_BYTES = 64 << 20


def full_disk(folders: list[Path | None]) -> tuple[Path, int] | None:
    """The first of ``folders`` on a (nearly) full file system, and the bytes free there; None when none is."""
    for folder in folders:
        if folder is None:
            continue
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue
        if free < LOW_DISK_BYTES:
            return folder, free
    return None


def disk_full_hint(folders: list[Path | None]) -> str:
    """'; the disk of FOLDER is full (4 KiB free)' for the first of ``folders`` on a (nearly) full file system, else ''.

    Libraries report a full disk in their own words (torch.save: `unexpected pos 1387456 vs 1387344`)."""
    full = full_disk(folders)
    if full is None:
        return ""
    return (f"; the disk of {full[0]} is full ({full[1] // 1024:,} KiB free): free space, then run the same command "
            "again to resume")


def _fail(manifest: Manifest, stage_dir: Path, run_dir: Path, message: str, stage_log: logging.Handler) -> None:
    # The terminal shows the error once (the CLI prints it); the stage's own log must hold it too.
    stage_log.emit(log.makeRecord(log.name, logging.ERROR, __file__, 0, "stage %s failed: %s",
                                  (manifest.name, message), None))
    manifest.status, manifest.finished_at, manifest.error = "failed", time.time(), message
    manifest.duration_s = round(manifest.finished_at - manifest.started_at, 3)
    manifest.write(stage_dir, run_dir)


def _point_final(run_dir: Path, model_dir: Path) -> None:
    link = run_dir / FINAL_LINK
    if link.is_dir() and not link.is_symlink():
        clear_stage(link, run_dir)
    point_link(link, model_dir)


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class StageStatus:
    """One row of `tempa status`."""

    name: str
    kind: str
    state: str  # done | stale | damaged | failed | running | interrupted | pending | unreadable (its manifest.json)
    duration_s: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    note: str | None = None  # why a stage is stale; where a running or interrupted one stands
    # A running stage's last progress record, for scripts (`--json`): a training launch's step, max_steps, eta_s
    # and tokens_per_s (per device), or a journaled pass's desc, done, items, eta_s and samples_per_s; `at` is when
    progress: dict[str, Any] | None = None
    # The software it ran under (tempa and its git commit, torch, transformers, ...), as its manifest records it; None:
    # not started, or an older tempa's manifest
    software: dict[str, Any] | None = None


def stage_status(names: list[str] | None, run_dir: Path, *, kinds: Mapping[str, str] | None = None) -> list[StageStatus]:
    """Each stage's state from its manifest (in ``names``' order, the recipe's, when known); ``kinds``: the recipe's
    stage kinds, for the stages that have no manifest yet."""
    manifests = {m.name: m for p in sorted(run_dir.glob("*/")) if (m := read_manifest(p)) is not None}
    if names is None:
        names = [m.name for m in sorted(manifests.values(), key=lambda m: m.started_at)]
        names += [p.name for p in sorted(run_dir.glob("*/"))
                  if p.name not in manifests and p.name.lower() not in RESERVED_NAMES and not p.name.startswith(".")
                  and lost_record(p)]
    active = run_in_progress(run_dir)
    run_ids = {name: m.run_id for name, m in manifests.items()}
    done = {name for name, m in manifests.items() if done_fingerprint(run_dir / name) == m.fingerprint}
    damaged = {name: problems for name in done if (problems := damaged_output(manifests[name], run_dir))}
    reran = {name: stale_inputs(manifests[name], run_ids) for name in done}
    # A stage built on a stale one is stale too (its input has not run again, but what that input read has):
    # spread until nothing changes, as ``names`` need not be in run order (None: a run whose recipe.resolved.yaml
    # cannot be read).
    behind: dict[str, list[str]] = {name: [] for name in done}
    changed = True
    while changed:
        changed = False
        for name in done:
            late = [dep for dep in manifests[name].inputs
                    if dep in done and (reran[dep] or behind[dep] or dep in damaged) and dep not in reran[name]]
            if late != behind[name]:
                behind[name], changed = late, True
    rows = []
    for name in names:
        manifest = manifests.get(name)
        if manifest is None:
            lost = lost_record(run_dir / name)
            if lost is not None:  # it ran (it may be complete): "pending" would hide what `tempa run` refuses
                rows.append(StageStatus(name, (kinds or {}).get(name, ""), "unreadable",
                                        note=f"{lost}; restore it, or run the stage again with --from {name}"))
                continue
            rows.append(StageStatus(name, (kinds or {}).get(name, ""), "pending"))
            continue
        state, note = "pending", None
        if name in done:
            state = "done"
            # an input started again and not finished (interrupted, failed, running) has not "run again" yet
            again = [dep for dep in reran[name] if dep in done]
            unfinished = [dep for dep in reran[name] if dep not in done]
            why = [f"{_names(again)} ran again since"] if again else []
            why += [f"{_names(unfinished)} started again since and has not finished"] if unfinished else []
            if behind[name]:
                why.append(f"{_names(behind[name])} {'is' if len(behind[name]) == 1 else 'are'} stale")
            if why:
                state, note = "stale", f"{'; '.join(why)}; the next `tempa run` re-runs it"
            if name in damaged:
                state, note = "damaged", (f"its output is damaged: {'; '.join(damaged[name][:3])}; the next `tempa run` "
                                          "re-runs it")
        elif manifest.status == "failed":
            # a failed training stage resumes from its last checkpoint: hours of work a user fixing the error should
            # know they keep (the note is what `tempa plan` says a re-run does)
            state, note = "failed", _where_it_stands(manifest.kind, run_dir / name, running=False)
        elif manifest.status in ("running", "done"):  # done without its DONE marker: killed before it was written
            state = "running" if active else "interrupted"
            note = _where_it_stands(manifest.kind, run_dir / name, running=active, since=manifest.started_at)
            if not active:
                note = "; ".join(filter(None, [_why_it_stopped(manifest, run_dir / name), note]))
        # A running stage has no duration yet: its time so far is what a user watching a long stage wants.
        seconds = time.time() - manifest.started_at if state == "running" else manifest.duration_s
        progress = latest_progress(run_dir / name, manifest.started_at) if state == "running" else None
        rows.append(StageStatus(name, manifest.kind, state, seconds,
                                manifest.metrics if state in ("done", "stale", "damaged") else {}, manifest.error, note,
                                progress.model_dump() if progress is not None else None,
                                manifest.software.model_dump() if manifest.software is not None else None))
    return rows


def _why_it_stopped(manifest: Manifest, stage_dir: Path) -> str:
    if manifest.interrupted is None:
        return "why it stopped is not recorded (an older tempa ran it)"
    if manifest.interrupted:
        return f"stopped by {manifest.interrupted}"
    if (full := full_disk([stage_dir])) is not None:
        # a failure the disk left no room to record reads as a kill
        return (f"the runner stopped without saying why, and the disk of {stage_dir} is full now ({full[1] // 1024:,} "
                "KiB free): most likely a write failed; free space, then run the same command again to resume")
    return "the runner stopped without saying why: SIGKILL, the out-of-memory killer or a machine that went down"


def _where_it_stands(kind_name: str, stage_dir: Path, *, running: bool, since: float = 0.0) -> str | None:
    """What a running or interrupted stage has completed, as its kind's ``resume_point`` names it (a checkpoint; a
    kind with rounds names the round), so status says where a long stage is, not only that it is running."""
    try:
        hook = stage_kind(kind_name).resume_point
    except KeyError:  # a kind this tempa no longer has: the manifest still tells the state
        return None
    if hook is None:
        return None
    point = hook(stage_dir)
    if running:
        progress = latest_progress(stage_dir, since)
        said = [f"so far: {point}" if point is not None else None, progress.note() if progress else None]
        return "; ".join(part for part in said if part) or None
    if point is None:
        return "nothing complete to continue from: a re-run starts it over"
    return f"the same recipe run again continues from {point}"
