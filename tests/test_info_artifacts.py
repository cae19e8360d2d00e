"""``info`` and loading on converted artifacts (ONNX directories, GGUF files) against the manifest
beside them: a type that failed its conversion-time validation is reported (and not picked from an
output directory while another passed), damaged files are one line and exit 2, a directory copied
away from its manifest reports what it holds (never a false 0/None), an output directory is
described the same way for both formats, and ``convert --to onnx`` refusing for disk space leaves
nothing behind."""

import json
import os
import shutil
import subprocess

import pytest

og = pytest.importorskip("onnxruntime_genai")

from userlm_local.cli import main  # noqa: E402

INTENT = "You are a user chatting with an assistant language model to choose a first road bike."


pytestmark = pytest.mark.usefixtures("onnx_home")


@pytest.fixture(scope="module")
def onnx_out(tiny_model, tmp_path_factory):
    """The random-weight fixture as FP32 (passes its gate) and INT8 (fails it: KLD over 1e-2)."""
    from userlm_local.convert.onnx_pipeline import to_onnx

    out = tmp_path_factory.mktemp("onnx") / "out"
    result = to_onnx(tiny_model, out, "fp32,int8", progress=False, log=lambda m: None)
    assert result.failed == ["tiny-userlm-v1-INT8"]
    return out


def copy_out(onnx_out, tmp_path):
    dest = tmp_path / "out"
    shutil.copytree(onnx_out, dest)
    return dest


def run(capsys, argv):
    rc = main(argv)
    got = capsys.readouterr()
    return rc, got.out, got.err


# ---------------------------------------------------------------- 1. a failed validation is said

def test_info_reports_a_failed_validation_and_the_folder_prefers_a_passing_type(onnx_out, capsys):
    rc, out, _ = run(capsys, ["info", str(onnx_out / "tiny-userlm-v1-INT8")])
    assert rc == 0
    assert "validation   FAILED at convert time: logits: mean KLD" in out and "(gate 0.01)" in out
    assert "warning      this artifact failed its validation at convert time" in out
    rc, out, _ = run(capsys, ["info", str(onnx_out / "tiny-userlm-v1-INT8"), "--json"])
    art = json.loads(out)["artifact"]
    assert art["listed"] and art["passed"] is False and art["quant"] == "INT8"
    rc, out, _ = run(capsys, ["info", str(onnx_out / "tiny-userlm-v1-FP32")])
    assert "validation   passed" in out and "warning" not in out
    # the output directory: both listed, the passing one described (FP32 is also the higher precision,
    # so the order alone would pick it: the pick is checked below on a folder where it decides)
    rc, out, _ = run(capsys, ["info", str(onnx_out)])
    assert rc == 0 and "tiny-userlm-v1-INT8 (INT8, validation FAILED)" in out
    assert "tiny-userlm-v1-FP32 (FP32, passed)" in out and "showing      tiny-userlm-v1-FP32" in out


def test_the_folder_skips_a_failed_type_even_of_higher_precision(onnx_out, tmp_path, capsys):
    """FP32 marked failed (as a manifest says it when FP32's gate fails): INT8 is taken, and said why;
    when every type failed, the pick says so."""
    out = copy_out(onnx_out, tmp_path)
    m = json.loads((out / "manifest.json").read_text())
    fp32 = next(a for a in m["artifacts"] if a["quant"] == "FP32")
    int8 = next(a for a in m["artifacts"] if a["quant"] == "INT8")
    fp32["validation"]["passed"] = False
    fp32["validation"]["logits"]["ok"] = False
    int8["validation"] = "skipped: --no-validate"
    (out / "manifest.json").write_text(json.dumps(m))
    rc, text, _ = run(capsys, ["info", str(out)])
    assert "showing      tiny-userlm-v1-INT8: the highest-precision artifact that passed its validation" in text
    int8["validation"] = {"passed": False, "load": {"ok": False, "error": "boom"}}
    (out / "manifest.json").write_text(json.dumps(m))
    rc, text, _ = run(capsys, ["info", str(out)])
    assert "showing      tiny-userlm-v1-FP32: no artifact in the manifest passed its validation" in text
    from userlm_local.runtime.backends.onnx import model_dir

    assert model_dir(out)[0].name == "tiny-userlm-v1-FP32"  # loaders pick the same


def test_loading_a_failed_type_warns_once(onnx_out, tmp_path, capsys):
    replies = tmp_path / "r.txt"
    replies.write_text("What is your budget?\nTry a 54 cm frame.\n")
    path = str(onnx_out / "tiny-userlm-v1-INT8")
    rc, _, err = run(capsys, ["simulate", "--user", path, "--assistant", f"script:{replies}", "--limit", "2",
                              "--max-turns", "1", "--max-new-tokens", "4", "--out", str(tmp_path / "t.jsonl"),
                              "--quiet"])
    assert rc == 0
    lines = [line for line in err.splitlines() if "failed" in line.lower() or "FAILED" in line]
    assert len(lines) == 1 and lines[0].startswith(f"warning: {path}: FAILED at convert time: logits")
    from userlm_local.runtime.backends.onnx import load

    load(onnx_out / "tiny-userlm-v1-FP32", n_ctx=64)
    assert "warning" not in capsys.readouterr().err


# ---------------------------------------------------------------- 2. damaged files are one line

def test_damaged_onnx_files_are_one_line_and_exit_2(onnx_out, tmp_path, capsys):
    out = copy_out(onnx_out, tmp_path)
    d = out / "tiny-userlm-v1-INT8"
    data = d / "model.onnx.data"
    size = data.stat().st_size
    os.truncate(data, 5_000_000)
    replies = tmp_path / "r.txt"
    replies.write_text("What is your budget?\n")
    for argv in (["info", str(d)], ["info", str(out / "tiny-userlm-v1-INT8"), "--json"],
                 ["chat", str(d), "--intent", INTENT, "--assistant-file", str(replies)]):
        rc, text, err = run(capsys, argv)
        assert rc == 2 and text == "", argv
        assert len(err.strip().splitlines()) == 1
        assert f"{data}: damaged: truncated: the graph's weights end at byte {size} but the file has 5000000" in err
    # copied away from its manifest: the graph alone still finds it
    alone = tmp_path / "alone"
    shutil.copytree(d, alone)
    rc, _, err = run(capsys, ["info", str(alone)])
    assert rc == 2 and "damaged: truncated" in err
    (d / "model.onnx").unlink()
    rc, _, err = run(capsys, ["info", str(d)])
    assert rc == 2 and "damaged: model.onnx missing" in err
    # sizes that disagree with the manifest (weights intact, another file changed)
    f = out / "tiny-userlm-v1-FP32" / "generation_config.json"
    f.write_text(f.read_text() + " ")
    rc, _, err = run(capsys, ["info", str(out / "tiny-userlm-v1-FP32")])
    assert rc == 2 and "damaged: " in err and "recorded" in err
    # --verify: a changed byte of the same size shows only in the sha256
    g = out / "tiny-userlm-v1-FP32" / "tokenizer_config.json"
    f.write_text(f.read_text()[:-1])
    text = g.read_bytes()
    g.write_bytes(text[:10] + (b"x" if text[10:11] != b"x" else b"y") + text[11:])
    assert main(["info", str(out / "tiny-userlm-v1-FP32")]) == 0
    capsys.readouterr()
    rc, _, err = run(capsys, ["info", str(out / "tiny-userlm-v1-FP32"), "--verify"])
    assert rc == 2 and "the sha256 of tokenizer_config.json differs" in err


# ---------------------------------------------------------------- 3. a directory away from its manifest

def test_a_copied_directory_reports_what_it_holds(onnx_out, tmp_path, capsys):
    for quant in ("INT8", "FP32"):
        alone = tmp_path / quant
        shutil.copytree(onnx_out / f"tiny-userlm-v1-{quant}", alone)
        rc, out, _ = run(capsys, ["info", str(alone), "--json"])
        info = json.loads(out)
        assert info["intermediate_size"] == 768 and info["dtype"] == quant  # from the graph
        assert info["rope"] == {} and info["artifact"]["manifest"] is None
        rc, out, _ = run(capsys, ["info", str(alone)])
        assert "ffn 768" in out and "rope unknown" in out and "None" not in out and "ffn 0" not in out
        assert "no manifest.json beside it" in out


def test_a_directory_the_manifest_does_not_list_says_so(onnx_out, tmp_path, capsys):
    out = copy_out(onnx_out, tmp_path)
    shutil.copytree(out / "tiny-userlm-v1-INT8", out / "older-INT8")  # as left by convert --force
    rc, text, _ = run(capsys, ["info", str(out / "older-INT8")])
    assert rc == 0 and f"{out / 'manifest.json'} does not list it" in text
    assert "no manifest.json beside" not in text and "ffn 768" in text and "validation   " not in text


# ---------------------------------------------------------------- 5. a GGUF output directory

def test_gguf_output_directory_and_its_manifest(gguf_files, tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    out = tmp_path / "g"
    shutil.copytree(gguf_files["f16"].parent, out)
    rc, text, _ = run(capsys, ["info", str(out)])
    assert rc == 0 and "3 in" in text and "showing      tiny-userlm-v1-F16.gguf: the highest-precision artifact" in text
    assert "validation   passed" in text
    m = json.loads((out / "manifest.json").read_text())
    f16 = next(a for a in m["artifacts"] if a["quant"] == "F16")
    f16["validation"]["passed"] = False
    f16["validation"]["logits"] = {"mean_kld": 0.5, "top1_agreement": 0.5, "ok": False,
                                   "gates": {"mean_kld_max": 0.01, "top1_min": 0.95}}
    (out / "manifest.json").write_text(json.dumps(m))
    rc, text, _ = run(capsys, ["info", str(out)])
    assert "showing      tiny-userlm-v1-Q8_0.gguf: the highest-precision artifact that passed" in text
    rc, text, _ = run(capsys, ["info", str(out / "tiny-userlm-v1-F16.gguf")])
    assert "validation   FAILED at convert time: logits: mean KLD 0.5 (gate 0.01), top-1 50.0% (gate 95%)" in text
    assert "warning      this artifact failed its validation" in text
    q8 = out / "tiny-userlm-v1-Q8_0.gguf"
    os.truncate(q8, 5_000_000)
    rc, _, err = run(capsys, ["info", str(q8)])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "damaged: 5000000 bytes where" in err
    shutil.copy(out / "tiny-userlm-v1-Q4_K_M.gguf", out / "stray.gguf")
    rc, text, _ = run(capsys, ["info", str(out / "stray.gguf")])
    assert rc == 0 and "does not list it" in text
    # loading, as simulate/chat/score do: the folder gives its best passing artifact (Q4_K_M now), a
    # failed one warns once, a truncated one is one line before llama.cpp sees it
    from userlm_local.runtime.backends import load_backend
    from userlm_local.util.errors import UserError

    with pytest.raises(UserError, match="damaged: 5000000 bytes where"):
        load_backend(q8, n_ctx=64)
    q8.unlink()  # gone: the folder's best passing artifact is Q4_K_M
    assert os.path.basename(load_backend(out, n_ctx=64).path) == "tiny-userlm-v1-Q4_K_M.gguf"
    capsys.readouterr()
    load_backend(out / "tiny-userlm-v1-F16.gguf", n_ctx=64)
    load_backend(out / "tiny-userlm-v1-F16.gguf", n_ctx=64)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "tiny-userlm-v1-F16.gguf" in err


# ---------------------------------------------------------------- 4. a refusal for disk space

def test_size_text():
    from userlm_local.convert.onnx_pipeline import size_text

    assert size_text(3 << 19) == "1.5 MiB" and size_text(5 << 30) == "5.0 GiB" and size_text(0) == "0.0 MiB"


def test_no_disk_space_is_said_in_mib_and_leaves_nothing(tiny_model, tmp_path, capsys):
    """On a real 2 MiB tmpfs (needs root to mount one; skipped elsewhere)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        rc, _, err = run(capsys, ["convert", str(tiny_model), "--to", "onnx", "--quant", "int8",
                                  "--out", str(mnt / "new" / "sub")])
        assert rc == 2 and "MiB needed, 2.0 MiB free" in err and "0.0 GiB" not in err
        assert list(mnt.iterdir()) == []  # the directories it made are gone
        (mnt / "mine").mkdir()
        rc, _, err = run(capsys, ["convert", str(tiny_model), "--to", "onnx", "--quant", "int8",
                                  "--out", str(mnt / "mine")])
        assert rc == 2 and (mnt / "mine").is_dir()  # one that was there stays
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
