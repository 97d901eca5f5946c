"""The PII filter's `secrets` category: credentials in training rows (a model trained on them can repeat them).

The keys are generated here, not written out: a literal key in the repository would be what secret scanners
(and this filter) exist to catch.
"""

from __future__ import annotations

import base64
import json
import random
import string
from pathlib import Path

import pytest

from tempa.sft import curation
from tempa.sft.data_config import PIIConfig

_ALNUM = string.ascii_letters + string.digits
_B64URL = _ALNUM + "-_"
_B64 = _ALNUM + "+/"
_SAMPLE_DATA = Path(curation.__file__).resolve().parent.parent / "recipes" / "data"


def _random(n: int, alphabet: str = _ALNUM, *, seed: int = 0) -> str:
    rng = random.Random(f"{seed}-{n}-{alphabet}")
    return "".join(rng.choice(alphabet) for _ in range(n))


def _jwt(claims: dict, *, alg: str = "HS256", signature: str | None = None) -> str:
    """A signed-looking JSON Web Token: base64url header and claims, then the signature."""
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    sig = _random(43, _B64URL) if signature is None else signature
    return f"{part({'alg': alg, 'typ': 'JWT'})}.{part(claims)}.{sig}"


def _pem(kind: str = "RSA ") -> str:
    body = "\n".join(_random(64, _B64, seed=i) for i in range(4))
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----"


REAL_LOOKING = [
    (f"OPENAI_API_KEY=sk-proj-{_random(156, _B64URL)}", "OpenAI API key"),  # after `=`: not arithmetic
    (f'client = OpenAI(api_key="sk-{_random(20)}T3BlbkFJ{_random(20, seed=1)}")', "OpenAI API key"),
    (f"export ANTHROPIC_API_KEY=sk-ant-api03-{_random(93, _B64URL)}AA", "Anthropic API key"),
    (f"git clone https://ghp_{_random(36)}@github.com/org/repo", "GitHub token"),
    (f"GH_TOKEN: gho_{_random(36)}", "GitHub token"),
    (f"token = github_pat_{_random(22)}_{_random(59, seed=1)}", "GitHub token"),
    (f"huggingface-cli login --token hf_{_random(34, string.ascii_letters)}", "Hugging Face token"),
    (f"aws_access_key_id = AKIA{_random(16, string.ascii_uppercase + '234567')}", "AWS access key ID"),
    (
        f"<script src='https://maps.googleapis.com/maps/api/js?key=AIza{_random(35, _B64URL)}'>",
        "Google API key",
    ),
    (
        f"SLACK_BOT_TOKEN=xoxb-{_random(12, string.digits)}-{_random(13, string.digits)}-{_random(24)}",
        "Slack token",
    ),
    (
        f"curl -H 'Authorization: Bearer eyJ{_random(33, _B64URL)}.{_random(60, _B64URL)}.{_random(43, _B64URL)}'",
        "bearer token",
    ),
    # a session token pasted without `Bearer`: a cookie, a config value, a log line
    (f"Cookie: session={_jwt({'sub': 'u-4821', 'exp': 1767225600})}; Path=/", "JSON Web Token"),
    (f'const token = "{_jwt({"user_id": 77, "role": "admin"}, alg="RS256", signature=_random(342, _B64URL))}";',
     "JSON Web Token"),
    # AWS's secret half has no prefix: it is found by the name it is given
    (f"aws_secret_access_key = {_random(40, _B64)}", "AWS secret access key"),
    (f'export AWS_SECRET_ACCESS_KEY="{_random(40, _B64, seed=1)}"', "AWS secret access key"),
    (f'{{"AccessKeyId": "ASIA...", "SecretAccessKey": "{_random(40, _B64, seed=2)}"}}', "AWS secret access key"),
    (f"new S3Client({{ credentials: {{ secretAccessKey: '{_random(40, _B64, seed=3)}' }} }})",
     "AWS secret access key"),
    (f"Here is my key:\n{_pem()}\nwhy does ssh refuse it?", "private key"),
    (f"{_pem('OPENSSH ')}", "private key"),
    (f"-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\n{_random(64, _B64)}\n", "private key"),
    # a key pasted into code, newlines escaped in the string
    (
        f'KEY = "-----BEGIN PRIVATE KEY-----\\n{_random(64, _B64)}\\n-----END PRIVATE KEY-----\\n"',
        "private key",
    ),
]


@pytest.mark.parametrize(("text", "kind"), REAL_LOOKING)
def test_real_looking_credentials_are_found(text: str, kind: str) -> None:
    assert curation.find_pii(text, PIIConfig()) == kind


@pytest.mark.parametrize(
    "text",
    [
        "Import it as sk-learn? No: the package is scikit-learn, imported as sklearn.",
        "Keys start with `sk-` followed by random characters; never paste yours into a chat.",
        "sk-this-is-a-long-hyphenated-phrase-not-a-key",
        "OPENAI_API_KEY=sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # placeholder
        "OPENAI_API_KEY=sk-...",
        "sk-1a2b3c4d",  # short hex
        "commit 3f786850e387550fdab836ed7e6dc881de23001b fixed it",
        "ghp_abc123 is too short to be a token",
        "from huggingface_hub import hf_hub_download, hf_hub_url",
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",  # AWS's documented example
        'headers = {"Authorization": f"Bearer {api_key}"}',
        'curl -H "Authorization: Bearer $OPENAI_API_KEY"',
        "Authorization: Bearer <your-access-token>",
        "Bearer authentication-schemes-are-described-in-rfc-six-seven-five-zero",
        "xoxb-your-bot-token-here",
        "A PEM file starts with -----BEGIN PRIVATE KEY----- and ends with -----END PRIVATE KEY-----.",
        "-----BEGIN RSA PRIVATE KEY-----\n...\n-----END RSA PRIVATE KEY-----",
        "Google keys begin with AIza and are 39 characters long.",
        "A JWT's header is base64url JSON, so every token starts with eyJ.",
        "data:application/json;base64,eyJuYW1lIjogInRlbXBhIn0=",  # one base64 JSON blob, no token
        f"unsigned: {_jwt({'sub': 'demo'}, alg='none', signature='')}",  # alg none: no signature, no secret
        "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24gY2xhaW1z.c2lnbmF0dXJlLWJ5dGVz",  # the claims part is not JSON
        # jwt.io's example, in every JWT tutorial (as AWS's EXAMPLE keys)
        f"Paste {_jwt({'sub': '1234567890', 'name': 'John Doe'}, signature='SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c')}",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # AWS's documented example
        "aws_secret_access_key = YOUR_SECRET_ACCESS_KEY",
        'export AWS_SECRET_ACCESS_KEY="$AWS_SECRET"',
        "Set secret_access_key in ~/.aws/credentials; it is 40 characters of base64.",
    ],
)
def test_look_alikes_are_not_credentials(text: str) -> None:
    assert curation.find_pii(text, PIIConfig()) is None


def test_secrets_is_on_by_default_and_can_be_switched_off() -> None:
    text = f"my token is ghp_{_random(36)}"
    assert PIIConfig().secrets is True
    assert curation.find_pii(text, PIIConfig()) == "GitHub token"
    assert curation.find_pii(text, PIIConfig(secrets=False)) is None
    # the recipe's allow list applies to credentials as to the other kinds
    assert curation.find_pii(text, PIIConfig(allow=[r"^ghp_"])) is None


def test_the_reject_reason_names_the_kind_not_the_secret() -> None:
    token = f"hf_{_random(34, string.ascii_letters)}"
    messages = [
        {"role": "user", "content": "how do I log in?", "reasoning_content": None},
        {
            "role": "assistant",
            "content": "Run this:",
            "reasoning_content": None,
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "shell", "arguments": json.dumps({"cmd": f"login {token}"})},
                }
            ],
        },
    ]
    code, detail = curation.check_pii(messages, PIIConfig())
    assert (code, detail) == (curation.PII, "turn 1: Hugging Face token")
    assert token not in detail and token[3:] not in detail


def test_shipped_sample_data_has_no_credential_false_positives() -> None:
    only_secrets = PIIConfig(email=False, phone=False, card=False, national_id=False)
    files = sorted(_SAMPLE_DATA.rglob("*.jsonl"))
    assert files, _SAMPLE_DATA
    flagged = [
        (f.name, i, kind)
        for f in files
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines())
        if (kind := curation.find_pii(line, only_secrets))
    ]
    assert flagged == []


def test_a_recipe_that_never_mentions_pii_still_rejects_credentials_only() -> None:
    from tempa.sft.data_config import CurationConfig

    key = f"hf_{_random(34, string.ascii_letters)}"
    row = [{"role": "user", "content": f"my token is {key}, write to ana@example.org"},
           {"role": "assistant", "content": "Revoke it now."}]
    email_only = [row[0] | {"content": "write to ana@example.org"}, row[1]]
    default = CurationConfig().pii
    assert curation.check_pii(row, default) == (curation.PII, "turn 0: Hugging Face token")
    assert curation.check_pii(email_only, default) is None  # other categories stay opt-in
    assert curation.check_pii(email_only, CurationConfig(pii=True).pii) == (curation.PII, "turn 0: email")
    assert CurationConfig(pii=False).pii is None
