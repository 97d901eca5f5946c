"""The ``bake`` stage: the final model folder a user downloads.

``<stage>/final/`` holds the weights and config of the model the stage starts from (hard links,
no copy; the config's ``use_cache`` the base model's, not training's), the recipe's tokenizer with the thinking template baked in, a generation config whose
eos ids include the end-of-turn token (and the recipe's ``generation`` sampling defaults), and a
model card. The stage then checks the template on
the saved tokenizer and (by default) loads the folder with the Auto classes and generates in
both thinking modes; only a folder that passes replaces ``final/``, and only when it is
publishable as it is (``tempa.merge.publish``: file modes, no pickles, no dangling ``auto_map``,
no local paths or secrets). GGUF exports in the folder it replaces are carried over when what they were made from
is unchanged (:func:`carry_exports`), and removed, with what changed, when not.

The template's default thinking mode is the recipe's ``thinking_default`` (already baked into the
recipe's template text); the card states it, and the stage warns when no SFT row of the run was
trained in that mode, since the model would then be prompted by default in a mode it never learned.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tempa.alignment.model_files import license_files
from tempa.chat_templates.baking import GenerationDefaults
from tempa.chat_templates.one_line import first_line
from tempa.merge.candidates import check_tokenizer_fits, is_model_dir
from tempa.merge.gguf_export import export_changes, exports_in_folder, writes_gguf
from tempa.merge.model_card import (
    ModelCardConfig,
    render_model_card,
    shipped_stage,
    tool_rows_trained,
    written_tool_call,
)
from tempa.merge.ollama_template import twin_name
from tempa.merge.publish import make_publishable, publish_problems, write_final_record
from tempa.sft.files import link_or_copy, staging_dir, write_atomic, write_json
from tempa.sft.run_layout import FINAL_DIR
from tempa.sft.stage import SFTResult
from tempa.sft.stage_api import (
    RecipeInfo,
    Scalar,
    StageConfigBase,
    StageContext,
    StageError,
    StageResult,
    Upstream,
)

# Model files carried into the final folder; tokenizer files come from the recipe's tokenizer,
# and training leftovers (optimizer, trainer state, markers) stay behind.
_MODEL_FILE_PATTERNS = ("config.json", "*.safetensors", "model.safetensors.index.json")
_SMOKE_PROMPT = [{"role": "user", "content": "Hello! What is 2 + 3?"}]


class BakeStageConfig(StageConfigBase):
    """Write the final model: weights, baked thinking template, generation config, model card."""

    kind: Literal["bake"]
    model_card: ModelCardConfig = Field(default_factory=ModelCardConfig, description="Model card contents.")
    smoke_test: bool = Field(
        default=True,
        description="Load the final folder with AutoModelForCausalLM/AutoTokenizer and generate in both "
        "thinking modes (turn off for models too large for this machine).",
    )
    smoke_max_new_tokens: int = Field(
        default=8, ge=1, description="Tokens generated per mode by the smoke test."
    )
    device: str = Field(default="auto", description="Device for the smoke test (auto | cpu | cuda).")
    generation: GenerationDefaults = Field(
        default_factory=GenerationDefaults,
        description="Sampling defaults for generation_config.json; the recipe's top-level `generation` fills them "
        "(set one of the two).",
    )


def copy_model_files(source: Path, out_dir: Path, *, trust_remote_code: bool = False) -> list[str]:
    """Bring the weights (hard links) and config (copies) of ``source`` into ``out_dir``."""
    patterns = _MODEL_FILE_PATTERNS + (("*.py",) if trust_remote_code else ())
    copied = []
    for pattern in patterns:
        for path in sorted(source.glob(pattern)):
            if path.is_file() and not (out_dir / path.name).exists():
                # Weights are linked (never rewritten in place); small files are copied, so a
                # later edit of the final config cannot reach back into the source folder.
                if path.suffix == ".safetensors":
                    link_or_copy(path, out_dir / path.name)
                else:
                    shutil.copy2(path, out_dir / path.name)
                copied.append(path.name)
    return copied


def restore_use_cache(out_dir: Path, base_model: Path) -> bool | None:
    """Give the final ``config.json`` the base model's ``use_cache`` (transformers' default, True, where the base
    sets none): transformers' Trainer saves every model it trained with its own ``use_cache`` (False by default),
    a training setting that would ship as the model's (a forward pass without ``past_key_values``). Returns the
    value written, None when nothing changed."""
    path = out_dir / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    base_config = Path(base_model) / "config.json"
    base = json.loads(base_config.read_text(encoding="utf-8")) if base_config.is_file() else {}
    wanted = base.get("use_cache", True)
    if "use_cache" not in config or config["use_cache"] == wanted:
        return None
    config["use_cache"] = wanted
    write_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return wanted


def copy_license_files(folders: Sequence[Path], out_dir: Path) -> list[str]:
    """Copy the licence files of the first of ``folders`` that has any (the weights', else the base model's)."""
    for folder in folders:
        found = license_files(folder)
        if found:
            for path in found:
                shutil.copyfile(path, out_dir / path.name)  # a hub cache's links are followed: the text is copied
            return [path.name for path in found]
    return []


def check_generation_config(out_dir: Path) -> dict[str, Any]:
    """The end-of-turn token must be among the eos ids and pad must differ from every eos id."""
    from transformers import AutoTokenizer, GenerationConfig

    from tempa.chat_templates.thinking import end_of_turn_token

    if not (out_dir / "generation_config.json").is_file():
        raise StageError(f"{out_dir} has no generation_config.json after baking the tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    generation = GenerationConfig.from_pretrained(out_dir)
    eot = end_of_turn_token(tokenizer.chat_template or "")
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    eos = generation.eos_token_id
    eos_ids = eos if isinstance(eos, list) else [eos]
    if eot_id not in eos_ids:
        raise StageError(
            f"generation_config.json eos_token_id {eos} lacks the end-of-turn token {eot} ({eot_id})"
        )
    if generation.pad_token_id is not None and generation.pad_token_id in eos_ids:
        raise StageError(f"generation_config.json pad_token_id {generation.pad_token_id} is also an eos id")
    return {"end_of_turn": eot, "eos_token_id": eos_ids, "pad_token_id": generation.pad_token_id}


def planned_thinking_default_warning(default: str, stages: Sequence[Any]) -> str | None:
    """What :func:`thinking_default_warning` will say, known from the recipe alone: the default is on and every SFT
    source trains with thinking off. ``tempa plan`` says it before any training (the bake says it after all of it).
    (A source `on` renders its rows without a trace off, so the other way round is known only from the data.)"""
    modes = {source.thinking_mode for stage in stages if stage.kind == "sft" for source in stage.data.sources}
    if default != "on" or modes != {"off"}:
        return None
    return ("thinking_default is 'on', but every SFT source trains with thinking off: callers that pass no "
            "thinking_mode would get a mode the model never learned; set thinking_default: off in the recipe")


def thinking_default_warning(default: str, stages: Mapping[str, Upstream]) -> str | None:
    """A warning when the SFT stages of the run trained no row in the ``default`` mode."""
    mixes = [up.result.data for up in stages.values() if isinstance(up.result, SFTResult)]
    total = sum(mix.total.rows_kept for mix in mixes)
    on = sum(mix.total.thinking_on_rows_kept for mix in mixes)
    if total == 0:
        return None
    matching = on if default == "on" else total - on
    if matching:
        return None
    other = "off" if default == "on" else "on"
    return (
        f"the chat template's default thinking mode is '{default}' (thinking_default), but all {total} SFT rows "
        f"of this run were trained with thinking {other}: callers that pass no thinking_mode get a mode the "
        f"model never learned; set thinking_default: {other} in the recipe"
    )


def _as_dict(result: Any) -> dict[str, Any]:
    if is_dataclass(result):
        return asdict(result)  # type: ignore[arg-type]
    if hasattr(result, "_asdict"):
        return dict(result._asdict())
    return {
        "name": getattr(result, "name", str(result)),
        "passed": bool(getattr(result, "passed", False)),
        "detail": str(getattr(result, "detail", "")),
    }


def run_template_checks(out_dir: Path, template: str) -> list[dict[str, Any]]:
    """``check_tokenizer`` on the saved tokenizer; a failure is a one-line StageError."""
    from transformers import AutoTokenizer

    from tempa.chat_templates import check_tokenizer

    generation_config = json.loads((out_dir / "generation_config.json").read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    results = [_as_dict(r) for r in check_tokenizer(tokenizer, template, generation_config=generation_config)]
    failed = [r for r in results if not r.get("passed")]
    if failed:
        details = "; ".join(f"{r['name']}: {r.get('detail', '')}" for r in failed[:3])
        raise StageError(f"template check failed on the final tokenizer ({len(failed)} failing): {details}")
    return results


def smoke_test(out_dir: Path, device: str, max_new_tokens: int) -> dict[str, str]:
    """Load with the Auto classes and generate greedily in both thinking modes."""
    from tempa.alignment.generation import GenerationParams, TransformersBackend

    backend = TransformersBackend(out_dir, device=device, show_progress=False)
    try:
        outputs = {}
        for mode in ("on", "off"):
            params = GenerationParams(max_new_tokens=max_new_tokens, thinking_mode=mode)
            outputs[mode] = backend.generate([_SMOKE_PROMPT], params)[0][0]
        return outputs
    finally:
        backend.close()


def _card_tool_call(out_dir: Path, ctx: StageContext) -> str | None:
    """The card's example call as the final tokenizer writes it; None (and a warning) where its template cannot:
    the card then describes the format in words, and a finished run is not failed for its card."""
    from transformers import AutoTokenizer

    try:
        return written_tool_call(AutoTokenizer.from_pretrained(out_dir))
    except ValueError as error:
        ctx.log.warning("%s: the model card shows no example tool call: %s", ctx.stage_name, first_line(error))
        return None


def carry_exports(final: Path, replacement: Path, ctx: StageContext) -> list[str]:
    """Bring the GGUF exports in ``final`` into ``replacement`` (the bake's new final folder) when what they were made
    from is byte for byte what ``replacement`` holds (:func:`export_changes`): a bake that re-runs for its model card
    alone (a side experiment added to the run) leaves them right. Otherwise they go, and the log says what changed.
    Returns the names kept."""
    if not final.is_dir() or final.is_symlink():
        return []
    exports = exports_in_folder(final)
    if not exports:
        return []
    names = ", ".join(path.name for path in exports)
    changes = export_changes(final, replacement)
    if changes:
        ctx.log.warning("%s: removing %s that `tempa export gguf` wrote into its final folder: what they were made "
                        "from changed (%s): export again", ctx.stage_name, names, "; ".join(changes))
        return []
    for path in exports:
        link_or_copy(path, replacement / path.name)
    ctx.log.info("%s: kept %s: the weights, tokenizer, chat template, generation config and licence they were made "
                 "from are unchanged", ctx.stage_name, names)
    return [path.name for path in exports]


def run_bake(config: BakeStageConfig, ctx: StageContext) -> StageResult:
    """Assemble, check and publish ``<stage>/final``."""
    from tempa.chat_templates import bake_tokenizer, template_defaults

    source = ctx.start_model
    if not is_model_dir(source):
        raise StageError(
            f"bake stage '{ctx.stage_name}': {source} is not a model folder (config.json + safetensors)"
        )
    # as merge and evaluate check it: an id past the embeddings would ship, and stop torch at its first use
    check_tokenizer_fits([(shipped_stage(source, ctx.upstream) or "the base model", source)],
                         Path(ctx.tokenizer_dir), who=f"bake stage '{ctx.stage_name}'")
    stage_dir = ctx.stage_dir
    stage_dir.mkdir(parents=True, exist_ok=True)
    final = stage_dir / FINAL_DIR
    device = "cpu" if config.device == "auto" and ctx.training.use_cpu else config.device
    thinking_default = template_defaults(ctx.chat_template).thinking_mode
    warning = thinking_default_warning(thinking_default, ctx.upstream)
    if warning:
        ctx.log.warning("%s: %s", ctx.stage_name, warning)

    # bake_tokenizer takes a template name or a .jinja path (not its text) and writes a whole
    # folder of its own, so it bakes into a scratch folder whose files join the weights after.
    template_file = stage_dir / "chat_template.jinja"
    write_atomic(template_file, ctx.chat_template)
    with staging_dir(final, inside=[stage_dir]) as tmp, \
            tempfile.TemporaryDirectory(prefix=".bake-", dir=stage_dir) as scratch:
        copy_model_files(source, tmp, trust_remote_code=ctx.trust_remote_code)
        restore_use_cache(tmp, ctx.base_model)
        licenses = copy_license_files([source, ctx.base_model], tmp)
        if licenses:
            ctx.log.info("%s: carried %s into the final model", ctx.stage_name, ", ".join(licenses))
        baked = Path(scratch) / "tokenizer"
        try:
            bake_tokenizer(ctx.tokenizer_dir, str(template_file), baked, model_dir=source,
                           generation=config.generation)
        except (ValueError, OSError) as error:
            message = first_line(error)
            raise StageError(
                f"bake stage '{ctx.stage_name}': baking the tokenizer failed: {message}"
            ) from None
        for path in baked.iterdir():
            if path.is_file():
                shutil.copy2(path, tmp / path.name)
        dropped = make_publishable(tmp)
        for entry in dropped:
            ctx.log.warning("%s: dropped %s (the final folder does not hold that code)", ctx.stage_name, entry)
        generation = check_generation_config(tmp)
        checks = run_template_checks(tmp, ctx.chat_template)
        write_json(stage_dir / "template_check.json", checks)
        recipe = ctx.recipe or RecipeInfo(name=ctx.stage_name, base_model=str(ctx.base_model), chat_template="")
        tool_call = _card_tool_call(tmp, ctx) if tool_rows_trained(ctx.upstream) else None
        card = render_model_card(config.model_card, recipe=recipe, stages=ctx.upstream, template_checks=checks,
                                 thinking_default=thinking_default,
                                 weights_from=shipped_stage(source, ctx.upstream), tool_call=tool_call,
                                 gguf=writes_gguf(tmp), serving=twin_name(ctx.chat_template) is not None)
        write_atomic(tmp / "README.md", card)
        if config.smoke_test:
            ctx.log.info("%s: smoke test: load and generate in both thinking modes", ctx.stage_name)
            write_json(stage_dir / "smoke_test.json", smoke_test(tmp, device, config.smoke_max_new_tokens))
        write_final_record(tmp)  # last: what a whole final/ holds, for push and export to check a copy against
        carry_exports(final, tmp, ctx)  # not in the record: exports are not the bake's, and a user may delete them
        make_publishable(tmp)  # the files written since (README.md) get the same modes
        problems = publish_problems(tmp)
        if problems:
            raise StageError(
                f"bake stage '{ctx.stage_name}': the final folder is not publishable as it is: {'; '.join(problems[:5])}"
            )

    metrics: dict[str, Scalar] = {
        # what the final folder holds (a count of the weight files copied read as files missing)
        "final_files": sum(path.is_file() for path in final.iterdir()),
        "template_checks_passed": len(checks),
        "end_of_turn": generation["end_of_turn"],
        "thinking_default": thinking_default,
        "smoke_test": bool(config.smoke_test),
    }
    if dropped:  # only when there was something to drop: an empty value reads as a dash in the report
        metrics["auto_map_dropped"] = ", ".join(dropped)
    if warning:
        metrics["warning"] = warning
    return StageResult(model=final, metrics=metrics, files={"model_card": final / "README.md"})
