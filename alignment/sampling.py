"""Incremental, resumable passes over prompts: sampling, scoring, judging.

Each pass writes one JSON line per prompt to a ``.jsonl`` file, appended (and fsynced) after
every chunk, or as each prompt's reply arrives where the backend hands replies over one by one (an
HTTP server: each is paid for), and a ``.complete`` marker when it is done. Run again after an interruption, it
reads what is there (a torn last line is dropped, an unreadable line inside the file skipped and removed), skips
the prompts already written and works only on the rest; a finished pass is not repeated at all. A ``.meta.json``
signature beside the file (model, parameters) makes a pass start over when what it would produce changed.

Progress shows prompts done plus throughput (samples/s, tokens/s) in a tqdm bar.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tempa.alignment.backends import SamplingBackend, sample_at
from tempa.alignment.completions import Completion
from tempa.alignment.generation import GenerationParams
from tempa.alignment.prompts import PromptRow
from tempa.alignment.rewards import RewardSet, ScoreItem
from tempa.sft.files import write_atomic
from tempa.sft.run_layout import PASS_PROGRESS
from tempa.sft.throughput_summary import PassProgress

T = TypeVar("T")
log = logging.getLogger("tempa.alignment.sampling")


def _signed(signature: Any) -> str:
    """A signature as a journal's ``.meta.json`` holds it."""
    return json.dumps(signature, sort_keys=True, default=str)


def _retired(found: str) -> str | None:
    """A signature an earlier tempa wrote, less what this one no longer signs (an HTTP backend's ``base_url``: the
    server's address, not who answers), so that its journal is kept; None where it is no signature."""
    def without(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: without(item) for key, item in value.items()
                    if not (key == "base_url" and value.get("type") == "http")}
        return [without(item) for item in value] if isinstance(value, list) else value

    try:
        return _signed(without(json.loads(found)))
    except ValueError:  # a torn signature
        return None


@dataclass(frozen=True)
class Signed:
    """A journal's signature, and the ones earlier tempas signed the same settings with (``before``, ``older``): a
    journal signed so is kept and signed anew, where starting it over would ask every paid answer again."""

    now: Any
    before: Any = None
    older: tuple[Any, ...] = ()

    def plus(self, **more: Any) -> Signed:
        return Signed({**self.now, **more}, None if self.before is None else {**self.before, **more},
                      tuple({**form, **more} for form in self.older))

    def newly(self, **more: Any) -> Signed:
        """``more`` signed from now on, where a journal an earlier tempa signed without it (with every form this one
        accepts) holds what ``more`` asks for too."""
        return Signed({**self.now, **more}, self.now, tuple(self.earlier()))

    def earlier(self) -> list[Any]:
        return [form for form in (self.before, *self.older) if form is not None]


def _earlier(signature: Any) -> set[str]:
    return {_signed(form) for form in signature.earlier()} if isinstance(signature, Signed) else set()


def _torn_tail(handle: Any, size: int) -> int:
    """Where the whole lines of an open binary file of ``size`` bytes end (after its last newline; 0 for none)."""
    end = size
    while end > 0:
        start = max(0, end - 65536)
        handle.seek(start)
        block = handle.read(end - start)
        if (newline := block.rfind(b"\n")) >= 0:
            return start + newline + 1
        end = start
    return 0


def append_lines(path: Path, lines: Iterable[str]) -> None:
    """Append whole lines to a journal and fsync them: every journal (samples, scores, teacher answers, judge replies)
    is written here. A torn last line, what a kill or a full disk leaves mid-write, is cut off first: a record
    appended onto it would be unreadable too, and what it holds asked (and paid for) again."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":
                whole = _torn_tail(handle, size)
                log.warning("%s: its last line was cut off mid-write (%d bytes, a kill or a full disk); dropped, so "
                            "that record is asked again", path, size - whole)
                handle.truncate(whole)
        handle.write("".join(line + "\n" for line in lines).encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


@dataclass
class JournalRead:
    """What :func:`read_journal` read: each readable whole line's entry, in file order, the numbers of the lines it
    could not read, and where the whole lines end (``whole`` < ``size``: a torn last line follows)."""

    path: Path
    entries: list[Any]
    unreadable: list[int]
    whole: int
    size: int

    def warn(self) -> None:
        """One warning naming the unreadable lines, by the reader that goes on to ask what they held, and the lines
        taken out of the file (its whole lines rewritten, then renamed over it), so the next resume reads a clean
        journal instead of warning of them again."""
        if not self.unreadable:
            return
        shown = ", ".join(map(str, self.unreadable[:10])) + (", ..." if len(self.unreadable) > 10 else "")
        log.warning("%s: %d unreadable line(s) skipped and removed (line %s: half a record, or two glued together); "
                    "the records after them are kept, what they held is asked again", self.path,
                    len(self.unreadable), shown)
        dropped = set(self.unreadable)
        with open(self.path, "rb") as lines:
            kept = [line for number, line in enumerate(lines, 1) if number not in dropped]
        write_atomic(self.path, b"".join(kept))  # a torn last line stays last: the caller cuts it


def read_journal(path: Path, entry: Callable[[Any], T]) -> JournalRead:
    """The whole lines of the journal at ``path`` (none when it is missing), each read by ``entry`` from its JSON
    (KeyError, TypeError, ValueError or AttributeError: not a record of this journal). Every journal is read here:
    samples, scores, teacher answers, judge replies. A line that cannot be read inside the file (one an earlier tempa
    glued onto a torn line) is skipped, and the records after it are kept: stopping there asked, and paid for, every
    one of them again. A last line without its newline (a kill or a full disk mid-write) is not read; the caller
    decides whether to cut it off."""
    path = Path(path)
    if not path.is_file():
        return JournalRead(path, [], [], 0, 0)
    entries: list[Any] = []
    unreadable: list[int] = []
    whole = 0
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.endswith(b"\n"):
                break
            whole += len(line)
            try:
                entries.append(entry(json.loads(line)))
            except (ValueError, KeyError, TypeError, AttributeError):  # a UnicodeDecodeError is a ValueError
                unreadable.append(number)
    return JournalRead(path, entries, unreadable, whole, path.stat().st_size)


def _keyed(record: Any) -> tuple[str, dict[str, Any]]:
    """A JsonlStore record by its id."""
    if not isinstance(record, dict) or not isinstance(record["id"], str):
        raise TypeError("not a record")
    return record["id"], record


class JsonlStore:
    """Append-only JSON Lines records keyed by ``"id"``, with a completion marker and a signature."""

    def __init__(self, path: Path, signature: Any = None) -> None:
        self.path = Path(path)
        self.marker = self.path.with_name(self.path.name + ".complete")
        self.meta = self.path.with_name(self.path.name + ".meta.json")
        self.progress = self.path.with_name(self.path.name + PASS_PROGRESS)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        earlier = _earlier(signature)
        wanted = _signed(signature.now if isinstance(signature, Signed) else signature)
        found = self.meta.read_text(encoding="utf-8") if self.meta.is_file() else None
        if found is not None and found != wanted and (found in earlier or _retired(found) in {wanted, *earlier}):
            write_atomic(self.meta, wanted)  # the same settings, as an earlier tempa signed them
        elif found != wanted:
            if self.path.exists() and found is not None:
                log.warning("%s was written with other settings; starting it over", self.path)
            self.reset()
            write_atomic(self.meta, wanted)  # a torn signature would discard the samples after it

    @staticmethod
    def files(path: Path) -> list[Path]:
        """The files of the journal at ``path`` that exist: its records, its complete marker, its signature and its
        pass's progress."""
        path = Path(path)
        named = (path, path.with_name(path.name + ".complete"), path.with_name(path.name + ".meta.json"),
                 path.with_name(path.name + PASS_PROGRESS))
        return [file for file in named if file.is_file()]

    def reset(self) -> None:
        for path in (self.path, self.marker, self.meta, self.progress):
            path.unlink(missing_ok=True)

    @property
    def complete(self) -> bool:
        return self.marker.is_file() and self.path.is_file()

    @staticmethod
    def completed(path: Path) -> bool:
        """Whether the pass writing ``path`` was marked complete, read without opening the store (which starts a
        pass with another signature over)."""
        path = Path(path)
        return path.is_file() and path.with_name(path.name + ".complete").is_file()

    @staticmethod
    def holds(path: Path, signature: Any, keys: Iterable[str]) -> bool:
        """Whether the journal at ``path``, read without opening its store (which starts one with another signature
        over), was written with ``signature`` and has a record for every key: a pass over ``keys`` would ask nothing.
        A journal marked complete may not: its records go by content, and prompts added to the file since are not
        in it."""
        path = Path(path)
        meta = path.with_name(path.name + ".meta.json")
        wanted = _signed(signature.now if isinstance(signature, Signed) else signature)
        if not path.is_file() or not meta.is_file():
            return False
        found = meta.read_text(encoding="utf-8")
        if found != wanted and found not in _earlier(signature) and _retired(found) not in {wanted, *_earlier(signature)}:
            return False
        journaled = {key for key, _ in read_journal(path, _keyed).entries}
        return journaled.issuperset(keys)

    def load(self) -> dict[str, dict[str, Any]]:
        """Records written so far, by id (a torn last line is cut off the file)."""
        read = read_journal(self.path, _keyed)
        read.warn()
        if read.whole != read.size:
            log.warning("%s: %d bytes after its last whole record dropped (a line cut off mid-write: a kill or a full "
                        "disk); those records are asked again", self.path, read.size - read.whole)
            with open(self.path, "r+b") as f:
                f.truncate(read.whole)
        return dict(read.entries)

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        append_lines(self.path, (json.dumps(record, ensure_ascii=False, default=str) for record in records))

    def mark_complete(self) -> None:
        write_atomic(self.marker, "complete\n")

    def record_progress(self, progress: PassProgress) -> None:
        """Where the pass stands, for `tempa status` (another process); a failed write costs only that line."""
        try:
            write_atomic(self.progress, progress.model_dump_json())
        except OSError as e:
            log.debug("could not record %s: %s", self.progress, e)


def _one_sample(record: dict[str, Any]) -> tuple[int, None]:
    return 1, None


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch ``index``'s backend call: a backend that seeds per prompt gives the prompt at place i of the
    batch this seed + i * n (:func:`tempa.alignment.backends.sample_at`), so a prompt asked alone (the batch's other
    prompts journaled) gets the samples it gets when its batch is asked whole."""
    return seed + 1000 * index


def _missing(items: Sequence[T], keys: Sequence[str], done: Mapping[str, Any],
             chunk_size: int) -> Iterator[tuple[int, list[int], list[T]]]:
    """(chunk index, the items' places in their chunk, the items) of each chunk's items not in ``done``."""
    for index, start in enumerate(range(0, len(items), chunk_size)):
        places = [place for place, k in enumerate(keys[start:start + chunk_size]) if k not in done]
        if places:
            yield index, places, [items[start + place] for place in places]


def run_incremental(
    items: Sequence[T],
    *,
    key: Callable[[T], str],
    work: Callable[..., list[dict[str, Any]]],
    store: JsonlStore,
    chunk_size: int,
    desc: str,
    measure: Callable[[dict[str, Any]], tuple[int, int | None]] | None = None,
    show_progress: bool = True,
    size: Callable[[T], int] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Apply ``work(chunk, chunk_index, places, keep=keep)`` to every chunk of ``items`` not yet in ``store``.

    ``work`` returns one record (with ``"id" == key(item)``) per item. ``chunk_index`` counts
    chunks of the whole item list, so a chunk gets the same index (and seed) on a resumed run. ``work`` is given the
    chunk's items not journaled and their places in the chunk (an edited prompt among journaled ones:
    :func:`batch_seed`), and ``keep(record)``, which journals one item's record at once: a pass whose backend hands
    over each paid reply as it arrives (:func:`tempa.alignment.backends.sample_at`'s ``on_result``) keeps each, and a
    kill or a failed request later in its chunk loses none of them. The records it returns that were not kept are
    journaled when it returns, in one write. The journal's records are then in the order they arrived, not the items'
    order: it is read by id.
    ``measure(record)`` gives ``(samples, tokens)`` for the throughput display (tokens None where the backend
    counted none: the pass's ``tokens`` is then None, not a 0 that reads as nothing generated); without it a
    record is one sample of uncounted tokens. Returns the records in item order and the pass statistics.
    ``size(item)``: the units of work an item is (a prompt's samples, for a scoring pass), which its progress record
    counts; with it ``work`` is also given ``advance(units)``, the units of its chunk done so far, so that `tempa
    status` moves while a slow chunk (a paid judge's replies) is still under way. Without it an item is one unit.
    """
    from tqdm.auto import tqdm

    uncounted = measure is None
    measure = measure or _one_sample
    done = store.load()
    keys = [key(item) for item in items]
    stats: dict[str, Any] = {"items": len(items), "resumed": 0, "processed": 0, "seconds": 0.0,
                             "samples": 0, "tokens": 0}
    stats["resumed"] = sum(1 for k in keys if k in done)  # all of them when the pass was complete already
    if not store.complete or stats["resumed"] < len(keys):
        started = time.time()
        bar = tqdm(total=len(items), initial=stats["resumed"], desc=desc, unit="prompt", disable=not show_progress)
        units = [1 if size is None else size(item) for item in items]
        unit_of = dict(zip(keys, units, strict=True))
        total = sum(units)
        finished = sum(u for k, u in zip(keys, units, strict=True) if k in done)  # units journaled
        first = finished  # what this session found done

        def report(at_units: int) -> None:
            """Where the pass stands: ``at_units`` of ``total``, with the rate and ETA of this session's work."""
            elapsed = max(time.time() - started, 1e-9)
            worked = at_units - first
            rate = worked if size is not None else stats["samples"]  # a sized pass's units are its samples
            store.record_progress(PassProgress(
                desc=desc, done=at_units, items=total, at=time.time(),
                eta_s=(total - at_units) * elapsed / worked if worked > 0 else None,
                samples_per_s=round(rate / elapsed, 3) if worked > 0 else None))

        def journal(records: list[dict[str, Any]]) -> None:
            """Journal ``records`` and count them: the statistics, the bar and the progress record."""
            nonlocal finished, uncounted
            store.append(records)
            for record in records:
                done[record["id"]] = record
                samples, tokens = measure(record)
                stats["samples"] += samples
                if tokens is None:
                    uncounted = True
                else:
                    stats["tokens"] += tokens
            stats["processed"] += len(records)
            elapsed = max(time.time() - started, 1e-9)
            rate = f"{stats['samples'] / elapsed:.1f} samples/s"
            if stats["tokens"] and not uncounted:
                rate += f", {stats['tokens'] / elapsed:.0f} tok/s"
            bar.set_postfix_str(rate)
            bar.update(len(records))
            finished += sum(unit_of[record["id"]] for record in records)
            report(finished)

        store.record_progress(PassProgress(desc=desc, done=finished, items=total, at=time.time()))
        try:
            for index, places, chunk in _missing(items, keys, done, chunk_size):
                expected = {key(item) for item in chunk}
                kept: set[str] = set()

                def keep(record: dict[str, Any], expected: set[str] = expected, kept: set[str] = kept) -> None:
                    if record["id"] not in expected or record["id"] in kept:
                        raise RuntimeError(f"{desc}: a chunk kept a record for an item it was not given, or twice")
                    kept.add(record["id"])
                    journal([record])

                if size is None:
                    records = work(chunk, index, places, keep=keep)
                else:
                    chunk_units = sum(size(item) for item in chunk)
                    records = work(chunk, index, places, keep=keep,
                                   advance=lambda part, base=finished, most=chunk_units: report(base + min(part, most)))
                if {r["id"] for r in records} != expected or len(records) != len(chunk):
                    raise RuntimeError(f"{desc}: a chunk returned records for other items than it was given")
                if rest := [record for record in records if record["id"] not in kept]:
                    journal(rest)
        finally:
            bar.close()
        stats["seconds"] = round(time.time() - started, 3)
        store.mark_complete()
    if uncounted:
        stats["tokens"] = None
    if stats["seconds"]:
        stats["samples_per_s"] = round(stats["samples"] / stats["seconds"], 3)
        if stats["tokens"]:
            stats["tokens_per_s"] = round(stats["tokens"] / stats["seconds"], 3)
    return [done[k] for k in keys], stats


def sample_record(prompt: PromptRow, completions: list[Completion]) -> dict[str, Any]:
    return {"id": prompt.id, "thinking_mode": prompt.thinking_mode, "completions": [c.to_dict() for c in completions]}


def completions_of(record: dict[str, Any]) -> list[Completion]:
    return [Completion.from_dict(c) for c in record["completions"]]


def measure_samples(record: dict[str, Any]) -> tuple[int, int | None]:
    """A record's samples and their tokens; None when a sample's were not counted (an OpenAI-compatible server with
    n > 1 counts every choice's together in `usage`)."""
    completions = record["completions"]
    counts = [c.get("completion_tokens") for c in completions]
    return len(completions), None if None in counts else sum(counts)


def sample_prompts(
    prompts: Sequence[PromptRow],
    backend: SamplingBackend,
    params: GenerationParams,
    store: JsonlStore,
    *,
    desc: str = "sample",
    chunk_size: int | None = None,
    show_progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``params.n`` samples per prompt, each prompt with its own thinking mode (and tools); resumable.

    Chunk ``i`` is sampled with seed ``params.seed + 1000 * i`` (:func:`batch_seed`): the same samples whether the
    pass ran in one go, was resumed, or asks only an edited prompt of its chunk.
    """

    def work(chunk: list[PromptRow], index: int, places: list[int],
             keep: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
        chunk_params = params.model_copy(update={"seed": batch_seed(params.seed, index)})
        # Passed only when a prompt offers tools, so a backend written before tools (a test's scripted one) still
        # samples every other prompt.
        offered = [p.tools for p in chunk]
        groups = sample_at(backend, [p.messages for p in chunk], chunk_params, places,
                           lambda i, group: keep(sample_record(chunk[i], group)),
                           thinking_modes=[p.thinking_mode for p in chunk],
                           **({"tools": offered} if any(offered) else {}))
        return [sample_record(p, group) for p, group in zip(chunk, groups, strict=True)]

    return run_incremental(
        list(prompts), key=lambda p: p.id, work=work, store=store, chunk_size=chunk_size or params.batch_size,
        desc=desc, measure=measure_samples, show_progress=show_progress,
    )


def score_pass(
    prompts: Sequence[PromptRow],
    samples: Sequence[dict[str, Any]],
    rewards: RewardSet,
    store: JsonlStore,
    *,
    chunk_size: int,
    desc: str = "score",
    show_progress: bool = True,
    unused: Callable[[Completion], bool] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score every sample of every prompt with the reward set; resumable like sampling.

    Records: ``{"id", "results": [{"scores": {...,"total"}, "details": {...}}, ...]}``, one
    result per sample in sample order; its progress record counts samples (:func:`run_incremental`'s ``size``).
    ``unused``: the samples the stage can never take (cut off, where only
    complete ones are kept or paired), which the judges are not paid to rate (:meth:`RewardSet.score`); the store's
    signature must say so (:meth:`Signed.newly`).
    """
    by_id = {record["id"]: record for record in samples}

    def work(chunk: list[PromptRow], index: int, places: list[int], keep: Callable[[dict[str, Any]], None],
             advance: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        items, owners = [], []
        for prompt in chunk:
            for completion in completions_of(by_id[prompt.id]):
                items.append(ScoreItem(prompt, completion))
                owners.append(prompt.id)
        results = rewards.score(items, unjudged=None if unused is None else [unused(it.completion) for it in items],
                                progress=advance)
        grouped: dict[str, list[dict[str, Any]]] = {p.id: [] for p in chunk}
        for owner, result in zip(owners, results, strict=True):
            grouped[owner].append(result)
        return [{"id": pid, "results": grouped[pid]} for pid in grouped]

    def measure(record: dict[str, Any]) -> tuple[int, int | None]:
        return len(record["results"]), None  # scoring generates no tokens of its own

    # Progress counts samples, told as the judges' replies arrive: a batch of 12 prompts whose 47 judge requests took
    # minutes showed `score 0/12` all along, a judge that looked stalled.
    return run_incremental(list(prompts), key=lambda p: p.id, work=work, store=store, chunk_size=chunk_size,
                           desc=desc, measure=measure, show_progress=show_progress,
                           size=lambda prompt: len(by_id[prompt.id]["completions"]))
