"""Curation filters: each is a pure check that returns a reject reason (or None) for a conversation.

Row-local checks (malformed reasoning, role order, PII, language) run inside ``datasets.map``;
the checks that compare rows (duplicates, template instructions) run over the instruction
column once the local ones are done. The token-length check lives with tokenisation.

Reasons are ``(code, detail)`` pairs: the code is what stats count, the detail is what a human
reads in rejects.jsonl.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from tempa.chat_templates.roles import TOOL_ROLES
from tempa.chat_templates.thinking import has_think_tags, split_reasoning
from tempa.sft import language
from tempa.sft.data_config import DedupConfig, LanguageFilterConfig, PIIConfig, TemplateFilterConfig

Reason = tuple[str, str]
Messages = Sequence[Mapping[str, Any]]

# Reject codes, in the order the filters run.
MALFORMED_ROW = "malformed_row"
MALFORMED_REASONING = "malformed_reasoning"
ROLE_ORDER = "role_order"
PII = "pii"
LANGUAGE = "language"
CONTAMINATED = "contaminated"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
TEMPLATE_INSTRUCTION = "template_instruction"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
NO_TRAINABLE_TOKENS = "no_trainable_tokens"
TEMPLATE_ERROR = "template_error"


def turn_texts(turn: Mapping[str, Any]) -> list[str]:
    """Every text of a turn a filter scans: content, reasoning, and the arguments of its tool calls."""
    texts = [turn["content"], turn.get("reasoning_content") or ""]
    for call in turn.get("tool_calls") or ():
        texts.append(call["function"]["arguments"])
    return texts


def json_texts(value: Any) -> list[str]:
    """Every string of a JSON value, its objects' keys included (a tool definition's names, descriptions, enums)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [text for key, item in value.items() for text in (str(key), *json_texts(item))]
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in json_texts(item)]
    return []


def check_tool_calls(messages: Messages, tools: Sequence[Mapping[str, Any]] | None) -> Reason | None:
    """In a row with ``tools``, each call names a function they define (the model learns to call what its prompt
    offers); the results after a call turn answer its calls, as OpenAI's chat format requires: one result per call
    before the next user or assistant turn, no more of them than calls, a result's ``tool_call_id`` one of theirs
    (when the calls carry ids), and a result's ``name``, when it gives one, the function of the call it answers (the
    one its ``tool_call_id`` names, else the first call of that function not answered yet: parallel results may come
    back in another order than their calls)."""
    defined = {tool.get("function", tool).get("name") for tool in tools or ()}
    for i, turn in enumerate(messages):
        calls = turn.get("tool_calls") or () if turn["role"] == "assistant" else ()
        for call in calls:
            name = call["function"]["name"]
            if tools and name not in defined:
                return MALFORMED_ROW, (f"turn {i}: calls {name!r}, which the row's 'tools' do not define; expected "
                                       f"one of {', '.join(map(repr, sorted(defined)))}")
        if not calls:
            continue
        ids = [call["id"] for call in calls if call.get("id")]
        answered: set[int] = set()
        for results, k in enumerate(range(i + 1, len(messages)), start=1):
            result = messages[k]
            if result["role"] not in TOOL_ROLES:
                break
            if results > len(calls):
                return MALFORMED_ROW, (f"turn {k}: result {results} answering turn {i}, which makes {len(calls)} "
                                       f"tool call{'s' if len(calls) > 1 else ''}; expected one result per call")
            answered_id = result.get("tool_call_id")
            if ids and answered_id and answered_id not in ids:
                return MALFORMED_ROW, (f"turn {k}: tool_call_id {answered_id!r} names no call of turn {i}; expected "
                                       f"one of {', '.join(map(repr, ids))}")
            named = result.get("name")
            open_calls = [n for n in range(len(calls)) if n not in answered]
            # the call its id names; else the first one not answered yet of the function it names (parallel results
            # come back in any order), else the first one not answered yet (its place)
            index = next((n for n, call in enumerate(calls) if answered_id and call.get("id") == answered_id),
                         None)
            if index is None and named:
                index = next((n for n in open_calls if calls[n]["function"]["name"] == named), None)
                if index is None:
                    waiting = sorted({calls[n]["function"]["name"] for n in open_calls})
                    return MALFORMED_ROW, (f"turn {k}: result named {named!r} answers no call of turn {i} not "
                                           f"answered yet; expected the name of one of them: "
                                           f"{', '.join(map(repr, waiting))}")
            index = open_calls[0] if index is None else index
            answered.add(index)
            called = calls[index]["function"]["name"]
            if named and named != called:
                return MALFORMED_ROW, (f"turn {k}: result named {named!r} answers turn {i}'s call of {called!r}; "
                                       f"expected the name {called!r}")
        else:
            k = len(messages)  # the row ends in the results (or on the call turn): nothing came before them
        if k < len(messages) and len(answered) < len(calls):
            missing = next(n for n in range(len(calls)) if n not in answered)
            return MALFORMED_ROW, (f"turn {i}: call {missing + 1} of {len(calls)} "
                                   f"({calls[missing]['function']['name']!r}) gets no result before turn {k}; "
                                   "expected one result per call")
    return None


# --- malformed reasoning --------------------------------------------------------------------------


def check_reasoning(messages: Messages) -> Reason | None:
    """An unclosed think block, tags inside a trace, a trace given twice, a second think block in the
    answer, or an empty answer after a trace (a turn that calls a tool may have no text).

    Think tags outside reasoning position are text (``tempa.chat_templates.thinking``): an answer that
    mentions ``</think>`` in a sentence is kept as it is.
    """
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        content, trace = turn["content"], turn.get("reasoning_content")
        if trace is not None and has_think_tags(trace):
            return MALFORMED_REASONING, f"turn {i}: think tags inside the reasoning trace (nested reasoning)"
        split = split_reasoning(content)
        if split.opened and not split.closed:
            return MALFORMED_REASONING, f"turn {i}: unclosed think block"
        if split.has_block:
            if trace is not None:
                return MALFORMED_REASONING, f"turn {i}: reasoning given both as a field and as a think block in the answer"
            # formats split the block off already; one still here means a second block
            return MALFORMED_REASONING, f"turn {i}: more than one think block in one answer"
        if trace is not None and not content.strip() and not turn.get("tool_calls"):
            return MALFORMED_REASONING, f"turn {i}: empty answer after the reasoning"
    return None


# --- role order -----------------------------------------------------------------------------------

def _stray_result(messages: Messages, index: int) -> Reason | None:
    """Turn ``index``, a tool result, answers no call: it follows neither an assistant turn that calls a tool nor
    another result (several results may follow one call turn)."""
    previous = messages[index - 1] if index else None
    if previous is not None and (previous["role"] in TOOL_ROLES or (
            previous["role"] == "assistant" and previous.get("tool_calls"))):
        return None
    return ROLE_ORDER, f"turn {index}: {messages[index]['role']} turn not after an assistant turn that calls a tool"


def check_tool_results(messages: Messages) -> Reason | None:
    """Every tool result answers a call: the part of the role order a prompt keeps too (the chat templates refuse to
    render a result without its call)."""
    return next((reason for i, turn in enumerate(messages)
                 if turn["role"] in TOOL_ROLES and (reason := _stray_result(messages, i))), None)


def check_role_order(messages: Messages) -> Reason | None:
    """System only first; user and assistant alternate; tool results answer an assistant turn that called a
    tool (several results may follow one call turn); the row ends on an assistant turn."""
    if not messages:
        return ROLE_ORDER, "no turns"
    previous = None
    for i, turn in enumerate(messages):
        role = turn["role"]
        if role == "system":
            if i != 0:
                return ROLE_ORDER, f"turn {i}: system turn after the start"
        elif role == "user":
            if previous == "user":
                return ROLE_ORDER, f"turn {i}: two user turns in a row"
        elif role == "assistant":
            if previous not in ("user", *TOOL_ROLES):
                what = "at the start" if previous in (None, "system") else "after an assistant turn"
                return ROLE_ORDER, f"turn {i}: assistant turn {what}"
        elif role in TOOL_ROLES and (stray := _stray_result(messages, i)):
            return stray
        empty = not turn["content"].strip() and not turn.get("reasoning_content") and not turn.get("tool_calls")
        if role in ("user", "assistant") and empty:
            return ROLE_ORDER, f"turn {i}: empty {role} turn"
        previous = role
    if previous != "assistant":
        return ROLE_ORDER, "does not end with an assistant turn"
    return None


# --- PII ------------------------------------------------------------------------------------------

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Boundaries are ASCII letters and digits, not \w: Thai and Japanese write numbers between letters.
_PHONE = re.compile(
    r"(?<![0-9A-Za-z+])(?<!\d[ .-])(?:"
    # International: +country code, then digits in groups.
    r"\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){1,4}"
    # Area code in parentheses: (021) 555-1234, (02) 1234 5678.
    r"|\(0?\d{1,4}\)[\s.-]?\d{3,4}[\s.-]?\d{3,4}"
    # Local numbers in three separated groups after a trunk 0: 0812-3456-7890, 090-1234-5678.
    r"|0\d{1,4}[\s.-]\d{3,4}[\s.-]\d{3,5}"
    # Unseparated mobiles with their national prefixes: ID 08, PH 09, VN 0[35789], MY 01, TH 0[689].
    r"|0(?:8\d{8,11}|9\d{9}|[35789]\d{8}|1\d{8,9}|[689]\d{8})"
    r")(?![0-9A-Za-z])(?![ .-]?\d)"
)
# Digit runs are matched whole: never a piece of a longer (possibly space-grouped) number.
_START, _END = r"(?<![\d-])(?<!\d[ -])", r"(?![ -]?\d)"
_CARD = re.compile(_START + r"\d(?:[ -]?\d){12,18}" + _END)
_NRIC = re.compile(r"(?<![0-9A-Za-z])([STFG])(\d{7})([A-Z])(?![0-9A-Za-z])")
_MYKAD = re.compile(r"(?<![\d-])(\d{2})(\d{2})(\d{2})-(\d{2})-(\d{4})(?![\d-])")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_THAI_ID = re.compile(_START + r"[1-8]-?\d{4}-?\d{5}-?\d{2}-?\d" + _END)
_NIK = re.compile(_START + r"\d{16}" + _END)
_MY_NUMBER = re.compile(_START + r"\d{4}[ -]?\d{4}[ -]?\d{4}" + _END)
# A number next to one of these is a term of arithmetic, not an identifier ("123456789012 × 7 = ...").
_OPERATORS = set("+-−*/=×÷^<>≈")


# Credentials: a vendor's prefix, then a body as long as that vendor's keys. Whole tokens only: a key is never
# a piece of a longer identifier. Group 1 is the random body the validators judge.
_KEY_EDGE = "A-Za-z0-9_-"


def _key(prefix: str, body: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![{_KEY_EDGE}]){prefix}({body})(?![{_KEY_EDGE}])")


_ANTHROPIC_KEY = _key(r"sk-ant-[a-z]+\d\d-", r"[A-Za-z0-9_-]{32,}")
_OPENAI_KEY = _key(r"sk-(?:(?:proj|svcacct|admin)-)?", r"[A-Za-z0-9_-]{32,}")
_GITHUB_TOKEN = _key(r"gh[pousr]_", r"[A-Za-z0-9]{36}")
_GITHUB_PAT = _key(r"github_pat_", r"[A-Za-z0-9_]{50,}")
_HF_TOKEN = _key(r"hf_", r"[A-Za-z]{34}")
_AWS_KEY_ID = _key(r"(?:AKIA|ASIA|ABIA|ACCA)", r"[A-Z0-9]{16}")
_GOOGLE_KEY = _key(r"AIza", r"[A-Za-z0-9_-]{35}")
_SLACK_TOKEN = _key(r"xox[bpars]-", r"[A-Za-z0-9-]{10,}")
# RFC 6750's token characters; a template variable (`{token}`, `$TOKEN`, `<token>`) is none of them.
_BEARER = re.compile(r"(?<![A-Za-z0-9])(?i:bearer)\s+([A-Za-z0-9._~+/-]{20,}=*)(?![A-Za-z0-9._~+/=-])")
# A JSON Web Token: base64url JSON header and claims (`{"` encodes as `eyJ`), then a signature. A signed token is a
# live session or API credential; its header must name a signing algorithm (`alg: none` tokens sign nothing).
_JWT = re.compile(r"(?<![A-Za-z0-9_-])(eyJ[A-Za-z0-9_-]{8,})\.(eyJ[A-Za-z0-9_-]{4,})\.[A-Za-z0-9_-]{20,}(?![A-Za-z0-9_-])")
# AWS's secret access key has no prefix: 40 characters of base64, found by the name every SDK and file gives it.
_AWS_SECRET = re.compile(
    r"(?:secret_access_key|SECRET_ACCESS_KEY|SecretAccessKey|secretAccessKey)[\"']?\s*[:=]\s*[\"']?"
    r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
)
# The header with key material after it (PEM's own header lines allowed, newlines possibly escaped in code):
# a tutorial naming the header alone is no key.
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----(?:\s|\\[rn])+"
    r"(?:[A-Za-z-]+:[^\n\\]*(?:\s|\\[rn])+)*[A-Za-z0-9+/]{40}"
)


# Every credential rule's literal start: text holding none of them skips the rules, each of which scans slowly (a
# look-behind before its prefix), with substring tests that take microseconds. Keys are pasted, never typed full
# width: the text as written. ("earer": Bearer and bearer; "EARER": BEARER.)
_SECRET_HINTS = ("sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "hf_", "AKIA", "ASIA", "ABIA", "ACCA",
                 "AIza", "xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-", "earer", "EARER", "PRIVATE KEY", "eyJ",
                 "ecret_access_key", "ECRET_ACCESS_KEY", "ecretAccessKey")


def _may_hold_a_key(text: str) -> bool:
    return any(hint in text for hint in _SECRET_HINTS)


def _placeholder(body: str) -> bool:
    """``sk-xxxx…``, ``AKIA0000…``, AWS's documented ``AKIAIOSFODNN7EXAMPLE``: shaped like a key, no secret."""
    return "EXAMPLE" in body.upper() or max(Counter(body).values()) * 3 > len(body)


def _looks_random(body: str) -> bool:
    """A generated key mixes at least two of lower case, upper case and digits (`sk-` and a hyphenated phrase
    does not) and is no placeholder."""
    classes = sum(any(test(ch) for ch in body) for test in (str.islower, str.isupper, str.isdigit))
    return classes >= 2 and not _placeholder(body)


def _json_part(part: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, RecursionError):  # binascii, Unicode and JSON errors are ValueErrors; deep nesting
        return None


# jwt.io's example token (HS256, "John Doe", signed with the key "your-256-bit-secret"): in every JWT tutorial, as
# AWS's EXAMPLE keys are in theirs; no credential.
_JWT_IO_EXAMPLE_SIGNATURE = "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"


def _signed_jwt(match: re.Match[str]) -> bool:
    header, claims = _json_part(match.group(1)), _json_part(match.group(2))
    return (
        isinstance(header, dict) and isinstance(claims, dict)
        and str(header.get("alg", "none")).lower() != "none"
        and not match.group(0).endswith(_JWT_IO_EXAMPLE_SIGNATURE)
    )


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum that payment card numbers carry."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _nric_ok(prefix: str, digits: str, check: str) -> bool:
    weights = (2, 7, 6, 5, 4, 3, 2)
    total = sum(int(d) * w for d, w in zip(digits, weights, strict=True)) + (4 if prefix in "TG" else 0)
    letters = "JZIHGFEDCBA" if prefix in "ST" else "XWUTRQPNMLK"
    return letters[total % 11] == check


def _thai_id_ok(digits: str) -> bool:
    total = sum(int(d) * (13 - i) for i, d in enumerate(digits[:12]))
    return (11 - total % 11) % 10 == int(digits[12])


def _my_number_ok(digits: str) -> bool:
    # Japanese Individual Number: weighted check digit over the first 11 digits.
    body = [int(d) for d in reversed(digits[:11])]
    total = sum(p * (n + 1 if n <= 6 else n - 5) for n, p in enumerate(body, start=1))
    remainder = total % 11
    return (0 if remainder <= 1 else 11 - remainder) == int(digits[11])


def _nik_ok(digits: str) -> bool:
    # Indonesian NIK: province code 11-94, then the birth date DDMMYY (+40 on the day for women).
    province, day, month = int(digits[:2]), int(digits[6:8]), int(digits[8:10])
    day = day - 40 if day > 40 else day
    return 11 <= province <= 94 and 1 <= day <= 31 and 1 <= month <= 12


def _mykad_ok(groups: tuple[str, ...]) -> bool:
    month, day = int(groups[1]), int(groups[2])
    return 1 <= month <= 12 and 1 <= day <= 31


def _in_arithmetic(text: str, start: int, end: int) -> bool:
    before = text[:start].rstrip()[-1:]
    after = text[end:].lstrip()[:1]
    return bool(before and before in _OPERATORS) or bool(after and after in _OPERATORS)


def _digits(match: re.Match[str]) -> str:
    return re.sub(r"\D", "", match.group())


# (kind, switch on PIIConfig, pattern, validator of a match)
_RULES: tuple[tuple[str, str, re.Pattern[str], Any], ...] = (
    # Credentials first: a row with a token in a URL names the token, not the URL's `user@host`.
    ("Anthropic API key", "secrets", _ANTHROPIC_KEY, lambda m: _looks_random(m.group(1))),
    ("OpenAI API key", "secrets", _OPENAI_KEY, lambda m: _looks_random(m.group(1))),
    ("GitHub token", "secrets", _GITHUB_TOKEN, lambda m: _looks_random(m.group(1))),
    ("GitHub token", "secrets", _GITHUB_PAT, lambda m: _looks_random(m.group(1))),
    ("Hugging Face token", "secrets", _HF_TOKEN, lambda m: _looks_random(m.group(1))),
    # AWS key IDs are upper case and digits, and one in thirty has no digit: only placeholders are let through.
    ("AWS access key ID", "secrets", _AWS_KEY_ID, lambda m: not _placeholder(m.group(1))),
    ("Google API key", "secrets", _GOOGLE_KEY, lambda m: _looks_random(m.group(1))),
    ("Slack token", "secrets", _SLACK_TOKEN, lambda m: _looks_random(m.group(1))),
    ("bearer token", "secrets", _BEARER, lambda m: _looks_random(m.group(1))),
    ("JSON Web Token", "secrets", _JWT, _signed_jwt),
    ("AWS secret access key", "secrets", _AWS_SECRET, lambda m: _looks_random(m.group(1))),
    ("private key", "secrets", _PRIVATE_KEY, None),
    ("email", "email", _EMAIL, None),
    ("card number", "card", _CARD, lambda m: len(set(_digits(m))) > 1 and luhn_ok(_digits(m))),
    ("Singapore NRIC/FIN", "national_id", _NRIC, lambda m: _nric_ok(*m.groups())),
    ("Malaysian MyKad number", "national_id", _MYKAD, lambda m: _mykad_ok(m.groups())),
    ("US SSN", "national_id", _SSN, None),
    ("Thai ID number", "national_id", _THAI_ID, lambda m: _thai_id_ok(_digits(m))),
    ("Indonesian NIK", "national_id", _NIK, lambda m: _nik_ok(m.group())),
    ("Japanese My Number", "national_id", _MY_NUMBER, lambda m: _my_number_ok(_digits(m))),
    ("phone number", "phone", _PHONE, lambda m: 8 <= len(_digits(m)) <= 15 and len(set(_digits(m))) > 2),
)
# Number-shaped kinds: a number next to an operator is arithmetic. A key after `=` (`OPENAI_API_KEY=sk-...`) is not.
_NUMBER_SWITCHES = frozenset({"phone", "card", "national_id"})


@lru_cache(maxsize=64)
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p) for p in patterns)


# Dashes typed between digits in place of a hyphen: Japanese input methods give the long-vowel mark (ー, ｰ).
_DIGIT_DASH = re.compile(r"(?<=\d)[ー‐‑‒–—―](?=\d)")


def ascii_forms(text: str) -> str:
    """``text`` with full-width letters, digits, @, hyphens and ideographic spaces in their ASCII forms.

    CJK input methods type personal data full width (０９０－１２３４－５６７８, ｉｎｆｏ＠ｅｘａｍｐｌｅ．ｊｐ);
    the rules are written for the ASCII forms, which NFKC gives.
    """
    return _DIGIT_DASH.sub("-", unicodedata.normalize("NFKC", text))


def find_pii(text: str, config: PIIConfig) -> str | None:
    """The kind of personal data or credential found in ``text`` (e.g. ``email``, ``GitHub token``), or None.

    Number-shaped kinds must pass their checksum or date rule, and a number written as a term
    of arithmetic (next to an operator) is never personal data, so maths rows survive. The rules
    read the text's ASCII forms (:func:`ascii_forms`); a recipe's ``extra_patterns`` and ``allow``
    also match the text as written.
    """
    others = config.email or config.phone or config.card or config.national_id or config.extra_patterns
    secrets = config.secrets and _may_hold_a_key(text)
    if not others and not secrets:
        return None  # the default (credentials only) on text with no key's prefix: most training text
    # an allow pattern written full width (０３－…) allows the ASCII form the built-in rules match too
    allow = _compiled(tuple(dict.fromkeys([*config.allow, *(unicodedata.normalize("NFKC", a) for a in config.allow)])))
    extra = [(name, "", p, None) for name, p in zip(
        config.extra_patterns, _compiled(tuple(config.extra_patterns.values())), strict=True)]
    ascii_text = ascii_forms(text)
    texts = [ascii_text] if ascii_text == text else [ascii_text, text]
    for kind, switch, pattern, valid in [*_RULES, *extra]:
        if (switch and not getattr(config, switch)) or (switch == "secrets" and not secrets):
            continue
        # The built-in rules are written for ASCII forms; a recipe's own patterns may be written full width.
        for seen in texts[:1] if switch else texts:
            for m in pattern.finditer(seen):
                if any(a.search(m.group()) for a in allow):
                    continue
                if switch in _NUMBER_SWITCHES and _in_arithmetic(seen, m.start(), m.end()):
                    continue
                if valid is None or valid(m):
                    return kind
    return None


def check_pii(messages: Messages, config: PIIConfig) -> Reason | None:
    """Reject a conversation that contains personal data in a scanned turn."""
    for i, turn in enumerate(messages):
        if turn["role"] not in config.roles:
            continue
        for text in turn_texts(turn):
            kind = find_pii(text, config)
            if kind is not None:
                return PII, f"turn {i}: {kind}"
    return None


# --- language ID ----------------------------------------------------------------------------------


def check_language(messages: Messages, accepted: frozenset[str], config: LanguageFilterConfig) -> Reason | None:
    """Reject a conversation whose text is identified as a language outside ``accepted``.

    ``accepted`` comes from :func:`tempa.sft.language.accepted` (targets plus their equivalents);
    text with too little prose to tell is kept. The confidence compared with ``min_confidence`` is
    the detector's probability of the whole accepted set, so an Indonesian row that the detector
    splits between ``id`` and ``ms`` is not rejected as unsure.
    """
    roles = {"all": ("user", "assistant"), "user": ("user",), "assistant": ("assistant",)}[config.check]
    text = "\n".join(t["content"] for t in messages if t["role"] in roles)
    found = language.detect(text, min_letters=config.min_letters)
    verdict = found.is_in(accepted)
    if verdict is None:
        return None
    if not verdict:
        return LANGUAGE, f"detected {found.language!r} (p={found.probability:.2f}); expected one of {sorted(accepted)}"
    confidence = found.probability_of(accepted)
    if confidence < config.min_confidence:
        return LANGUAGE, f"detected {sorted(accepted)} with p={confidence:.2f} < min_confidence {config.min_confidence}"
    return None


# --- duplicates -----------------------------------------------------------------------------------

_SPACES = re.compile(r"\s+")
_SIGNATURE_BLOCK = 4096
_LSH_WEIGHTS = (0.1, 0.9)  # (false candidates, missed pairs)


def normalize_instruction(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: two instructions that differ only so are equal."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _shingles(text: str, n: int) -> list[bytes]:
    if len(text) <= n:
        return [text.encode()]
    return list({text[i : i + n].encode() for i in range(len(text) - n + 1)})


class Deduplicator:
    """Exact and MinHash near-duplicate detection over instructions, first occurrence wins.

    Stateful on purpose: rows are offered in recipe order (source by source, row by row) and each
    is compared with everything kept before it, so the result does not depend on process count.
    LSH only proposes candidates (any one band of the signatures colliding); a candidate is a
    near-duplicate when its signature agrees with the row's at ``near_threshold``, so a row less
    similar than that to every row before it is always kept.
    """

    def __init__(self, config: DedupConfig) -> None:
        from datasketch import MinHash, MinHashLSH

        self.config = config
        self._minhash = MinHash
        self._exact: dict[bytes, str] = {}
        # Candidates are checked (``offer``), so a false candidate costs a comparison and a missed pair a duplicate
        # trained: LSH's bands are tuned to miss few (at 0.85/128: 11 bands of 11, ~98% of 0.9-similar pairs found,
        # where the balanced 8 of 16 found ~80%).
        self._lsh = (
            MinHashLSH(threshold=config.near_threshold, num_perm=config.num_perm, weights=_LSH_WEIGHTS)
            if config.near
            else None
        )
        # Permutations shared by every MinHash: generating them per row dominates the cost otherwise.
        template = MinHash(num_perm=config.num_perm, seed=1)
        self._permutations, self._scheme = template.permutations, template.scheme
        # The signatures of the kept rows, by insertion number, in blocks (512 bytes a row at 128 permutations).
        self._signatures: list[np.ndarray] = []
        self._count = 0

    def _signature(self, index: int) -> np.ndarray:
        block, row = divmod(index, _SIGNATURE_BLOCK)
        return self._signatures[block][row]

    def _keep_signature(self, hashvalues: np.ndarray) -> None:
        block, row = divmod(self._count, _SIGNATURE_BLOCK)
        if block == len(self._signatures):
            self._signatures.append(np.empty((_SIGNATURE_BLOCK, self.config.num_perm), dtype=np.uint32))
        self._signatures[block][row] = hashvalues  # values below 2**32: datasketch masks them so

    def offer(self, instruction: str, label: str) -> Reason | None:
        """Register a row's instruction; the reason when it duplicates one offered before."""
        text = normalize_instruction(instruction)
        key = hashlib.blake2b(text.encode(), digest_size=16).digest()
        if self.config.exact:
            first = self._exact.get(key)
            if first is not None:
                return EXACT_DUPLICATE, f"same instruction as {first}"
        minhash = None
        if self._lsh is not None:
            minhash = self._minhash(
                num_perm=self.config.num_perm, seed=1, permutations=self._permutations, scheme=self._scheme
            )
            minhash.update_batch(_shingles(text, self.config.ngram))
            for first_label, index in sorted(self._lsh.query(minhash), key=lambda hit: hit[1]):
                similarity = float(np.mean(self._signature(index) == minhash.hashvalues))
                if similarity >= self.config.near_threshold:
                    detail = f"near-duplicate of {first_label} (estimated similarity {similarity:.2f})"
                    return NEAR_DUPLICATE, detail
        self._exact.setdefault(key, label)
        if minhash is not None:
            self._lsh.insert((label, self._count), minhash)
            self._keep_signature(minhash.hashvalues)
        self._count += 1
        return None


# --- evaluation prompts (decontamination) ---------------------------------------------------------


def contamination_index(prompts: Sequence[tuple[str, str]]) -> dict[str, str]:
    """``(instruction, where)`` pairs of evaluation prompts by their instruction as dedup compares it (the first
    place wins); an empty instruction is no prompt to match."""
    index: dict[str, str] = {}
    for instruction, where in prompts:
        key = normalize_instruction(instruction)
        if key:
            index.setdefault(key, where)
    return index


def check_contamination(instruction: str, index: Mapping[str, str]) -> Reason | None:
    """A row whose instruction is an evaluation prompt: the evaluation would reward remembering it."""
    where = index.get(normalize_instruction(instruction)) if index else None
    return None if where is None else (CONTAMINATED, f"instruction is an evaluation prompt: {where}")


# --- template instructions ------------------------------------------------------------------------

_QUOTED = re.compile(r"\"[^\"\n]*\"|'[^'\n]*'|“[^”\n]*”|‘[^’\n]*’|«[^»\n]*»|「[^」\n]*」|『[^』\n]*』")
_URL = re.compile(r"https?://\S+|www\.\S+")
_DIGITS = re.compile(r"\d+(?:[.,]\d+)*")


def instruction_skeleton(text: str, prefix_chars: int) -> str:
    """The instruction with its slots masked (digits, quotes, URLs, emails), cut to a prefix."""
    text = normalize_instruction(text)
    text = _URL.sub("<url>", text)
    text = _EMAIL.sub("<email>", text)
    text = _QUOTED.sub("<q>", text)
    text = _DIGITS.sub("0", text)
    return text[:prefix_chars]


def template_rejects(skeletons: Sequence[str], config: TemplateFilterConfig) -> list[Reason | None]:
    """Per row: a reason when its skeleton occurs more than ``max_repeats`` times (beyond ``keep``)."""
    counts = Counter(skeletons)
    seen: Counter[str] = Counter()
    out: list[Reason | None] = []
    for skeleton in skeletons:
        total = counts[skeleton]
        seen[skeleton] += 1
        if total > config.max_repeats and seen[skeleton] > config.keep:
            out.append((TEMPLATE_INSTRUCTION, f"skeleton repeated {total} times: {skeleton[:40]!r}"))
        else:
            out.append(None)
    return out
