"""A worker whose runner was killed with -9 dies on its next progress line (a print to the dead pipe), after the
trackers wrote that step but before the record of it: the resumed run gave TensorBoard the step again."""

from __future__ import annotations

from collections import Counter

import pytest
from test_sft_tracker_resume import logged_steps, train
from transformers import TrainerCallback

from sft_helpers import prepared_rows


@pytest.fixture
def rows(tmp_path, tiny_model_dir):
    (tmp_path / "rows").mkdir()
    return prepared_rows(tmp_path / "rows", tiny_model_dir, n=8, seed=4)


class DeadPipe(TrainerCallback):
    """Where the progress line is (after the trackers, before the record of what they got): printing to the pipe of
    a dead runner raises."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == self.step:
            raise BrokenPipeError(32, "Broken pipe")


def test_a_step_logged_before_the_progress_line_hit_a_dead_pipe_is_not_logged_again(tmp_path, tiny_model_dir, rows):
    out = tmp_path / "checkpoints"
    with pytest.raises(BrokenPipeError):
        train(tiny_model_dir, rows, out, dies=DeadPipe(3))
    assert logged_steps(out, "train/loss") == Counter({1: 1, 2: 1, 3: 1})
    train(tiny_model_dir, rows, out, resume=out / "checkpoint-2")
    assert logged_steps(out, "train/loss") == Counter({1: 1, 2: 1, 3: 1, 4: 1})


def test_each_tracker_resumes_from_the_step_it_wrote(tmp_path):
    """One record for all trackers: killed after TensorBoard wrote step 2 and before wandb did, the resume skipped
    step 2 for both, and wandb's curve lost it."""
    from types import SimpleNamespace

    from tempa.sft.trackers import _recorded, tracker_record

    given: list[tuple[str, int]] = []

    def tracker(name: str):
        return lambda args, state, control, **kwargs: given.append((name, state.global_step))

    def log(wrapped, step: int) -> None:
        wrapped(None, SimpleNamespace(global_step=step), None)

    record = tracker_record(tmp_path, resumed=False)
    first, second = (_recorded(record, name, tmp_path / "trackers.json", tracker(name)) for name in ("tb", "wandb"))
    log(first, 1), log(second, 1), log(first, 2)  # killed here: wandb never got step 2
    record = tracker_record(tmp_path, resumed=True)
    assert record["logged_step"] == 1
    first, second = (_recorded(record, name, tmp_path / "trackers.json", tracker(name)) for name in ("tb", "wandb"))
    for step in (2, 3):
        log(first, step), log(second, step)
    assert given == [("tb", 1), ("wandb", 1), ("tb", 2), ("wandb", 2), ("tb", 3), ("wandb", 3)]
