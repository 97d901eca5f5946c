"""How many rows and tokens an sft stage's data holds, without preparing it (for `tempa plan --hardware`).

Once the stage has run, its data mix is exact. Before, each source is sized from its ``tokens`` /
``rows`` setting, or the row count of a local file, at an assumed average length per row (which
depends on its thinking mode); a ``stage:NAME`` source takes the size its producer declares
(an upper bound until that stage has run).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tempa.sft.config import SFTStageConfig
from tempa.sft.data_config import (
    PREP_SERIAL_TOKENS_PER_SECOND,
    PREP_TOKENS_PER_CORE_SECOND,
    SourceConfig,
    available_cores,
    prep_seconds,
    workers_for,
)
from tempa.sft.data_report import DataMix
from tempa.sft.stage_api import EstimateInputs, SourceSize, TokenCount, TrainingWorkload
from tempa.sft.throughput_summary import format_eta


def count_local_rows(path: str) -> int | None:
    """Rows of a local JSONL/CSV/Parquet file without loading it; None for anything else."""
    file = Path(path)
    if not file.is_file():
        return None
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(file).metadata.num_rows)
    if suffix in (".jsonl", ".csv"):
        with open(file, "rb") as handle:
            lines = sum(1 for line in handle if line.strip())
        return lines - 1 if suffix == ".csv" else lines
    return None


def avg_tokens_per_row(source: SourceConfig, avg_on: int, avg_off: int) -> int:
    if source.thinking_mode == "off":
        return avg_off
    if source.thinking_mode == "mixed":
        ratio = source.thinking_ratio or 0.0
        return round(ratio * avg_on + (1 - ratio) * avg_off)
    return avg_on


def source_size(source: SourceConfig, heldout: float | int, avg: int,
                dataset_sizes: dict[str, SourceSize]) -> SourceSize:
    """Rows per epoch of one source (held-out rows removed, weight applied) at ``avg`` tokens per row."""
    if source.tokens is not None:
        return SourceSize(max(1, source.tokens // avg), avg, f"token budget {source.tokens:,}")
    if source.rows is not None:
        return SourceSize(source.rows, avg, f"rows {source.rows:,}")
    if source.stage_ref is not None and source.stage_ref in dataset_sizes:
        size = dataset_sizes[source.stage_ref]
    else:
        counted = count_local_rows(source.path)
        size = SourceSize(counted, avg, f"{counted:,} rows in the file" if counted is not None else
                          "unknown size (a hub dataset or folder with no rows/tokens setting)")
    if size.rows is None:
        return size
    kept = size.rows * (1 - heldout) if isinstance(heldout, float) else max(0, size.rows - heldout)
    weight = source.weight if source.weight is not None else 1.0
    held = f" less {heldout:g} held out" if heldout else ""
    return replace(size, rows=round(kept * weight), how=f"{size.how}{held} x weight {weight:g}")


def tokens_from_recipe(config: SFTStageConfig, inputs: EstimateInputs) -> TokenCount:
    total_tokens, total_rows, notes, unknown, upper = 0, 0, [], [], []
    data = config.data
    sizes = dict(inputs.dataset_sizes)
    for source in data.sources:
        avg = avg_tokens_per_row(source, inputs.avg_tokens_thinking_on, inputs.avg_tokens_thinking_off)
        size = source_size(source, data.heldout_for(source), avg, sizes)
        if size.rows is None:
            unknown.append(source.name)
            notes.append(f"source {source.name}: {size.how}; set rows or tokens to estimate it")
            continue
        tokens = source.tokens if source.tokens is not None else size.rows * size.tokens_per_row
        total_tokens, total_rows = total_tokens + tokens, total_rows + size.rows
        if size.at_most:
            upper.append(source.name)
        notes.append(f"source {source.name}: {size.how}, ~{size.tokens_per_row:,} tokens/row assumed "
                     f"({source.thinking_mode})")
    where = "recipe sizes x assumed tokens/row"
    if len(unknown) == len(data.sources):
        return TokenCount(None, None, where, notes)
    if unknown:
        where += f"; at least: {', '.join(unknown)} not counted"
    bound = {(True, False): ">=", (False, True): "<=", (True, True): "~"}.get((bool(unknown), bool(upper)), "")
    notes.append(prep_note(total_tokens, total_rows, data.num_proc, bound))
    return TokenCount(total_tokens, total_rows, where, notes, bound=bound)


def prep_note(tokens: int, rows: int, num_proc: int | None, bound: str = "", cores: int | None = None) -> str:
    """The plan's data-prep line: how long rendering and tokenising ``tokens`` takes before training starts.

    The plan may run elsewhere than the training node, so it gives this machine's figure and a 128-core
    node's (an 8-GPU node has 100+ cores).
    """
    here = cores or available_cores()
    workers = workers_for(rows, num_proc, here)
    node = format_eta(prep_seconds(tokens, rows, num_proc, 128))
    return (f"data prep before the first step: {bound or '~'}{format_eta(prep_seconds(tokens, rows, num_proc, here))} "
            f"(h:mm:ss) in {workers} process{'es' if workers > 1 else ''} on this machine's {here} cores, "
            f"{bound or '~'}{node} on 128 cores ({PREP_TOKENS_PER_CORE_SECOND:,} tokens/s per process, reading and "
            f"saving {PREP_SERIAL_TOKENS_PER_SECOND:,} tokens/s in one); cached after")


def tokens_from_mix(mix: DataMix) -> TokenCount:
    samples = sum(source.samples_kept for source in mix.sources)
    return TokenCount(mix.total.tokens_kept, samples or mix.total.rows_kept, "the stage's data mix (it has run)")


def estimate_sft(config: SFTStageConfig, inputs: EstimateInputs) -> TrainingWorkload:
    """The sft stage's plan hook: one epoch's tokens, its trl arguments and LoRA settings."""
    from tempa.sft.stage import SFTResult

    result = inputs.result
    tokens = (tokens_from_mix(result.data) if isinstance(result, SFTResult)
              else tokens_from_recipe(config, inputs))
    return TrainingWorkload(tokens=tokens, train_args=config.train_args(), lora=config.lora)
