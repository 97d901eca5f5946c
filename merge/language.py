"""SEA-IFEval's language normalisation: scores of a set of answers given each one's detected language.

SEA-IFEval counts a response that does the task in the wrong language as a failure: the
language-normalised accuracy of a set of answers is the share that are correct *and* not in
another language than the prompt's. Detection, code spellings, equivalent languages and the
minimum length all come from :mod:`tempa.sft.language`; an answer with too little prose to tell
(a bare number) is undetermined, which never counts as the wrong language.
"""

from __future__ import annotations

from collections.abc import Sequence

from tempa.sft import language
from tempa.sft.language import Detection


def language_scores(
    detected: Sequence[Detection],
    targets: Sequence[str],
    correct: Sequence[bool | None],
    equivalent: Sequence[Sequence[str]] = language.EQUIVALENT,
) -> dict[str, float]:
    """Share of answers in their target language, and language-normalised accuracy.

    ``equivalent`` groups codes that count as one language. ``correct[i]``
    is None for rows with nothing verifiable; they count toward the language share only.
    Metrics: ``language_share`` (over the answers whose language could be determined; absent
    when none could), per-language ``language_share:<code>``, ``undetermined`` (share of
    answers too short to tell; also as ``language:undetermined``), and for the verifiable rows ``accuracy`` (ignoring language) and
    ``normalized_accuracy`` (correct and not in a wrong language), plus ``normalized_accuracy:<code>``.
    """
    if not (len(detected) == len(targets) == len(correct)):
        raise ValueError("detected, targets and correct must have the same length")
    if not detected:
        return {}
    # one spelling per language, so that rows saying 'ind' and 'id' share one breakdown
    targets = [language.canonical(t) for t in targets]
    verdicts = [d.is_in(language.accepted([t], equivalent)) for d, t in zip(detected, targets, strict=True)]
    undetermined = sum(v is None for v in verdicts) / len(verdicts)
    # `undetermined` beside the share it qualifies (a headline: 1.0 of 1 answer read is not 1.0 of 16); the
    # breakdown-style `language:undetermined` stays for the readers of older leaderboards
    scores: dict[str, float] = {"undetermined": undetermined, "language:undetermined": undetermined}
    scores.update(_share("language_share", verdicts))
    verifiable = [(ok, v, t) for ok, v, t in zip(correct, verdicts, targets, strict=True) if ok is not None]
    if verifiable:
        scores["accuracy"] = sum(bool(ok) for ok, _, _ in verifiable) / len(verifiable)
        scores["normalized_accuracy"] = _normalized([(ok, v) for ok, v, _ in verifiable])
    for target in sorted(set(targets)):
        scores.update(_share(f"language_share:{target}", [v for v, t in zip(verdicts, targets, strict=True)
                                                          if t == target]))
        rows = [(ok, v) for ok, v, t in verifiable if t == target]
        if rows:
            scores[f"normalized_accuracy:{target}"] = _normalized(rows)
    return scores


def reasoning_scores(verdicts: Sequence[bool | None]) -> dict[str, float]:
    """``reasoning_language_share``: the share of reasonings in a language the policy allows (over those that
    could be judged; absent when none could), and ``reasoning:undetermined`` (no reasoning, or too short)."""
    if not verdicts:
        return {}
    return {"reasoning:undetermined": sum(v is None for v in verdicts) / len(verdicts),
            **_share("reasoning_language_share", list(verdicts))}


def _share(name: str, verdicts: list[bool | None]) -> dict[str, float]:
    determined = [v for v in verdicts if v is not None]
    return {name: sum(determined) / len(determined)} if determined else {}


def _normalized(rows: list[tuple[bool | None, bool | None]]) -> float:
    # Correct and not known to be in a wrong language: an undetermined answer keeps its score.
    return sum(bool(ok) and verdict is not False for ok, verdict in rows) / len(rows)
