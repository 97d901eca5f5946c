"""What the SFT data pipeline reports: per source, rows and tokens in and kept, and rejects by reason.

``DataMix`` is written as ``data/mix.json`` in the stage folder (and in the cache entry), is part
of the sft stage's typed result, and is what the model card, the report and `tempa plan` read.
Rows are conversations; tokens count every token of the rendered samples.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tempa.chat_templates.thinking import THINK_OPEN

# A reject reason ending in this marks one turn dropped from a row that was kept, not a rejected row.
TURN_SUFFIX = "_turn"


class SourceMix(BaseModel):
    """One source's journey through curation, tokenisation, the held-out split and sizing."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: str = Field(description="The source as the recipe names it (a file name or hub id; never shown absolute).")
    size: dict[str, float | int] = Field(description="The size setting: weight, rows or tokens.")
    thinking_mode: str
    thinking_ratio: float | None = None
    rows_in: int = Field(description="Rows read.")
    rows_curated: int = Field(description="Rows left after the row filters, duplicates and template instructions "
                              "(the last two are found among the tokenised rows that fit the length limits).")
    rows_tokenized: int = Field(description="Of the rows curated, those with a sample the length limits keep.")
    samples: int = Field(description="Trainable samples of those rows (a multi-turn row can give several).")
    tokens_in: int = Field(description="Tokens of the rows counted in rows_tokenized, before holding out and "
                           "sizing.")
    heldout_rows: int
    heldout_samples: int
    heldout_tokens: int
    heldout_rows_trained_elsewhere: int = Field(
        default=0, description="Held-out rows whose instruction another source trains on (their eval loss is not "
        "on unseen prompts); copies within the source are held out together.")
    heldout_rows_trained_earlier: int = Field(
        default=0, description="Held-out rows whose instruction an earlier stage trained this stage's start model on "
        "(the same source in both stages, held out only in this one): their eval loss is not on unseen prompts.")
    rows_kept: int = Field(description="Rows in the training mix (repeats counted when up-sampled).")
    unique_rows_kept: int
    samples_kept: int
    tokens_kept: int
    trained_tokens_kept: int = Field(description="Tokens with a loss (the assistant's tokens).")
    thinking_on_rows_kept: int
    # 0 in a mix.json of a tempa that did not count them (the pipeline version changed with the count).
    tool_rows_kept: int = Field(default=0, description="Rows kept that offer tools or hold a tool loop (tool "
                                "definitions, assistant tool calls or tool results; repeats counted).")
    share_of_tokens: float = 0.0
    rejects: dict[str, int] = Field(default_factory=dict, description="Rejected rows by reason.")
    notes: dict[str, int] = Field(default_factory=dict, description="Rows read with something changed or ignored, by "
                                  "what: `arrow_nulls` (null keys Arrow's struct unification added, left out), "
                                  "`unknown_turn_key:<key>` (a turn key tempa does not read); logged once per source.")

    @property
    def rejected_rows(self) -> dict[str, int]:
        """Rows rejected whole, by reason (``rows_in`` minus these is ``rows_tokenized``)."""
        return {reason: n for reason, n in self.rejects.items() if not reason.endswith(TURN_SUFFIX)}

    @property
    def dropped_turns(self) -> dict[str, int]:
        """Turns dropped from kept rows, by reason (without the ``_turn`` suffix)."""
        return {reason.removesuffix(TURN_SUFFIX): n for reason, n in self.rejects.items()
                if reason.endswith(TURN_SUFFIX)}

    @property
    def resized_rows(self) -> int:
        """Rows the size setting added (up-sampling, > 0) or left out (< 0) of the training rows."""
        return self.rows_kept - (self.rows_tokenized - self.heldout_rows)

    def rejects_summary(self) -> str:
        """``4 of 30 rows rejected (malformed_row 2, too_long 1, ...); 1 turn dropped (too_long 1)``."""

        def by_reason(counts: dict[str, int]) -> str:
            return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

        rows, turns = self.rejected_rows, self.dropped_turns
        text = f"{sum(rows.values())} of {self.rows_in} rows rejected"
        if rows:
            text += f" ({by_reason(rows)})"
        if turns:
            n = sum(turns.values())
            text += f"; {n} turn{'s' if n != 1 else ''} dropped from kept rows ({by_reason(turns)})"
        return text


# A source that rejects this share of its rows or more is said in the stage's warnings and the run's closing notes.
REJECTS_NOTED_SHARE = 0.05


class MixTotals(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows_in: int
    rows_kept: int
    train_samples: int
    eval_samples: int
    tokens_kept: int
    trained_tokens_kept: int
    heldout_tokens: int
    thinking_on_rows_kept: int
    tool_rows_kept: int = Field(default=0, description="Rows kept that offer tools or hold a tool loop.")
    rejects: int


class DataMix(BaseModel):
    """The resolved data mix of one sft stage."""

    model_config = ConfigDict(extra="forbid")

    seed: int
    cache_key: str
    sources: list[SourceMix]
    total: MixTotals

    def write(self, path: Path) -> None:
        from tempa.sft.files import write_atomic

        write_atomic(path, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> DataMix:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))

    def rejecting_sources(self, share: float = REJECTS_NOTED_SHARE) -> list[str]:
        """One line per source that rejected at least ``share`` of its rows: a broken export trains a fraction of a
        source without failing, and the count alone was a line of the log among hundreds."""
        return [f"source '{s.name}': {s.rejects_summary()}, {100 * sum(s.rejected_rows.values()) / s.rows_in:.0f}% of "
                "its rows; rejects.jsonl in the stage folder has each one and why"
                for s in self.sources if s.rows_in and sum(s.rejected_rows.values()) >= share * s.rows_in]

    def traceless_sources(self, asked: Collection[str] | None = None) -> list[str]:
        """One line per source asked to think (`on` or `mixed`; of ``asked`` only, when given: the sources whose recipe
        set the mode) none of whose kept rows has a reasoning trace: it trains as thinking off, which a
        reasoning-distillation set never means (its trace field spelt otherwise, say)."""
        return [f"source '{s.name}' has thinking_mode {s.thinking_mode}, but none of its {s.rows_kept} kept rows has a "
                "reasoning trace, so it trains with thinking off: tempa reads a turn's reasoning_content, thinking "
                f"or reasoning, or a {THINK_OPEN} block in its answer (columns.reasoning names another field)"
                for s in self.sources if s.thinking_mode in ("on", "mixed") and s.rows_kept
                and not s.thinking_on_rows_kept and (asked is None or s.name in asked)]

    def table(self) -> str:
        """The mix as a plain-text table (rows and tokens per source, in and kept).

        The row columns add up: rows in - rejected - held out + resized = rows kept, where
        resized is what the size setting added (up-sampling) or left out.
        """
        header = ("source", "rows in", "rejected", "held out", "resized", "rows kept", "tokens in", "tokens kept",
                  "share", "thinking on", "tool rows")
        lines = [header]
        for s in self.sources:
            lines.append((s.name, str(s.rows_in), str(sum(s.rejected_rows.values())), str(s.heldout_rows),
                          f"{s.resized_rows:+d}" if s.resized_rows else "0", str(s.rows_kept), str(s.tokens_in),
                          str(s.tokens_kept), f"{100 * s.share_of_tokens:.1f}%",
                          f"{s.thinking_on_rows_kept}/{s.rows_kept}", f"{s.tool_rows_kept}/{s.rows_kept}"))
        t = self.total
        rejected = sum(sum(s.rejected_rows.values()) for s in self.sources)
        heldout = sum(s.heldout_rows for s in self.sources)
        resized = sum(s.resized_rows for s in self.sources)
        lines.append(("total", str(t.rows_in), str(rejected), str(heldout), f"{resized:+d}" if resized else "0",
                      str(t.rows_kept), "", str(t.tokens_kept), "100%", f"{t.thinking_on_rows_kept}/{t.rows_kept}",
                      f"{t.tool_rows_kept}/{t.rows_kept}"))
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in lines)
