"""`tempa push`: the final folder goes up in one huggingface_hub commit, to a local stand-in for the Hub API.

The server answers the calls huggingface_hub makes (create the repo, validate the card's YAML,
pre-upload, commit) and records what the commit carried; no test reaches the real Hub.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from stage_helpers import baked_final
from tempa.merge.publish import make_publishable

CARD = """---
license: apache-2.0
language: [id, en]
base_model: meta-llama/Llama-3.1-8B
---

# t

model_id = "path/to/this/folder"
"""


class FakeHub(BaseHTTPRequestHandler):
    commits: ClassVar[list[dict]] = []
    repos: ClassVar[list[dict]] = []
    tokens: ClassVar[set[str]] = set()
    existing: ClassVar[dict[str, bool]] = {}  # repos already on the Hub: id -> private
    refuse: ClassVar[int | None] = None  # an HTTP status every call gets (a token the Hub does not accept)

    def log_message(self, *args):
        pass

    def _reply(self, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        FakeHub.tokens.add(self.headers.get("Authorization", ""))
        if FakeHub.refuse is not None:
            return self._reply({"error": "Invalid credentials in Authorization header"}, FakeHub.refuse)
        endpoint = f"http://127.0.0.1:{self.server.server_port}"
        if self.path == "/api/repos/create":
            request = json.loads(body)
            FakeHub.repos.append(request)
            repo = f"{request.get('organization')}/{request['name']}"
            if repo in FakeHub.existing:
                return self._reply({"error": "You already created this model repo", "url": f"{endpoint}/{repo}"}, 409)
            FakeHub.existing[repo] = request.get("visibility") == "private"
            return self._reply({"url": f"{endpoint}/{repo}", "name": repo, "id": repo})
        if self.path == "/api/validate-yaml":
            return self._reply({"errors": [], "warnings": []})
        if self.path.endswith("/preupload/main"):
            files = json.loads(body)["files"]
            return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                          for f in files]})
        if self.path.endswith("/commit/main"):
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            files = {item["value"]["path"]: base64.b64decode(item["value"]["content"])
                     for item in lines if item["key"] == "file"}
            FakeHub.commits.append({"path": self.path, "header": lines[0]["value"], "files": files})
            return self._reply({"commitUrl": f"{endpoint}/org/model/commit/{'a' * 40}", "commitOid": "a" * 40})
        self._reply({"error": f"not served: {self.path}"}, 404)

    def do_GET(self):
        repo = self.path.removeprefix("/api/models/").split("?")[0].split("/revision/")[0]
        if repo in FakeHub.existing:
            return self._reply({"id": repo, "private": FakeHub.existing[repo], "sha": "b" * 40})
        self._reply({"error": f"not served: {self.path}"}, 404)


@pytest.fixture()
def hub():
    FakeHub.commits, FakeHub.repos, FakeHub.tokens, FakeHub.existing, FakeHub.refuse = [], [], set(), {}, None
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def baked(tiny_model_dir, tmp_path_factory):
    """The tiny model with the thinking template baked in (once: each test copies it)."""
    return baked_final(tiny_model_dir, tmp_path_factory.mktemp("push") / "final")


@pytest.fixture()
def run_dir(tmp_path, baked):
    run = tmp_path / "run"
    final = run / "bake" / "final"
    shutil.copytree(baked, final)
    (final / "README.md").write_text(CARD)
    (final / "t-q8_0.gguf").write_bytes(b"GGUF")
    (final / "t-q8_0.Modelfile").write_text("FROM ./t-q8_0.gguf\n")
    (final / ".t-f16.gguf.partial").write_bytes(b"half")
    (run / "sft" / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (run / "sft" / "checkpoints" / "checkpoint-2" / "model.safetensors").write_bytes(b"x")
    make_publishable(final)
    (run / "final").symlink_to(final)
    (run / "recipe.resolved.yaml").write_text("name: t\n")  # no stages listed: their manifests tell the states
    return run


def tempa(*args: str, endpoint: str = "http://127.0.0.1:9", token: str | None = "hf_" + "x" * 34,
          hf_home: str | None = None) -> subprocess.CompletedProcess:
    """The CLI against ``endpoint``; ``token`` None: no HF_TOKEN (``hf_home``: where a login would be stored)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_OFFLINE", "HF_TOKEN"))}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_DISABLE_TELEMETRY="1")
    if token is not None:
        env["HF_TOKEN"] = token
    if hf_home is not None:
        env["HF_HOME"] = hf_home
    return subprocess.run([sys.executable, "-m", "tempa.recipes.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_push_commits_the_final_folder_only(run_dir, tiny_model_dir, hub):
    proc = tempa("push", str(run_dir), "--repo", "org/model", endpoint=hub)
    assert proc.returncode == 0, proc.stderr
    assert len(FakeHub.commits) == 1 and FakeHub.commits[0]["path"] == "/api/models/org/model/commit/main"
    files = FakeHub.commits[0]["files"]
    expected = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                "generation_config.json", "README.md"}
    assert set(files) == expected  # no GGUF without --gguf, no hidden partial file, no checkpoint
    assert files["model.safetensors"] == (tiny_model_dir / "model.safetensors").read_bytes()
    card = files["README.md"].decode()
    assert 'model_id = "org/model"' in card and card.startswith("---\nlicense: apache-2.0")
    assert FakeHub.repos[0]["name"] == "model" and FakeHub.repos[0]["organization"] == "org"
    assert str(run_dir) not in proc.stdout + proc.stderr and "hf_xxx" not in proc.stdout + proc.stderr
    assert f"{hub}/org/model/commit/" in proc.stdout


def test_dry_run_lists_files_and_uploads_nothing(run_dir, hub):
    proc = tempa("push", str(run_dir), "--repo", "org/model", "--gguf", "--dry-run", endpoint=hub)
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert "t-q8_0.gguf" in listed and "t-q8_0.Modelfile" in listed and "README.md" in listed
    assert not any(name.startswith(".") or "checkpoint" in name for name in listed)
    assert "dry run:" in proc.stdout and FakeHub.commits == [] and FakeHub.repos == []
    # the one shared Modelfile an earlier tempa's exports left beside the GGUFs would go up beside their own: refused
    (run_dir / "final" / "Modelfile").write_text("FROM ./t-f16.gguf\n")
    proc = tempa("push", str(run_dir), "--repo", "org/model", "--gguf", "--dry-run", endpoint=hub)
    assert proc.returncode == 1 and "Modelfile: the one Modelfile an earlier tempa's exports shared" in proc.stderr
    assert tempa("push", str(run_dir), "--repo", "org/model", "--dry-run", endpoint=hub).returncode == 0  # no --gguf


def test_a_folder_that_is_not_publishable_is_refused(run_dir, hub):
    (run_dir / "final" / "notes.txt").write_text(f"trained on {run_dir}/data/private.jsonl\n")
    (run_dir / "final" / "notes.txt").chmod(0o644)
    proc = tempa("push", str(run_dir), "--repo", "org/model", endpoint=hub)
    assert proc.returncode == 1 and "not publishable as it is: notes.txt: local path" in proc.stderr
    assert FakeHub.commits == [] and len(proc.stderr.strip().splitlines()) == 1


def test_commit_operations_are_huggingface_hub_s_own(run_dir):
    from huggingface_hub import CommitOperationAdd

    from tempa.recipes.push import commit_operations, final_folder, push_files

    folder = final_folder(run_dir)
    ops = commit_operations(folder, push_files(folder), "org/model")
    assert all(isinstance(op, CommitOperationAdd) for op in ops)
    card = next(op for op in ops if op.path_in_repo == "README.md")
    assert b'model_id = "org/model"' in card.path_or_fileobj


def test_a_run_with_a_stale_or_failed_stage_is_refused(run_dir):
    from tempa.recipes.push import final_folder
    from tempa.sft.stage_api import StageError

    (run_dir / "sft" / "manifest.json").write_text(json.dumps(
        {"name": "sft", "kind": "sft", "fingerprint": "f", "status": "failed", "started_at": 0}))
    with pytest.raises(StageError, match=r"not every stage is complete and current: sft \(failed\)"):
        final_folder(run_dir)


def test_the_card_names_hub_datasets_but_not_local_files(tmp_path):
    import yaml

    from tempa.merge.model_card import ModelCardConfig, render_model_card
    from tempa.sft.config import SFTStageConfig
    from tempa.sft.stage_api import RecipeInfo, StageResult, Upstream
    from tempa.sft.train_args import DEFER_TRAIN_CHECKS

    (tmp_path / "mine.jsonl").write_text("{}\n")
    config = SFTStageConfig.model_validate(
        {"name": "sft", "kind": "sft", "data": {"sources": [
            {"name": "chat", "path": "HuggingFaceH4/ultrachat_200k"}, {"name": "mine", "path": "mine.jsonl"}]}},
        context={"base_dir": tmp_path, DEFER_TRAIN_CHECKS: True})
    card = render_model_card(
        ModelCardConfig(license="llama3.1", languages=["id", "th"]),
        recipe=RecipeInfo("t", "meta-llama/Llama-3.1-8B", "llama3_thinking"),
        stages={"sft": Upstream("sft", "sft", config, StageResult())})
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["datasets"] == ["HuggingFaceH4/ultrachat_200k"] and front["base_model"] == "meta-llama/Llama-3.1-8B"
    assert front["license"] == "llama3.1" and front["language"] == ["id", "th"]
    assert 'thinking_mode="on"' in card and str(tmp_path) not in card
    # a side experiment's data is not the model's: a run whose shipped model is `sft` lists only sft's
    side = SFTStageConfig.model_validate(
        {"name": "side", "kind": "sft", "from": "sft", "data": {"sources": [{"name": "x", "path": "org/side-data"}]}},
        context={"base_dir": tmp_path, DEFER_TRAIN_CHECKS: True})
    stages = {"sft": Upstream("sft", "sft", config, StageResult()), "side": Upstream("side", "sft", side, StageResult())}
    card = render_model_card(ModelCardConfig(), recipe=RecipeInfo("t", "meta-llama/Llama-3.1-8B", "llama3_thinking"),
                             stages=stages, weights_from="sft")
    assert yaml.safe_load(card.split("---\n")[1])["datasets"] == ["HuggingFaceH4/ultrachat_200k"]


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_symlink_in_the_final_folder_is_refused_and_nothing_it_points_to_goes_up(run_dir, hub, tmp_path, kind):
    """A link in final/ (left by a hand-made export, or planted in a shared run folder) would upload a file of
    the user's machine: push_files followed it, and its 0644 target passed the mode check."""
    private = tmp_path / "home"
    private.mkdir()
    (private / "id_ed25519").write_text("PRIVATE KEY MATERIAL\n")
    (private / "id_ed25519").chmod(0o644)
    private.chmod(0o755)
    target, name = (private / "id_ed25519", "id_ed25519") if kind == "file" else (private, "extra")
    (run_dir / "final" / name).symlink_to(target)
    proc = tempa("push", str(run_dir), "--repo", "org/model", endpoint=hub)
    assert proc.returncode == 1 and f"not publishable as it is: {name}: a symbolic link" in proc.stderr, proc.stderr
    assert FakeHub.commits == [] and FakeHub.repos == []

    from tempa.recipes.push import push_files

    assert all("PRIVATE" not in f.local.read_text(errors="replace") for f in push_files(run_dir / "final"))


def test_a_final_link_that_leaves_the_run_folder_is_refused(run_dir, hub, tmp_path):
    """run/final must be the run's own model: a link repointed at another folder is not uploaded from there."""
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(run_dir / "bake" / "final", elsewhere)
    (run_dir / "final").unlink()
    (run_dir / "final").symlink_to(elsewhere)
    proc = tempa("push", str(run_dir), "--repo", "org/model", "--dry-run", endpoint=hub)
    assert proc.returncode == 1 and "outside the run folder" in proc.stderr, proc.stderr


def test_the_card_tells_ollama_users_of_an_off_default_to_send_think_false():
    """Ollama 0.12.4+ thinks when a request leaves `think` unset: a card whose default is 'off' must not promise
    Ollama users that default."""
    from tempa.merge.model_card import ModelCardConfig, render_model_card
    from tempa.sft.stage_api import RecipeInfo

    card = render_model_card(ModelCardConfig(), recipe=RecipeInfo("t", "tempa:tiny", "llama3_thinking"), stages={},
                             thinking_default="off")
    ollama = " ".join(line for line in card.splitlines() if "Ollama" in line)
    assert "falls back to the same default" not in ollama and "think: false" in ollama, ollama
    # llama-server thinks unless started with --reasoning off, whatever the template's default (llama.cpp's source)
    assert "unless started with `--reasoning off`" in card


def test_a_push_without_a_token_is_refused_before_anything_goes_up(run_dir, hub, tmp_path):
    """No HF_TOKEN and no `hf auth login`: huggingface_hub would call the Hub anonymously and the Hub answer 401
    after the repo step; tempa says what is missing, in one line, before any call."""
    proc = tempa("push", str(run_dir), "--repo", "org/model", endpoint=hub, token=None,
                 hf_home=str(tmp_path / "no-login"))
    assert proc.returncode == 1, proc.stdout
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "HF_TOKEN" in err[0] and "hf auth login" in err[0], proc.stderr
    assert FakeHub.repos == [] and FakeHub.commits == []
    # a dry run needs no token
    assert tempa("push", str(run_dir), "--repo", "org/model", "--dry-run", endpoint=hub, token=None,
                 hf_home=str(tmp_path / "no-login")).returncode == 0


def test_the_repo_visibility_is_the_hubs_default_unless_private_is_asked(run_dir, hub):
    """Without --private the repo is created as the Hub decides (public, or private where the organisation's
    default is private): tempa passed private=False, which huggingface_hub sends as visibility "public"."""
    assert tempa("push", str(run_dir), "--repo", "org/model", endpoint=hub).returncode == 0
    assert "visibility" not in FakeHub.repos[-1] and "private" not in FakeHub.repos[-1], FakeHub.repos[-1]
    assert tempa("push", str(run_dir), "--repo", "org/secret", "--private", endpoint=hub).returncode == 0
    assert FakeHub.repos[-1].get("visibility") == "private" or FakeHub.repos[-1].get("private") is True


def test_private_is_refused_for_a_repo_that_exists_and_is_public(run_dir, hub):
    """--private cannot make an existing repo private (huggingface_hub ignores it then): the upload would be
    public although the user asked otherwise, so it is refused before the commit."""
    FakeHub.existing = {"org/model": False}
    proc = tempa("push", str(run_dir), "--repo", "org/model", "--private", endpoint=hub)
    assert proc.returncode == 1 and FakeHub.commits == [], proc.stdout
    err = [line for line in proc.stderr.splitlines() if "error" in line]  # besides httpx's request lines
    assert len(err) == 1 and "org/model" in err[0] and "public" in err[0] and "--private" in err[0], proc.stderr
    FakeHub.existing = {"org/model": True}
    assert tempa("push", str(run_dir), "--repo", "org/model", "--private", endpoint=hub).returncode == 0
    assert len(FakeHub.commits) == 1


def test_a_card_written_for_another_repo_is_refused_before_anything_goes_up(run_dir, hub):
    """A card baked with `model_card.model_id: org/model-v1` kept loading org/model-v1 in its usage snippet when the
    model went up to org/model-v2: users of v2 were shown how to load v1."""
    card = run_dir / "final" / "README.md"
    card.write_text(card.read_text().replace('model_id = "path/to/this/folder"', 'model_id = "org/model-v1"'))
    for extra in ((), ("--dry-run",)):
        proc = tempa("push", str(run_dir), "--repo", "org/model-v2", *extra, endpoint=hub)
        assert proc.returncode == 1 and FakeHub.commits == [] and FakeHub.repos == []
        assert ("model card's usage example loads org/model-v1 (model_card.model_id), not org/model-v2"
                in proc.stderr), proc.stderr
    assert tempa("push", str(run_dir), "--repo", "org/model-v1", endpoint=hub).returncode == 0


@pytest.mark.parametrize("repo", ["org/my model", "org/-model", "org/model..v2", "org/model.git", "org/" + "m" * 97,
                                  "org/modèle"])
def test_a_repo_id_the_hub_refuses_is_refused_before_anything_even_in_a_dry_run(run_dir, repo):
    """`--repo "org/my model" --dry-run` listed the files that "would go to org/my model"; the real push then failed
    in huggingface_hub's create_repo. The name is checked by huggingface_hub's own rules first, in one line."""
    from tempa.recipes.push import push
    from tempa.sft.stage_api import StageError

    with pytest.raises(StageError) as error:
        push(run_dir, repo, dry_run=True)
    message = str(error.value)
    assert message.startswith(f"--repo {repo!r} is not a Hugging Face repo id: ") and "\n" not in message
    assert push(run_dir, "my-org/model.v2_final", dry_run=True)[1] is None  # a valid id with every allowed character


def _truncate(path):
    data = path.read_bytes()
    path.unlink()  # the weights may be a hard link to another stage's: never cut that file
    path.write_bytes(data[: len(data) // 2])
    path.chmod(0o644)


def _shard(final):
    (final / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"model.norm.weight": "model.safetensors",
                                        "lm_head.weight": "model-00002-of-00002.safetensors"}}))
    (final / "model.safetensors.index.json").chmod(0o644)


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda final: (final / "tokenizer.json").unlink(), "tokenizer.json or tokenizer.model: missing"),
    (lambda final: (final / "chat_template.jinja").unlink(), "chat_template.jinja: missing"),
    (lambda final: (final / "generation_config.json").unlink(), "generation_config.json: missing"),
    (lambda final: (final / "README.md").unlink(), "README.md: missing"),
    (lambda final: _truncate(final / "model.safetensors"),
     "model.safetensors: not a whole safetensors file (Error while deserializing header: incomplete metadata"),
    (_shard, "model-00002-of-00002.safetensors: named by model.safetensors.index.json but missing"),
])
def test_a_final_folder_missing_what_a_user_needs_is_refused(run_dir, damage, problem):
    """A final folder without its tokenizer or chat template, or with weights cut short (a full disk, a copy
    interrupted) or a shard missing, went up as it was: the repo's model would not load, or would chat without the
    thinking template. Each is named, in one line, before anything goes up (a dry run is refused too)."""
    from tempa.recipes.push import push
    from tempa.sft.stage_api import StageError

    damage(run_dir / "final")
    with pytest.raises(StageError) as error:
        push(run_dir, "org/model", dry_run=True)
    message = str(error.value)
    assert "not publishable as it is: " in message and problem in message and "\n" not in message, message


def test_a_template_kept_in_tokenizer_config_counts_as_the_chat_template(run_dir):
    """Older writers keep the template inside tokenizer_config.json: that folder loads and chats the same."""
    from tempa.merge.publish import missing_parts

    final = run_dir / "final"
    config = json.loads((final / "tokenizer_config.json").read_text())
    (final / "tokenizer_config.json").write_text(json.dumps(
        {**config, "chat_template": (final / "chat_template.jinja").read_text()}))
    (final / "chat_template.jinja").unlink()
    assert missing_parts(final) == []


@pytest.mark.parametrize("exists", [False, True])
@pytest.mark.parametrize("status", [401, 403])
def test_a_token_the_hub_refuses_is_named_as_the_cause_and_never_printed(run_dir, hub, status, exists):
    """A wrong or read-only token stopped the push with "HfHubHTTPError: Client error '401 Unauthorized' for url
    .../api/repos/create": the cause in one line, with what to check, and the token nowhere in the output. On a repo
    that exists (a second push), huggingface_hub's create_repo reads it and passes; the refusal comes at the commit."""
    FakeHub.refuse = status
    if exists:
        FakeHub.existing["org/model"] = False
    token = "hf_" + "S3cret" * 6
    proc = tempa("push", str(run_dir), "--repo", "org/model", endpoint=hub, token=token)
    err = [line for line in proc.stderr.splitlines() if "tempa: error" in line]
    assert proc.returncode == 1 and len(err) == 1, proc.stderr
    assert f"refused to create or write org/model with your token (HTTP {status}: Invalid credentials" in err[0]
    assert "HF_TOKEN" in err[0] and "hf auth login" in err[0]
    assert token not in proc.stdout + proc.stderr and FakeHub.commits == []


@pytest.mark.parametrize("front, expected", [
    ("license: Llama 3.1 Community License", "license 'Llama 3.1 Community License' is not a licence id the Hub"),
    ("license: other", "license 'other' needs license_name"),
    ("license: [llama3.1, gemma]\nlanguage: [Japanese]", "language 'Japanese': expected an ISO 639-1 or 639-3 code"),
    ("license: [llama3.1\nlanguage: en", "its metadata is not YAML"),
])
def test_a_card_whose_metadata_the_hub_would_refuse_is_refused_before_anything_goes_up(run_dir, front, expected):
    """A card edited after its bake (or baked before the recipe's card was checked) whose metadata the Hub refuses
    went as far as the commit: the repo was made, and the Hub's "Invalid metadata in README.md" came back raw."""
    from tempa.recipes.push import push
    from tempa.sft.stage_api import StageError

    card = run_dir / "final" / "README.md"
    card.write_text(card.read_text().replace("license: apache-2.0\nlanguage: [id, en]", front, 1))
    with pytest.raises(StageError) as error:
        push(run_dir, "org/model", dry_run=True)
    message = str(error.value)
    assert expected in message and "README.md" in message and "\n" not in message


def test_a_refused_card_creates_no_repo(run_dir, hub):
    card = run_dir / "final" / "README.md"
    card.write_text(card.read_text().replace("license: apache-2.0", "license: apache2", 1))
    proc = tempa("push", str(run_dir), "--repo", "org/model", endpoint=hub)
    assert proc.returncode == 1 and "did you mean 'apache-2.0'?" in proc.stderr
    assert FakeHub.commits == [] and FakeHub.repos == [] and len(proc.stderr.strip().splitlines()) == 1


def test_gguf_with_no_gguf_exported_is_refused_naming_the_export(run_dir, capsys):
    """`push --gguf --dry-run` with no GGUF exported listed the model's files without a word of the GGUF it asked
    for."""
    from tempa.recipes.cli import main

    for name in ("t-q8_0.gguf", "t-q8_0.Modelfile"):
        (run_dir / "final" / name).unlink()
    assert main(["push", str(run_dir), "--repo", "org/model", "--gguf", "--dry-run"]) == 1
    pushed = capsys.readouterr()
    assert "dry run" not in pushed.out
    assert "--gguf uploads the GGUFs exported into it, and there is none" in pushed.err
    assert "(tempa export gguf " in pushed.err
    assert main(["push", str(run_dir), "--repo", "org/model", "--dry-run"]) == 0  # without --gguf it goes
