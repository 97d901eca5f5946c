"""Duplicate detection at the scale of a real mix: what counts as a near-duplicate, and what never does."""

from __future__ import annotations

import random

from tempa.sft import curation
from tempa.sft.data_config import DedupConfig

# A shared reading-comprehension preamble, as synthetic Japanese instruction sets repeat it row after row.
_PREAMBLE = (
    "以下の文章を読んで、後の質問に日本語で簡潔に答えてください。文章：江戸時代の町人文化は、元禄期の上方と化政期の江戸で"
    "それぞれ花開いた。井原西鶴の浮世草子、近松門左衛門の人形浄瑠璃、松尾芭蕉の俳諧は元禄文化を代表し、十返舎一九や"
    "曲亭馬琴の読本、葛飾北斎や歌川広重の浮世絵は化政文化を代表する。寺子屋の普及によって庶民の識字率は高まり、"
    "貸本屋が本を広く行き渡らせた。質問："
)
_KANJI = [chr(c) for c in range(0x4E00, 0x4E00 + 2000)]


def _shingle_set(text: str, n: int) -> set[str]:
    # The test's own reading of "character n-gram Jaccard", independent of the code under test.
    text = curation.normalize_instruction(text)
    return {text[i : i + n] for i in range(len(text) - n + 1)}


def _jaccard(a: str, b: str, n: int) -> float:
    sa, sb = _shingle_set(a, n), _shingle_set(b, n)
    return len(sa & sb) / len(sa | sb)


def test_rows_less_similar_than_the_threshold_are_never_near_duplicates() -> None:
    # 60 rows that share the preamble and differ in a question of their own: every pair is about 0.7 similar,
    # well under the 0.85 threshold. MinHash LSH returns such pairs as candidates now and then (a band
    # collides); a candidate is a near-duplicate only when its signatures agree at the threshold.
    rng = random.Random(0)
    rows = [_PREAMBLE + "".join(rng.choice(_KANJI) for _ in range(36)) + "？" for _ in range(60)]
    config = DedupConfig(exact=False)
    similarities = [_jaccard(a, b, config.ngram) for i, a in enumerate(rows) for b in rows[i + 1 :]]
    assert max(similarities) < 0.75  # the construction: no pair is anywhere near the threshold

    dedup = curation.Deduplicator(config)
    found = [(i, reason) for i, row in enumerate(rows) if (reason := dedup.offer(row, f"jp line {i + 1}"))]
    assert found == []


def test_a_near_duplicate_names_the_first_row_it_duplicates() -> None:
    rng = random.Random(1)
    question = "".join(rng.choice(_KANJI) for _ in range(36))
    first, other, edited = (
        _PREAMBLE + question,
        _PREAMBLE + question[::-1],
        _PREAMBLE + question[:-1] + "か？",
    )
    assert _jaccard(first, edited, 5) > 0.9
    dedup = curation.Deduplicator(DedupConfig())
    assert dedup.offer(first, "jp line 1") is None
    assert dedup.offer(other, "jp line 2") is None
    reason = dedup.offer(edited, "jp line 3")
    assert reason is not None and reason[0] == curation.NEAR_DUPLICATE and "jp line 1" in reason[1]


def test_rows_more_similar_than_the_threshold_are_near_duplicates() -> None:
    # 100 unrelated questions, then each again with two characters changed: every copy is about 0.9 similar to its
    # original, over the 0.85 threshold. LSH tuned for a balance of misses and false candidates finds only ~80% of
    # such pairs; since candidates are checked, it is tuned to miss few (MinHash's own estimate still misses some).
    rng = random.Random(2)
    originals = ["".join(rng.choice(_KANJI) for _ in range(200)) for _ in range(100)]
    copies = []
    for text in originals:
        chars = list(text)
        for at in (60, 140):
            chars[at] = rng.choice(_KANJI)
        copies.append("".join(chars))
    similarities = [_jaccard(a, b, 5) for a, b in zip(originals, copies, strict=True)]
    assert min(similarities) > 0.89 and max(similarities) < 0.92

    dedup = curation.Deduplicator(DedupConfig(exact=False))
    assert all(dedup.offer(text, f"line {i + 1}") is None for i, text in enumerate(originals))
    found = [dedup.offer(text, f"line {i + 101}") for i, text in enumerate(copies)]
    named = [
        r
        for i, r in enumerate(found)
        if r is not None and r[1].startswith(f"near-duplicate of line {i + 1} ")
    ]
    assert len(named) >= 93
