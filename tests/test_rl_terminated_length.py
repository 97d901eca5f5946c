"""The mean length of completions that ended on their own leaves out steps where none did (trl logs 0 for them)."""

from __future__ import annotations

from tempa.alignment.rl_stage import RLResult, rl_metrics
from tempa.recipes.report import training_panels
from tempa.sft.train_plan import TrainOutcome

# four steps as trl logs them: on steps 1-3 every completion was cut off (clipped_ratio 1, mean_terminated_length
# logged as 0); on step 4 half of them ended, at 10 tokens on average
HISTORY = [{"loss": 0.0, "step": step, "reward": 0.0, "completions/mean_length": 16.0,
            "completions/mean_terminated_length": length, "completions/clipped_ratio": clipped}
           for step, length, clipped in ((1, 0.0, 1.0), (2, 0.0, 1.0), (3, 0.0, 1.0), (4, 10.0, 0.5))]


def test_steps_where_nothing_ended_do_not_pull_the_terminated_length_to_zero():
    metrics = rl_metrics(TrainOutcome(global_step=4, log_history=HISTORY), [], prompts=2)
    assert metrics["completions_mean_terminated_length"] == 10.0  # not (0 + 0 + 0 + 10) / 4 = 2.5
    assert metrics["completions_mean_length"] == 16.0


def test_the_mean_weighs_each_step_by_the_completions_that_ended():
    # step 1: 3/4 ended at 20 tokens, step 2: 1/4 ended at 40 -> (0.75 * 20 + 0.25 * 40) / (0.75 + 0.25) = 25
    history = [{"loss": 0.0, "step": 1, "completions/mean_terminated_length": 20.0, "completions/clipped_ratio": 0.25},
               {"loss": 0.0, "step": 2, "completions/mean_terminated_length": 40.0, "completions/clipped_ratio": 0.75}]
    assert rl_metrics(TrainOutcome(global_step=2, log_history=history), [], 2)[
        "completions_mean_terminated_length"] == 25.0
    every_one_cut = [{**entry, "completions/clipped_ratio": 1.0, "completions/mean_terminated_length": 0.0}
                     for entry in history]
    assert rl_metrics(TrainOutcome(global_step=2, log_history=every_one_cut), [], 2)[
        "completions_mean_terminated_length"] is None


def test_the_reports_terminated_curve_leaves_out_steps_where_nothing_ended():
    drawn = {label: {name: points for name, points, _ in series}
             for label, series, _ in training_panels(RLResult(prompts=2), HISTORY)}
    assert drawn["completion tokens"]["ended on its own"] == [(4, 10.0)]
    assert drawn["completion tokens"]["mean"] == [(1, 16.0), (2, 16.0), (3, 16.0), (4, 16.0)]


# trl takes KL, entropy and the clip ratio over the completion tokens its loss sees: under
# mask_truncated_completions (tempa's default) a step where every completion was cut off logs them as 0
MASKED_HISTORY = [{"loss": 0.0, "step": step, "kl": kl, "entropy": entropy, "clip_ratio/region_mean": clip,
                   "completions/clipped_ratio": clipped}
                  for step, kl, entropy, clip, clipped in ((1, 0.0, 0.0, 0.0, 1.0), (2, 0.02, 3.0, 0.1, 0.5),
                                                           (3, 0.04, 2.0, 0.3, 0.75), (4, 0.0, 0.0, 0.0, 1.0))]


def test_kl_entropy_and_clip_ratio_leave_out_the_cut_off_completions_trl_masked():
    metrics = rl_metrics(TrainOutcome(global_step=4, log_history=MASKED_HISTORY), [], prompts=2)
    # weighted by the completions that ended: step 2 by 0.5, step 3 by 0.25; steps 1 and 4 by nothing
    assert abs(metrics["kl"] - (0.5 * 0.02 + 0.25 * 0.04) / 0.75) < 1e-12  # not (0.02 + 0.04) / 4 = 0.015
    assert abs(metrics["entropy"] - (0.5 * 3.0 + 0.25 * 2.0) / 0.75) < 1e-12
    assert abs(metrics["clip_ratio_region_mean"] - (0.5 * 0.1 + 0.25 * 0.3) / 0.75) < 1e-12
    assert metrics["last_kl"] == 0.04  # the last step where a completion ended, not step 4's 0
    every_one_cut = [{**entry, "completions/clipped_ratio": 1.0} for entry in MASKED_HISTORY]
    cut = rl_metrics(TrainOutcome(global_step=4, log_history=every_one_cut), [], prompts=2)
    assert cut["kl"] is None and cut["entropy"] is None and "last_kl" not in cut


def test_without_masking_every_step_counts():
    metrics = rl_metrics(TrainOutcome(global_step=4, log_history=MASKED_HISTORY), [], prompts=2,
                         mask_truncated=False)
    assert abs(metrics["kl"] - 0.015) < 1e-12 and metrics["last_kl"] == 0.0


def test_the_reports_kl_curve_leaves_out_the_zero_of_a_step_where_nothing_ended():
    drawn = {label: {name: points for name, points, _ in series}
             for label, series, _ in training_panels(RLResult(prompts=2), MASKED_HISTORY)}
    assert drawn["KL"]["kl"] == [(2, 0.02), (3, 0.04)]
