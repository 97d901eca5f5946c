"""The `rl` stage: render the prompts, then train with trl's GRPOTrainer / RLOOTrainer in the launched worker.

Stage folder::

    data/prompts/       the prompts rendered with the recipe's template in each row's thinking mode
                        (a `save_to_disk` dataset: `prompt` text + the row as the rewards read it)
    data/rewards.json   the rewards the worker builds its trl reward functions from
    train_plan.json     what the worker reads; logs/train.log its output
    checkpoints/        checkpoint-N/ with COMPLETE markers; a restart resumes from the last one
    final/              the trained model, tokenizer and tempa_train_metrics.json (per-step rewards, KL, ...)

Sampling happens inside training (vLLM on a GPU, transformers' generate on CPU; see
:func:`tempa.sft.train_worker.choose_generation`), so the stage itself only prepares and reads back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from tempa.alignment.input_checks import check_reward_inputs, empty_answer_warning
from tempa.alignment.prompts import PromptRow, load_prompts
from tempa.alignment.rl_config import RLStageConfig
from tempa.alignment.rl_rewards import FACTORY, ROW_COLUMN, RewardSpec, RLPrompt
from tempa.chat_templates.one_line import first_line
from tempa.chat_templates.thinking import mode_kwargs, rendered_prefill
from tempa.sft.checkpoints import complete_checkpoints
from tempa.sft.files import staging_dir, write_atomic
from tempa.sft.run_layout import DATA_DIR
from tempa.sft.stage import launch_training
from tempa.sft.stage_api import Scalar, StageContext, StageError, StageResult
from tempa.sft.train_plan import RewardHook, TrainOutcome, train_plan

# What trl logs per step that the stage reports as run averages (besides rewards/<name>/mean and /std):
# "completions/clipped_ratio" is the share of samples cut off at max_completion_length, "clip_ratio/region_mean"
# the share of tokens whose policy ratio PPO's clip bounded (0 while every batch is trained on once, on-policy).
LOGGED = ("reward", "reward_std", "frac_reward_zero_std", "kl", "entropy", "completions/mean_length",
          "completions/mean_terminated_length", "completions/clipped_ratio", "clip_ratio/region_mean")
# First in metrics.json, and so in `tempa status` (its first five): whether RL is working at a glance. GRPO's loss,
# which the trainer headline leads with, is about 0 by construction (advantages are centred) and says nothing.
AT_A_GLANCE = ("reward", "first_logged_reward", "last_logged_reward", "kl", "completions_clipped_ratio")


class RLResult(StageResult):
    """An rl stage's result: its model and checkpoints, plus the per-reward means over the run."""

    prompts: int = Field(description="Prompts in the stage's dataset.")
    rewards: dict[str, float | None] = Field(
        default_factory=dict, description="Each reward's mean over the logged steps (trl's rewards/<name>/mean).")


def run_rl(config: RLStageConfig, ctx: StageContext) -> RLResult:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ctx.tokenizer_dir)
    source = config.prompts.resolved(ctx, who=f"stage '{ctx.stage_name}'")
    prompts = load_prompts(source, seed=ctx.seed, thinking=config.thinking)
    check_reward_inputs(config.rewards, prompts, source)
    if (empty := empty_answer_warning(config.rewards, prompts, source)) is not None:
        ctx.log.warning("%s", empty)  # an earlier stage's or a hub dataset: `tempa plan` could not read it
    data_dir = ctx.stage_dir / DATA_DIR
    dataset = save_prompts(render_prompts(prompts, tokenizer, config.prompts.path), data_dir / "prompts",
                           ctx.stage_dir)
    modes = {mode: sum(p.thinking_mode == mode for p in prompts) for mode in ("on", "off")}
    ctx.log.info("%d prompts (thinking on %d, off %d), %s with %s", len(prompts), modes["on"], modes["off"],
                 config.trainer, ", ".join(f"{r.key} x{r.weight:g}" for r in config.rewards))
    spec = RewardSpec(rewards=config.rewards, policy_dir=ctx.start_model, tokenizer_dir=ctx.tokenizer_dir,
                      stage_models=ctx.stage_models, trust_remote_code=ctx.trust_remote_code, seed=ctx.seed)
    spec_path = data_dir / "rewards.json"
    write_atomic(spec_path, spec.model_dump_json(indent=2) + "\n")

    plan = train_plan(ctx, trainer=config.trainer, start_model=ctx.start_model, train_data=dataset,
                      out_dir=ctx.stage_dir, train_args=config.train_args(), seed=ctx.seed, lora=config.lora,
                      rewards=RewardHook(factory=FACTORY, spec=spec_path))
    outcome = launch_training(plan, ctx)
    names = [reward.key for reward in config.rewards]
    rewards = {name: run_mean(outcome.log_history, f"rewards/{name}/mean") for name in names}
    train = config.train_args()
    notes = [note for note in (no_signal(outcome.log_history, names, ctx.stage_name),
                               all_cut_off(outcome.log_history, train, ctx.stage_name)) if note]
    for line in notes:
        ctx.log.warning("%s", line)
    metrics = rl_metrics(outcome, names, len(prompts), mask_truncated=bool(train.get("mask_truncated_completions")))
    return RLResult(model=plan.final_dir, checkpoints=complete_checkpoints(plan.checkpoints_dir), metrics=metrics,
                    files={"prompts": dataset, "rewards": spec_path}, prompts=len(prompts), rewards=rewards,
                    notes=notes)


def no_signal(log_history: list[dict[str, Any]], names: list[str], stage: str) -> str | None:
    """Why the stage learned nothing, or None: on every logged step every group's samples scored alike
    (trl's frac_reward_zero_std 1), so no sample had an advantage and the policy did not move, while the run ended
    as done. Names the rewards whose spread stayed 0 (a reward that never applies: prompts without an answer)."""
    shares = [entry["frac_reward_zero_std"] for entry in log_history
              if "loss" in entry and isinstance(entry.get("frac_reward_zero_std"), int | float)]
    if not shares or min(shares) < 1.0:
        return None
    flat = [name for name in names if not run_mean(log_history, f"rewards/{name}/std")]
    which = f"; rewards with no spread: {', '.join(flat)}" if flat else ""
    return (f"{stage}: every group of samples scored alike on all {len(shares)} logged steps (frac_reward_zero_std "
            f"1.0), so GRPO had nothing to learn from and the model did not change{which}. Check that the rewards "
            "apply to these prompts and tell samples apart (an answer column, a judge that rates), or sample more "
            "varied completions (num_generations, temperature)")


def all_cut_off(log_history: list[dict[str, Any]], train: dict[str, Any], stage: str) -> str | None:
    """Why some steps trained on nothing, or None: under ``mask_truncated_completions`` every completion of those
    steps was cut off at ``max_completion_length``, so the loss saw no token (loss, KL, entropy and the gradient all
    0). It cannot be told before the run: it is the policy's lengths against the limit."""
    if not train.get("mask_truncated_completions"):
        return None  # a cut-off completion is trained on like any other
    without, logged = steps_without_tokens(log_history)
    if not without:
        return None
    which = "every step" if without == logged else f"{without} of the {logged} steps logged"
    return (f"{stage}: on {which} every completion was cut off at max_completion_length "
            f"{train.get('max_completion_length')} (completions/clipped_ratio 1.0) and mask_truncated_completions "
            "left them out of the loss, so those steps trained on no tokens. Raise max_completion_length, or set "
            "mask_truncated_completions: false to train on cut-off completions")


def steps_without_tokens(log_history: list[dict[str, Any]]) -> tuple[int, int]:
    """(optimizer steps on which every completion was cut off, steps whose completions trl logged a clipped ratio
    for). trl averages a logging window's figures, so a window's clipped ratio of 1 makes each of its steps such a
    step; a window below 1 counts as none of them (exact with ``logging_steps: 1``)."""
    without = logged = previous = 0
    for entry in log_history:
        if "loss" not in entry or not isinstance(entry.get("step"), int):
            continue
        window, previous = entry["step"] - previous, entry["step"]
        if isinstance(entry.get(_CLIPPED), int | float):
            logged += window
            without += window if entry[_CLIPPED] >= 1.0 else 0
    return without, logged


def rl_metrics(outcome: TrainOutcome, names: list[str], prompts: int, *,
               mask_truncated: bool = True) -> dict[str, Scalar]:
    """The stage's metrics: run means of trl's logged rewards and health figures (`reward_<name>` and
    `reward_<name>_std` per reward), the first and last logged total reward and KL, then the trainer headline. With
    ``mask_truncated`` (trl's mask_truncated_completions) KL, entropy and the clip ratio are means over the
    completions that ended (:func:`ended_mean`), the last KL is the last step's whose clipped ratio is below 1 (none when
    every step's is 1; without ``mask_truncated``, the last step's), and
    `steps_without_tokens` counts the steps whose completions were all cut off, which trained on nothing
    (:func:`steps_without_tokens`; 0 without ``mask_truncated``)."""
    history = outcome.log_history
    logged = [entry for entry in history if "loss" in entry]
    totals = [entry["reward"] for entry in logged if isinstance(entry.get("reward"), int | float)]
    ended = (TERMINATED, *TOKEN_MASKED) if mask_truncated else (TERMINATED,)
    metrics: dict[str, Scalar] = {key.replace("/", "_"): (ended_mean if key in ended else run_mean)(history, key)
                                  for key in LOGGED}
    metrics["first_logged_reward"] = totals[0] if totals else None
    metrics["last_logged_reward"] = totals[-1] if totals else None
    metrics["steps_without_tokens"] = steps_without_tokens(history)[0] if mask_truncated else 0
    for name in names:
        metrics[f"reward_{name}"] = run_mean(history, f"rewards/{name}/mean")
        metrics[f"reward_{name}_std"] = run_mean(history, f"rewards/{name}/std")
    metrics.update({key.replace("/", "_"): run_mean(history, key) for key in logged_shares(history)})
    kls = [entry["kl"] for entry in logged
           if isinstance(entry.get("kl"), int | float) and (not mask_truncated or terminated_share(entry) > 0)]
    if kls:
        metrics["last_kl"] = kls[-1]
    ordered = {key: metrics.pop(key) for key in AT_A_GLANCE if key in metrics}
    return {**ordered, **metrics, "prompts": prompts, **outcome.headline()}


def run_mean(log_history: list[dict[str, Any]], key: str) -> float | None:
    """Mean of ``key`` over the training logs that have it (None when none does)."""
    values = [entry[key] for entry in log_history if "loss" in entry and isinstance(entry.get(key), int | float)]
    return sum(values) / len(values) if values else None


TERMINATED = "completions/mean_terminated_length"
_CLIPPED = "completions/clipped_ratio"
# What trl averages over the completion tokens its loss sees: under mask_truncated_completions, not a cut-off one's.
TOKEN_MASKED = ("kl", "entropy", "clip_ratio/region_mean")


def terminated_share(entry: dict[str, Any]) -> float:
    """The share of a logged step's completions that ended on their own (1 - trl's clipped_ratio; 1 when not logged).
    trl logs a mean terminated length of 0 for a step where every completion was cut off: no length, a 0 weight."""
    clipped = entry.get(_CLIPPED)
    return 1.0 - float(clipped) if isinstance(clipped, int | float) else 1.0


def ended_mean(log_history: list[dict[str, Any]], key: str) -> float | None:
    """The run's mean of a figure trl takes over the completions that ended on their own (the mean terminated length;
    with ``mask_truncated_completions``, KL, entropy and the clip ratio, whose token mask leaves cut-off completions
    out): each step's value weighted by its share of such completions (a step's batch is one size), so a step where
    all were cut off, which trl logs as 0, counts for nothing instead of a 0. None when none ended on its own."""
    pairs = [(float(entry[key]), terminated_share(entry)) for entry in log_history
             if "loss" in entry and isinstance(entry.get(key), int | float)]
    weight = sum(share for _, share in pairs)
    return sum(value * share for value, share in pairs) / weight if weight > 0 else None


def logged_shares(log_history: list[dict[str, Any]]) -> list[str]:
    """What the reward functions logged: the language rewards' answer / reasoning shares
    (rl_rewards.fidelity_metrics) and the judges' shares of replies without a rating
    (rl_rewards.judge_metrics)."""
    return sorted({key for entry in log_history for key in entry
                   if key.endswith(("_language_share", "/unparsable_fraction"))})


def added_prefix(tokenizer: Any) -> str:
    """The text of what the tokenizer adds before any text it encodes (Llama 3's BOS), else ''.

    trl encodes a rendered prompt with the tokenizer's special tokens; the template already wrote them.
    """
    ids = tokenizer("")["input_ids"]
    return tokenizer.decode(ids) if ids else ""


def render_prompts(prompts: list[PromptRow], tokenizer: Any, where: str) -> list[dict[str, str]]:
    """Each prompt rendered with the template in its thinking mode, as trl's text prompts; the row beside it."""
    prefix = added_prefix(tokenizer)
    rows = []
    for prompt in prompts:
        kwargs = mode_kwargs(prompt.thinking_mode)
        try:
            text = tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True,
                                                 **kwargs)
            prefill = rendered_prefill(tokenizer, prompt.messages, kwargs)
        except Exception as exc:
            first = first_line(exc)
            raise StageError(f"{where}: prompt {prompt.id}: the chat template cannot render it ({first})") from None
        if prefix and text.startswith(prefix):
            text = text[len(prefix):]
        rows.append({"prompt": text, ROW_COLUMN: RLPrompt(row=prompt, prefill=prefill).model_dump_json()})
    return rows


def save_prompts(rows: list[dict[str, str]], path: Path, stage_dir: Path) -> Path:
    """The rendered prompts as a `save_to_disk` dataset for the training processes."""
    import datasets

    with staging_dir(path, inside=[stage_dir]) as tmp:
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp))
    return path
