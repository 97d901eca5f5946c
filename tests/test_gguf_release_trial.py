"""A release manager's trial of `tempa export gguf` and `tempa push` on a run of the tiny model (sft-a, sft-b,
merge, bake): what push takes, where a re-quantised GGUF goes, what the GGUF and its Modelfile carry, what marks an
export complete, and what the files are called."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from stage_helpers import baked_final
from tempa.merge.publish import make_publishable
from tempa.recipes.cli import main
from tempa.sft.stage_api import StageError

CARD = """---
license: apache-2.0
language: [id, en]
---

# rel
"""


@pytest.fixture(scope="module")
def baked(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model baked, with the recipe's sampling defaults and licence (once: each test copies it)."""
    final = baked_final(tiny_model_dir, tmp_path_factory.mktemp("rel") / "final")
    generation = json.loads((final / "generation_config.json").read_text())  # the bake's: eos ids and all
    generation.update(temperature=0.6, top_p=0.9, do_sample=True)
    (final / "generation_config.json").write_text(json.dumps(generation))
    (final / "README.md").write_text(CARD)
    return final


def release_run(run: Path, baked: Path, *, name: str = "rel") -> Path:
    """A finished run of recipe ``name`` (stages sft-a, sft-b, bake) as the runner leaves it, in ``run``."""
    final = run / "bake" / "final"
    shutil.copytree(baked, final)
    make_publishable(final)
    stages = [{"name": "sft-a", "kind": "sft"}, {"name": "sft-b", "kind": "sft"}, {"name": "bake", "kind": "bake"}]
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump({"name": name, "stages": stages}))
    for stage in stages:
        folder = run / stage["name"]
        folder.mkdir(exist_ok=True)
        (folder / "manifest.json").write_text(json.dumps(
            {"name": stage["name"], "kind": stage["kind"], "fingerprint": "f", "status": "done", "started_at": 0}))
        (folder / "DONE").write_text(json.dumps({"fingerprint": "f"}))
    (run / "final").symlink_to(final)
    return run


def test_push_refuses_a_run_whose_stage_folders_were_deleted_as_export_warns_of_it(baked, tmp_path, capsys):
    run = release_run(tmp_path / "runs" / "rel", baked)
    assert main(["push", str(run), "--repo", "org/x", "--dry-run"]) == 0  # whole, it goes
    capsys.readouterr()
    shutil.rmtree(run / "sft-a")
    shutil.rmtree(run / "sft-b")

    assert main(["push", str(run), "--repo", "org/x", "--dry-run"]) == 1
    pushed = capsys.readouterr()
    assert "dry run" not in pushed.out
    assert pushed.err.strip() == pushed.err.strip().splitlines()[0]
    assert "not every stage is complete and current: sft-a (pending), sft-b (pending)" in pushed.err

    assert main(["export", "gguf", str(run), "--out", str(tmp_path / "x.gguf")]) == 0
    assert "not every stage is complete and current: sft-a (pending), sft-b (pending)" in capsys.readouterr().err


def test_a_gguf_is_requantised_into_a_folder_that_does_not_exist_yet(baked, tmp_path, capsys):
    from tempa.merge.gguf_export import gguf_tensor_types

    f16 = tmp_path / "final" / "rel-f16.gguf"
    assert main(["export", "gguf", str(baked), "--out", str(f16)]) == 0
    out = tmp_path / "rel" / "requant" / "rel-q8.gguf"
    assert main(["export", "gguf", str(f16), "--type", "q8_0", "--out", str(out)]) == 0, capsys.readouterr().err
    assert "Q8_0" in gguf_tensor_types(out)
    assert "\nFROM ./rel-q8.gguf\n" in (out.parent / "rel-q8.Modelfile").read_text()
    assert sorted(path.name for path in out.parent.iterdir()) == ["rel-q8.Modelfile", "rel-q8.gguf"]


def test_the_gguf_records_the_sampling_defaults_and_licence_and_a_requantised_modelfile_keeps_them(baked, tmp_path):
    from gguf import GGUFReader

    f16 = tmp_path / "rel-f16.gguf"
    assert main(["export", "gguf", str(baked), "--out", str(f16)]) == 0
    fields = {name: field.contents() for name, field in GGUFReader(str(f16)).fields.items()}
    assert fields["general.sampling.temp"] == pytest.approx(0.6)
    assert fields["general.sampling.top_p"] == pytest.approx(0.9)
    assert fields["general.license"] == "apache-2.0"

    assert main(["export", "gguf", str(f16), "--type", "q8_0"]) == 0
    ours = (tmp_path / "rel-f16.Modelfile").read_text().splitlines()
    requantised = (tmp_path / "rel-f16-q8_0.Modelfile").read_text().splitlines()
    assert requantised[1] == "FROM ./rel-f16-q8_0.gguf"
    # everything but the file it names: the template, the stops (both eos ids of generation_config.json), the
    # sampling defaults and the licence
    assert sorted(requantised[:1] + requantised[2:]) == sorted(ours[:1] + ours[2:])
    assert {'PARAMETER stop "<|end_of_text|>"', 'PARAMETER stop "<|eot_id|>"', "PARAMETER temperature 0.6",
            "PARAMETER top_p 0.9", 'LICENSE """apache-2.0"""'} <= set(requantised)


@pytest.mark.parametrize("file_type", ["f16", "q8_0", "q4_0", "requantised"])
def test_the_modelfile_is_written_before_the_gguf_is_renamed_into_place(baked, tmp_path, monkeypatch, file_type):
    """The GGUF's appearance marks the export complete: a kill -9 at any point leaves no GGUF without its Modelfile."""
    import os

    from tempa.merge.gguf_export import export_gguf, modelfile_for

    source = None
    if file_type == "requantised":
        source = export_gguf(baked, tmp_path / "src" / "rel-f16.gguf").gguf_path
    real_replace = os.replace
    seen: dict[str, bool] = {}

    def replace(src, dst):  # observes each rename, then makes it
        dst = Path(dst)
        if dst.suffix == ".gguf" and not dst.name.startswith(".") and dst.parent == tmp_path:
            seen[dst.name] = modelfile_for(dst).is_file()
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "rel-x.gguf"
    if source is None:
        export_gguf(baked, out, file_type=file_type)
    else:
        export_gguf(source, out, file_type="q8_0")
    assert seen == {"rel-x.gguf": True}
    assert "\nFROM ./rel-x.gguf\n" in (tmp_path / "rel-x.Modelfile").read_text()


def test_push_gguf_refuses_a_gguf_without_its_modelfile_and_a_modelfile_without_its_gguf(baked, tmp_path, capsys):
    run = release_run(tmp_path / "runs" / "rel", baked)
    final = run / "bake" / "final"
    assert main(["export", "gguf", str(run), "--type", "q8_0"]) == 0
    gguf, modelfile = final / "rel-q8_0.gguf", final / "rel-q8_0.Modelfile"
    assert main(["push", str(run), "--repo", "org/x", "--gguf", "--dry-run"]) == 0
    assert f"  {gguf.name}  (" in capsys.readouterr().out

    kept = modelfile.read_text()
    modelfile.unlink()  # a kill -9 of an older tempa between the GGUF's rename and its Modelfile
    assert main(["push", str(run), "--repo", "org/x", "--gguf", "--dry-run"]) == 1
    said = capsys.readouterr()
    assert "dry run" not in said.out and len(said.err.strip().splitlines()) == 1
    assert "rel-q8_0.gguf: its Modelfile rel-q8_0.Modelfile is missing" in said.err
    assert main(["push", str(run), "--repo", "org/x", "--dry-run"]) == 0  # without --gguf no GGUF goes up
    capsys.readouterr()

    modelfile.write_text(kept)
    gguf.unlink()  # a kill -9 between the Modelfile and the GGUF's rename
    assert main(["push", str(run), "--repo", "org/x", "--gguf", "--dry-run"]) == 1
    assert "rel-q8_0.Modelfile: its GGUF rel-q8_0.gguf is missing" in capsys.readouterr().err


def test_the_gguf_is_named_after_the_recipe_not_the_run_folder_and_the_printed_command_is_quoted(
        baked, tmp_path, capsys):
    from gguf import GGUFReader

    run = release_run(tmp_path / "my models" / "run b", baked, name="bakeonly")
    assert main(["export", "gguf", str(run), "--type", "q8_0"]) == 0
    final = run / "bake" / "final"
    gguf, modelfile = final / "bakeonly-q8_0.gguf", final / "bakeonly-q8_0.Modelfile"
    assert gguf.is_file() and not list(final.glob("run b*"))
    assert GGUFReader(str(gguf)).fields["general.name"].contents() == "bakeonly"
    assert modelfile.read_text().splitlines()[1] == "FROM ./bakeonly-q8_0.gguf"
    printed = capsys.readouterr().out
    command = next(line for line in printed.splitlines() if "ollama create" in line)
    assert shlex.split(command.split("(", 1)[1].rstrip(")"))[-1] == str(modelfile)  # one shell word, the whole path
    assert shlex.split(command.split("(", 1)[1])[:3] == ["ollama", "create", "bakeonly"]  # the GGUF's general.name
    # a stage's own final model: <recipe>-<stage>
    from tempa.merge.gguf_export import export_name

    (run / "sft-a" / "final").mkdir()
    assert export_name(run / "sft-a" / "final") == "bakeonly-sft-a"


def test_a_re_export_with_another_modelfile_never_pairs_the_old_gguf_with_the_new_modelfile(tmp_path):
    """The Modelfile was written in place before the new GGUF existed: a kill in between left the earlier GGUF under
    the new (or a half-written) Modelfile, an export `tempa push --gguf` took as whole."""
    from tempa.merge.gguf_export import modelfile_first, modelfile_for

    gguf = tmp_path / "rel-q8_0.gguf"
    gguf.write_bytes(b"old gguf")
    modelfile_for(gguf).write_text("FROM ./rel-q8_0.gguf\nPARAMETER temperature 0.6\n")
    with pytest.raises(RuntimeError), modelfile_first(gguf, "FROM ./rel-q8_0.gguf\nPARAMETER temperature 0.2\n"):
        # where a kill would land: the new Modelfile, and no GGUF beside it
        assert not gguf.exists() and "0.2" in modelfile_for(gguf).read_text()
        raise RuntimeError("the quantiser failed")
    assert gguf.read_bytes() == b"old gguf" and "0.6" in modelfile_for(gguf).read_text()  # the earlier export whole
    with modelfile_first(gguf, "FROM ./rel-q8_0.gguf\nPARAMETER temperature 0.2\n"):
        gguf.write_bytes(b"new gguf")
    assert gguf.read_bytes() == b"new gguf" and "0.2" in modelfile_for(gguf).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel-q8_0.Modelfile", "rel-q8_0.gguf"]


def test_a_gguf_is_not_quantised_onto_itself(baked, tmp_path):
    from tempa.merge.gguf_export import export_gguf

    source = export_gguf(baked, tmp_path / "rel-f16.gguf").gguf_path
    written = source.read_bytes()
    with pytest.raises(StageError, match="that is the input file"):
        export_gguf(source, source, file_type="q8_0")
    assert source.read_bytes() == written


def _stage_record(run: Path, name: str, **fields) -> None:
    manifest = run / name / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), **fields}))


@pytest.mark.parametrize("given", ["bake/final", "bake/final/../final", "bake"])
@pytest.mark.parametrize("status", ["running", "failed", "done"])
def test_export_of_a_stage_folder_whose_stage_did_not_finish_is_refused(baked, tmp_path, capsys, given, status):
    """An interrupted stage's folder (no DONE: a kill before its marker, or a stage that failed) exported with exit 0
    (release trial: `tempa export gguf runs/demo/merge/final`)."""
    run = release_run(tmp_path / "runs" / "rel", baked)
    _stage_record(run, "bake", status=status)
    (run / "bake" / "DONE").unlink()
    out = tmp_path / "x.gguf"

    assert main(["export", "gguf", str(run / given), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "stage 'bake'" in err and "not complete" in err and "tempa run" in err
    assert not out.exists()


def test_export_of_a_stage_folder_built_on_a_stage_that_ran_again_warns_as_the_runs_final_does(baked, tmp_path, capsys):
    """`tempa export gguf runs/demo/bake/final` (the path the export prints in its `ollama create` line) exported the
    old model without the warning that `runs/demo/final` gives."""
    run = release_run(tmp_path / "runs" / "rel", baked)
    _stage_record(run, "sft-b", run_id="new")
    _stage_record(run, "bake", inputs={"sft-b": "old"})

    assert main(["export", "gguf", str(run / "bake" / "final"), "--out", str(tmp_path / "x.gguf")]) == 0
    err = capsys.readouterr().err
    assert f"tempa: warning: {run / 'bake' / 'final'}: stage 'bake' is complete but not current" in err
    assert "'sft-b' ran again since" in err
    # a stage that is complete and current is exported without a word, whatever a later stage's state
    assert main(["export", "gguf", str(run / "sft-b"), "--out", str(tmp_path / "y.gguf")]) == 1
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("given", ["bake/final", "bake", "final"])
def test_push_of_a_folder_inside_a_run_names_the_run_to_give(baked, tmp_path, capsys, given):
    run = release_run(tmp_path / "runs" / "rel", baked)
    _stage_record(run, "bake", status="running")
    (run / "bake" / "DONE").unlink()

    assert main(["push", str(run / given), "--repo", "org/x", "--dry-run"]) == 1
    pushed = capsys.readouterr()
    assert "dry run" not in pushed.out
    assert pushed.err.strip() == (f"tempa: error: {run / given}: not a tempa run directory (no recipe.resolved.yaml); "
                                  f"it lies inside the run {run}: give that")
