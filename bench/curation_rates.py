"""Per-row rates of the data-prep phases a recipe's curation turns on, for ``tempa plan``'s estimate.

    python bench/curation_rates.py                 # 20,000 rows (about 3 min on a loaded 2-core machine)
    python bench/curation_rates.py --quick         # a smoke run (2,000 rows)

Prepares the same synthetic Indonesian chats (two short turns, like a trial's 20k-row source) with
``num_proc: 1`` three times, each with a fresh cache: no curation, ``language: {}``, ``dedup: {}``. It times the
whole prepare and, by wrapping them, the phases: the language check of every row, the separate normalising
pass (``forked_map`` of ``_normalize_batch``: dedup needs every row normalised before tokenising) and the dedup
pass (``_mark_duplicates``, one process whatever ``num_proc`` is). Prints seconds per row of each; these set
``PREP_LANGUAGE_ROW_SECONDS``, ``PREP_NORMALISE_ROW_SECONDS`` and ``PREP_DEDUP_ROW_SECONDS`` in
``tempa.sft.data_config``. One run, no repeats: a rough figure, as the plan's estimate is.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as common

SUBJECTS = ["saya", "kamu", "kami", "mereka", "dia", "guru itu", "anak-anak", "petani", "dokter", "nelayan"]
VERBS = ["membeli", "menjual", "memasak", "membaca", "menulis", "mencari", "membawa", "membersihkan", "menanam"]
OBJECTS = ["buku", "nasi goreng", "sepeda", "rumah", "kebun", "perahu", "komputer", "surat", "ikan", "baju"]
PLACES = ["di pasar", "di sekolah", "di rumah", "di kantor", "di desa", "di kota", "di pantai", "di sawah"]


def write_rows(path: Path, rows: int) -> None:
    rng = random.Random(1)

    def words() -> str:
        return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}"

    with open(path, "w", encoding="utf-8") as handle:
        for i in range(rows):
            user = f"Tolong jelaskan mengapa {words()} pada hari ke-{i}?"
            reply = f"Karena {words()} setiap hari, nomor {i * 7}."
            handle.write(json.dumps({"messages": [{"role": "user", "content": user},
                                                  {"role": "assistant", "content": reply}]}) + "\n")


def timing(spent: dict[str, float], name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - start

    return wrapped


def prepare(rows_path: Path, tokenizer: Any, work: Path, curation: dict[str, Any]) -> dict[str, float]:
    import tempa.sft.curation as curation_module
    import tempa.sft.data as data
    from tempa.sft.data_config import DataConfig

    spent: dict[str, float] = {}
    originals = (data.forked_map, data._mark_duplicates, curation_module.check_language)

    def forked_map(ds: Any, function: Callable[..., Any], **kwargs: Any) -> Any:
        name = "normalise pass" if function is data._normalize_batch else "tokenise"
        return timing(spent, name, originals[0])(ds, function, **kwargs)

    data.forked_map = forked_map
    data._mark_duplicates = timing(spent, "dedup", originals[1])
    curation_module.check_language = timing(spent, "language", originals[2])
    try:
        config = DataConfig.model_validate({"sources": [{"name": "rows", "path": str(rows_path), "languages": ["id"]}],
                                            "num_proc": 1, "curation": curation})
        tag = "-".join(curation) or "none"
        start = time.perf_counter()
        data.prepare_sft_data(config, tokenizer, out_dir=work / f"out-{tag}", cache_dir=work / f"cache-{tag}", seed=0,
                              max_length=256)
        spent["whole prepare"] = time.perf_counter() - start
    finally:
        data.forked_map, data._mark_duplicates, curation_module.check_language = originals
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="2,000 rows: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the seconds of each phase here")
    args = parser.parse_args()
    if args.quick:
        args.rows = 2_000
    print(common.machine_line())
    tokenizer = common.bench_tokenizer("tiny")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows_path = work / "rows.jsonl"
        write_rows(rows_path, args.rows)
        write_rows(work / "warm-up.jsonl", 200)
        prepare(work / "warm-up.jsonl", tokenizer, work / "warm-up", {"language": {}, "dedup": {}})  # imports: untimed
        table = [("curation", "phase", "seconds", "ms a row")]
        results = {}
        for curation in ({}, {"language": {}}, {"dedup": {}}):
            results[json.dumps(curation)] = spent = prepare(rows_path, tokenizer, work, curation)
            for phase, seconds in sorted(spent.items()):
                table.append((json.dumps(curation), phase, f"{seconds:.2f}", f"{seconds / args.rows * 1000:.3f}"))
        common.print_table(table)
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": args.rows, "seconds": results}, indent=2))


if __name__ == "__main__":
    main()
