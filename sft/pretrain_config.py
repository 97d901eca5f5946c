"""The `pretrain` stage's recipe block: raw-text sources with token budgets, and trl's SFTConfig pass-through.

Continued pre-training (SEA-LION v3 on ~200B tokens, Swallow on ~200B from Llama 3.1)::

    - name: cpt
      kind: pretrain
      sources:
        - {name: code, path: bigcode/the-stack-v2-dedup, text_field: content, tokens: 40000000000}
        - {name: english, path: allenai/dolma, tokens: 37500000000}
        - {name: thai, path: data/thai_docs.parquet, tokens: 10700000000, repeat: true}
      train:
        learning_rate: 1.0e-5
        lr_scheduler_type: warmup_stable_decay
        lr_scheduler_kwargs: {num_decay_steps: 0.1}   # a tenth of the steps, whatever the budgets make them
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from tempa.sft.config import DEFAULT_TRAIN_ARGS, run_only_train_args
from tempa.sft.run_layout import safe_name
from tempa.sft.stage_api import Read, StageConfigBase, resolve_path
from tempa.sft.train_args import check_train_args, train_checks_deferred
from tempa.sft.train_plan import RESERVED_TRAIN_KEYS

# On top of the SFT defaults: loss on every token (no chat, no masks), the WSD schedule the cards
# name for continued pre-training, BFD packing with per-document position_ids.
PRETRAIN_TRAIN_ARGS: dict[str, Any] = {
    **DEFAULT_TRAIN_ARGS,
    "assistant_only_loss": False,
    "max_length": 4096,
    "learning_rate": 1e-5,
    "lr_scheduler_type": "warmup_stable_decay",
    "warmup_steps": 0.01,
}


class PretrainSource(BaseModel):
    """One raw-text source: documents in a text column, up to a token budget."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Unique safe name; used in stats and messages.")
    path: str = Field(description="A .jsonl / .json / .parquet / .csv / .txt file, a folder of such files (the "
                      "split's shards), a `save_to_disk` folder, or a hub dataset id.")
    split: str = "train"
    subset: str | None = Field(default=None, description="Hub dataset configuration name.")
    revision: str | None = None
    text_field: str = Field(default="text", description="The column holding a document's text.")
    txt_document: Literal["file", "paragraph", "line"] | None = Field(
        default=None, description="For .txt files (UTF-8): what one document is: the whole file (unset: this; read "
        "and tokenised at once in one process, so a file above 256 MiB is refused), a block of lines between blank "
        "lines (CC-100's layout), or one line. By paragraph or line a file of any size (20 GB of one language) is "
        "read in ranges of about a megabyte, in every worker.",
    )
    tokens: int | None = Field(
        default=None, ge=1, description="Token budget: documents are taken in a draw across the whole source by "
        "content and seed until it is reached (the last one cut): a sample of the source, not its first documents, the "
        "same for the same seed, and a source that grows keeps them but at the margin; every document is read once "
        "to draw (its text hashed), only those drawn are tokenised, so a row that is no document anywhere in the "
        "source is an error naming it. Unset: every document once. The stage trains the budgets num_train_epochs "
        "times; with train.max_steps set, max_steps decides the tokens trained (the plan and the run say so) and the "
        "budgets only the sources' shares.",
    )
    repeat: bool = Field(
        default=False, description="When the source holds fewer tokens than `tokens`: go over its documents again, "
        "in the budget's draw order (whole passes, then a part of one), until the budget is reached (upsampling a small language); off: every document once, and the "
        "run logs a warning that the source fell short of its budget.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return safe_name(value, "source name")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str, info: ValidationInfo) -> str:
        return resolve_path(value, info, must_exist=True)


class PretrainStageConfig(StageConfigBase):
    """Continued pre-training on raw text: every token trained, documents packed with their boundaries kept."""

    kind: Literal["pretrain"] = "pretrain"
    train_defaults: ClassVar[dict[str, Any]] = PRETRAIN_TRAIN_ARGS
    sources: list[PretrainSource] = Field(min_length=1, description="Raw-text sources and their token budgets.")
    heldout: float = Field(default=0.0, ge=0, lt=1, description="Share of each source's documents (of those its "
                           "budget takes) held out whole for eval loss, never trained on: drawn by content and seed, "
                           "as SFT's held-out rows, so a source that grows keeps its held-out documents but at the "
                           "margin; at least one a source when positive, and never a source's last one.")
    add_eos: bool = Field(default=True, description="End every document with the base model's end-of-text token "
                          "(`<|end_of_text|>` for Llama 3, `<|endoftext|>` for Qwen), not the chat's end of turn.")
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="Any trl SFTConfig field. Defaults: loss on all tokens, BFD packing, warmup_stable_decay "
        "(give lr_scheduler_kwargs.num_decay_steps: steps, or below 1 a fraction of the steps trained, which follows "
        "the token budgets), max_length 4096.",
    )

    @field_validator("train")
    @classmethod
    def _train(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if train_checks_deferred(info):
            return value
        return check_train_args(value, "trl:SFTConfig", reserved=RESERVED_TRAIN_KEYS, defaults=PRETRAIN_TRAIN_ARGS)

    @model_validator(mode="after")
    def _checks(self) -> PretrainStageConfig:
        names = [source.name for source in self.sources]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"source names must be unique; repeated: {repeated}")
        unbudgeted = [source.name for source in self.sources if source.repeat and source.tokens is None]
        if unbudgeted:
            raise ValueError(f"sources {unbudgeted}: repeat needs a token budget (`tokens`) to repeat up to")
        untext = [source.name for source in self.sources if source.txt_document and not _is_local(source.path)]
        if untext:
            raise ValueError(f"sources {untext}: txt_document is for local .txt files, and these are hub datasets")
        args = self.train_args()
        if args.get("assistant_only_loss"):
            raise ValueError("train.assistant_only_loss: a pretrain stage trains on every token (raw text has "
                             "no assistant turns)")
        kwargs = args.get("lr_scheduler_kwargs") or {}
        if args.get("lr_scheduler_type") == "warmup_stable_decay" and "num_decay_steps" not in kwargs:
            raise ValueError("train.lr_scheduler_kwargs.num_decay_steps: the warmup_stable_decay schedule needs the "
                             "number of decay steps")
        return self

    def unfingerprinted(self) -> frozenset[str]:
        """The trainer arguments that change how it runs, not what it trains."""
        return run_only_train_args(self.train_args())

    def reads(self, earlier: Sequence[str]) -> list[Read]:
        return []


def _is_local(path: str) -> bool:
    # resolve_path has made a local path absolute; anything else names a hub dataset
    return Path(path).is_absolute() and Path(path).exists()
