"""Plan and run a recipe: fingerprint each stage, skip what is done, resume what was cut off.

A stage is complete only when `run_dir/<stage>/DONE` holds its current fingerprint; DONE is
written last, after the outputs and the manifest, so a kill at any moment leaves either a
complete stage or one that the next run resumes (training) or redoes (everything else).
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tempa.recipes import __version__
from tempa.recipes.fingerprint import digest, path_digest, referenced_files
from tempa.recipes.launcher import deepspeed_config_path, reap_stale_launch, run_launch
from tempa.recipes.loader import LoadedRecipe, stage_dependencies
from tempa.recipes.registry import STAGE_KINDS
from tempa.recipes.rundir import (
    DONE,
    FINAL_LINK,
    MANIFEST,
    RESOLVED_RECIPE,
    TOKENIZER_DIR,
    RunLock,
    check_run_dir,
    clear_stage,
    done_fingerprint,
    mark_done,
    read_json,
    run_in_progress,
    sweep_trash,
    write_json,
)
from tempa.recipes.schema import TINY_DEFAULT
from tempa.sft.files import cache_root, write_atomic
from tempa.sft.stage_api import StageContext, StageError, StageResult

log = logging.getLogger("tempa")


@dataclass
class StagePlan:
    """What `tempa run` will do with one stage, and why."""

    index: int
    name: str
    kind: str
    upstream: str | None
    fingerprint: str
    components: dict[str, Any]
    action: str  # skip | run | resume | rerun
    reason: str
    resumable: bool = False
    complete: bool = False  # DONE holds the current fingerprint (before any forcing)


@dataclass
class RunSummary:
    run_dir: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    final_model: Path | None = None


# --------------------------------------------------------------------------- inputs


def resolve_base_model(loaded: LoadedRecipe) -> Path:
    """The base model as a local safetensors folder (tiny default built/cached, hub ids downloaded).

    A pickled base model is refused, or with ``allow_pickle_weights`` converted once into the
    cache, so that no later stage (or mergekit) ever unpickles anything.
    """
    from tempa.merge.model_files import base_model_problem, pickle_files

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
    patterns = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "*.py"]
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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StageError(f"base_model '{ref}': download failed: {first}") from None


def _as_safetensors(folder: Path, loaded: LoadedRecipe) -> Path:
    """The opted-in pickled base model, converted once into the cache (keyed by its contents)."""
    from tempa.merge.model_files import convert_to_safetensors
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


def plan_run(
    loaded: LoadedRecipe, run_dir: Path, *, from_stage: str | None = None, only: str | None = None
) -> list[StagePlan]:
    """Decide, for every stage, whether it is skipped, run, resumed or re-run (and why)."""
    for forced in (from_stage, only):
        if forced is not None:
            loaded.stage(forced)  # unknown name -> RecipeError listing the stages
    base_fp = base_model_fingerprint(loaded)
    template_fp = digest(template_text(loaded))
    plans: list[StagePlan] = []
    fps: dict[str, str] = {}
    forcing = False
    for i, config in enumerate(loaded.stages):
        name = config.name
        upstream = loaded.upstream(i)
        dump = config.model_dump(mode="json", by_alias=True)
        deps = sorted(set(stage_dependencies(config)) - {upstream, None})
        components = {
            "tempa_version": __version__,
            "config": digest(dump),
            "files": digest(referenced_files(dump)),
            "upstream": fps[upstream] if upstream else base_fp,
            "depends_on": {dep: fps.get(dep) for dep in deps},
            "template": template_fp,
            "seed": loaded.recipe.seed,
            "trust_remote_code": loaded.recipe.trust_remote_code,
        }
        fp = digest(components)
        fps[name] = fp
        stage_dir = run_dir / name
        resumable = STAGE_KINDS[config.kind].resumable  # type: ignore[attr-defined]
        forcing = forcing or name == from_stage
        forced = forcing or name == only
        action, reason = _decide(stage_dir, fp, components, forced, resumable, from_stage or only)
        if only is not None and name != only and action != "skip":
            action, reason = "skip", "not selected by --only"
        complete = done_fingerprint(stage_dir) == fp
        plans.append(StagePlan(i, name, config.kind, upstream, fp, components, action, reason, resumable, complete))  # type: ignore[attr-defined]
    if only is not None:
        _check_only_inputs(plans, only)
    return plans


def _decide(stage_dir: Path, fp: str, components: dict, forced: bool, resumable: bool, flag: str | None):
    done = done_fingerprint(stage_dir)
    manifest = read_json(stage_dir / MANIFEST) or {}
    if forced:
        return "rerun", f"forced by --from/--only {flag}"
    if done == fp:
        return "skip", "complete; fingerprint matches"
    if done is not None:
        return "rerun", "changed since it ran: " + _what_changed(manifest.get("components", {}), components)
    if manifest.get("fingerprint") == fp:
        if resumable:
            return "resume", "interrupted; continues from what it completed (checkpoints, samples)"
        return "rerun", "interrupted; starts over (not a resumable stage)"
    if manifest:
        return "rerun", "interrupted and changed since: " + _what_changed(manifest.get("components", {}), components)
    return "run", "not run yet"


def _what_changed(old: dict, new: dict) -> str:
    labels = {
        "config": "stage config",
        "files": "input files",
        "upstream": "upstream model/stage",
        "depends_on": "stages it reads",
        "template": "chat template",
        "tempa_version": "tempa version",
        "seed": "recipe seed",
        "trust_remote_code": "trust_remote_code",
    }
    changed = [labels.get(key, key) for key in new if old.get(key) != new.get(key)]
    return ", ".join(changed) or "fingerprint"


def _check_only_inputs(plans: list[StagePlan], only: str) -> None:
    by_name = {p.name: p for p in plans}
    target = by_name[only]
    if target.upstream and not by_name[target.upstream].complete:
        raise StageError(
            f"--only {only}: its input stage '{target.upstream}' is not complete; run it first "
            f"(or use --from {target.upstream})"
        )


# --------------------------------------------------------------------------- run


def run_recipe(
    loaded: LoadedRecipe, run_dir: Path, *, from_stage: str | None = None, only: str | None = None
) -> RunSummary:
    run_dir = run_dir.resolve()
    check_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = RunSummary(run_dir)
    with RunLock(run_dir):
        sweep_trash(run_dir)
        write_atomic(
            run_dir / RESOLVED_RECIPE,
            yaml.safe_dump(loaded.resolved(), sort_keys=False, allow_unicode=True),
        )
        plans = plan_run(loaded, run_dir, from_stage=from_stage, only=only)
        base_dir = resolve_base_model(loaded)
        template = template_text(loaded)
        tokenizer_dir = prepare_tokenizer(base_dir, loaded.recipe.chat_template, template, run_dir, log,
                                          defaults=template_defaults(loaded))
        model_dirs: dict[str, Path] = {}
        stage_dirs: dict[str, Path] = {}
        for plan in plans:
            config = loaded.stages[plan.index]
            stage_dir = run_dir / plan.name
            if plan.action == "skip":
                manifest = read_json(stage_dir / MANIFEST) or {}
                if manifest.get("model_dir"):
                    model_dirs[plan.name] = run_dir / manifest["model_dir"]
                if stage_dir.exists():
                    stage_dirs[plan.name] = stage_dir
                log.info("stage %s (%s): skip: %s", plan.name, plan.kind, plan.reason)
                summary.skipped.append(plan.name)
                continue
            log.info("stage %s (%s): %s: %s", plan.name, plan.kind, plan.action, plan.reason)
            reap_stale_launch(stage_dir, log=log)
            if plan.action in ("rerun", "run"):
                clear_stage(stage_dir, run_dir)
            model_dir = model_dirs.get(plan.upstream, base_dir) if plan.upstream else base_dir
            ctx = _context(loaded, plan, run_dir, stage_dir, model_dir, base_dir, tokenizer_dir, template,
                           stage_dirs, model_dirs)
            result = _run_stage(config, plan, ctx)
            model_dirs[plan.name] = result.model_dir or model_dir
            stage_dirs[plan.name] = stage_dir
            summary.ran.append(plan.name)
        last_model = model_dirs.get(plans[-1].name) if plans else None
        if last_model is not None:
            _point_final(run_dir, last_model)
            summary.final_model = run_dir / FINAL_LINK
    return summary


def prepare_tokenizer(base_dir: Path, template_ref: str, template: str, run_dir: Path, log: logging.Logger,
                      defaults=None) -> Path:
    """The base tokenizer with the recipe's template (name or path; ``template`` is its text, ``defaults``
    the recipe's baked defaults) baked in."""
    from tempa.chat_templates import bake_tokenizer

    out = run_dir / TOKENIZER_DIR
    fp = digest({"template": digest(template), "base": path_digest(base_dir / "tokenizer_config.json")
                 if (base_dir / "tokenizer_config.json").exists() else str(base_dir)})
    if done_fingerprint(out) == fp:
        return out
    clear_stage(out, run_dir)
    log.info("baking the chat template into the base tokenizer -> %s", out)
    try:
        bake_tokenizer(base_dir, template_ref, out, model_dir=base_dir, defaults=defaults)
    except ValueError as exc:
        raise StageError(f"chat template check failed on the base tokenizer: {exc}") from None
    mark_done(out, fp)
    return out


def _context(loaded, plan, run_dir, stage_dir, model_dir, base_dir, tokenizer_dir, template, stage_dirs, model_dirs):
    launch = loaded.recipe.launch
    stage_dir.mkdir(parents=True, exist_ok=True)

    def _launch(module: str, args: list[str], log_file: Path) -> None:
        run_launch(launch, module, args, log_file, log=log)

    ds = deepspeed_config_path(launch.deepspeed_config) if launch.launcher == "torchrun" else None
    return StageContext(
        run_dir=run_dir,
        stage_dir=stage_dir,
        stage_name=plan.name,
        seed=loaded.recipe.seed,
        model_dir=model_dir,
        tokenizer_dir=tokenizer_dir,
        chat_template=template,
        stage_dirs=dict(stage_dirs),
        stage_models=dict(model_dirs),
        launch=_launch,
        log=log,
        base_model_dir=base_dir,
        trust_remote_code=loaded.recipe.trust_remote_code,
        use_cpu=launch.use_cpu,
        mixed_precision=launch.mixed_precision,
        deepspeed_config=ds,
        cache_dir=cache_root(),
    )


def _run_stage(config, plan: StagePlan, ctx: StageContext) -> StageResult:
    stage_dir = ctx.stage_dir
    logs = stage_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(logs / "stage.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    started = time.time()
    manifest: dict[str, Any] = {
        "name": plan.name,
        "kind": plan.kind,
        "fingerprint": plan.fingerprint,
        "components": plan.components,
        "status": "running",
        "action": plan.action,
        "started_at": started,
        "tempa_version": __version__,
    }
    write_json(stage_dir / MANIFEST, manifest)
    try:
        result = STAGE_KINDS[plan.kind].run(config, ctx)
    except StageError as exc:
        _fail(stage_dir, manifest, started, str(exc))
        raise StageError(f"stage '{plan.name}' failed: {exc}") from None
    except Exception as exc:
        (logs / "traceback.txt").write_text(traceback.format_exc())
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        _fail(stage_dir, manifest, started, message)
        raise StageError(
            f"stage '{plan.name}' failed: {message} (traceback: {logs / 'traceback.txt'})"
        ) from None
    finally:
        log.removeHandler(handler)
        handler.close()
    finished = time.time()
    write_json(stage_dir / "metrics.json", result.metrics)
    manifest.update(
        status="done",
        finished_at=finished,
        duration_s=round(finished - started, 3),
        metrics=result.metrics,
        outputs=result.outputs,
        # A stage without a model of its own (synthesize) hands on the one it started from.
        model_dir=_under(result.model_dir or ctx.model_dir, ctx.run_dir),
        produced_model=result.model_dir is not None,
    )
    write_json(stage_dir / MANIFEST, manifest)
    mark_done(stage_dir, plan.fingerprint)  # last: the stage is complete from here on
    log.info("stage %s: done in %.1fs", plan.name, finished - started)
    return result


def _under(path: Path, run_dir: Path) -> str:
    """Relative to the run directory when inside it (the run dir may move), else absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path)


def _fail(stage_dir: Path, manifest: dict, started: float, message: str) -> None:
    manifest.update(status="failed", finished_at=time.time(), duration_s=round(time.time() - started, 3),
                    error=message)
    write_json(stage_dir / MANIFEST, manifest)


def _point_final(run_dir: Path, model_dir: Path) -> None:
    link = run_dir / FINAL_LINK
    tmp = run_dir / f".{FINAL_LINK}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(model_dir, run_dir), tmp)
    if link.is_dir() and not link.is_symlink():
        clear_stage(link, run_dir)
    os.replace(tmp, link)


# --------------------------------------------------------------------------- status


def stage_status(names: list[str] | None, run_dir: Path) -> list[dict[str, Any]]:
    """Each stage's state from its manifest (in ``names``' order, the recipe's, when known)."""
    if names is None:
        manifests = [(read_json(p) or {}) for p in run_dir.glob(f"*/{MANIFEST}")]
        names = [m["name"] for m in sorted(manifests, key=lambda m: m.get("started_at", 0)) if "name" in m]
    active = run_in_progress(run_dir)
    rows = []
    for name in names:
        stage_dir = run_dir / name
        manifest = read_json(stage_dir / MANIFEST) or {}
        done = done_fingerprint(stage_dir)
        state = "pending"
        if done is not None and done == manifest.get("fingerprint"):
            state = "done"
        elif manifest.get("status") == "failed":
            state = "failed"
        elif manifest.get("status") == "running":
            state = "running" if active else "interrupted"
        rows.append({
            "name": name,
            "kind": manifest.get("kind", ""),
            "state": state,
            "duration_s": manifest.get("duration_s"),
            "metrics": manifest.get("metrics", {}),
            "error": manifest.get("error"),
        })
    return rows
