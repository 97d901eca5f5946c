"""Language fidelity: which language an answer is in, and SEA-IFEval's language normalisation.

SEA-IFEval counts a response that does the task in the wrong language as a failure: the
language-normalised accuracy of a set of answers is the share that are correct *and* in the
prompt's target language. Detection uses py3langid (ISO 639-1 codes), optionally restricted to
the languages a suite cares about, which removes most Malay/Indonesian-style confusions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache


@lru_cache(maxsize=8)
def _identifier(languages: tuple[str, ...] | None):
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=False)
    if languages:
        identifier.set_languages(list(languages))
    return identifier


def known_languages() -> list[str]:
    """Every code py3langid can return."""
    return list(_identifier(None).labels)


def detect_language(text: str, languages: Sequence[str] | None = None) -> str:
    """ISO 639-1 code of ``text`` ("" for text without letters), optionally among ``languages``."""
    if not any(ch.isalpha() for ch in text):
        return ""
    key = tuple(sorted(set(languages))) if languages else None
    return str(_identifier(key).classify(text)[0])


def in_language(detected: str, target: str, also_accept: Mapping[str, Sequence[str]] | None = None) -> bool:
    """Whether a detected code counts as the target language (``also_accept`` lists aliases)."""
    if not detected:
        return False
    if detected == target:
        return True
    return detected in (also_accept or {}).get(target, ())


def language_scores(
    detected: Sequence[str],
    targets: Sequence[str],
    correct: Sequence[bool | None],
    also_accept: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, float]:
    """Share of answers in their target language, and language-normalised accuracy.

    ``correct[i]`` is None for rows with nothing verifiable; they count toward the language
    share only. Metrics: ``language_share``, per-language ``language_share:<code>``, and for the
    verifiable rows ``accuracy`` (ignoring language) and ``normalized_accuracy`` (correct and in
    the target language), plus ``normalized_accuracy:<code>``.
    """
    if not (len(detected) == len(targets) == len(correct)):
        raise ValueError("detected, targets and correct must have the same length")
    if not detected:
        return {}
    right_language = [in_language(d, t, also_accept) for d, t in zip(detected, targets, strict=True)]
    scores: dict[str, float] = {"language_share": sum(right_language) / len(right_language)}
    verifiable = [
        (ok, lang_ok, t)
        for ok, lang_ok, t in zip(correct, right_language, targets, strict=True)
        if ok is not None
    ]
    if verifiable:
        scores["accuracy"] = sum(bool(ok) for ok, _, _ in verifiable) / len(verifiable)
        scores["normalized_accuracy"] = sum(bool(ok) and lang_ok for ok, lang_ok, _ in verifiable) / len(
            verifiable
        )
    for language in sorted(set(targets)):
        shares = [lang_ok for lang_ok, t in zip(right_language, targets, strict=True) if t == language]
        scores[f"language_share:{language}"] = sum(shares) / len(shares)
        rows = [(ok, lang_ok) for ok, lang_ok, t in verifiable if t == language]
        if rows:
            scores[f"normalized_accuracy:{language}"] = sum(
                bool(ok) and lang_ok for ok, lang_ok in rows
            ) / len(rows)
    return scores
