"""Hostile model files and campaign inputs (issue 29): the real CLI, bounded in time; each case is
one line and exit 2 (or an error record), never a hang, a MemoryError or a traceback."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

# ---------------------------------------------------------------- a lying checkpoint (finding 8)

HUGE = 2**70


def _lying_copy(src: Path, dest: Path, **changes) -> Path:
    """``src`` with its weights linked and its config.json changed."""
    dest.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.name != "config.json":
            (dest / f.name).symlink_to(f)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(changes)
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def _cli(*argv, timeout=90) -> tuple[int, str]:
    """The real CLI in its own process, so a hang fails the test instead of stalling the run."""
    try:
        p = subprocess.run([sys.executable, "-m", "userlm_local.cli", *map(str, argv)], capture_output=True, check=False,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{argv[0]} ran past {timeout} s")
    return p.returncode, p.stderr


def _one_line(rc: int, err: str, verb: str, *words) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"userlm-local {verb}: error:"), (rc, err[-2000:])
    for w in words:
        assert w in lines[0], lines[0]


LIES = {  # config.json change -> what the one line says
    "layers": ({"num_hidden_layers": 10**9}, "num_hidden_layers 1,000,000,000"),   # convert planned for minutes
    "vocab": ({"vocab_size": 10**12}, "vocab_size 1,000,000,000,000"),             # a MemoryError
    "context": ({"max_position_embeddings": 2**62}, "max_position_embeddings 4,611,686,018,427,387,904"),  # struct.error
    "dimension": ({"hidden_size": HUGE}, "hidden_size about 10^21"),
    "infinite": ({"intermediate_size": 1e400}, "intermediate_size must be a positive integer"),  # (JSON Infinity)
}


@pytest.mark.parametrize("lie", sorted(LIES))
@pytest.mark.parametrize("verb", ["convert", "info"])
def test_a_lying_config_is_one_line_before_anything_is_allocated(lie, verb, tiny_model, tmp_path):
    change, says = LIES[lie]
    src = _lying_copy(tiny_model, tmp_path / "m", **change)
    rc, err = _cli(verb, src, *(["--out", tmp_path / "o"] if verb == "convert" else []))
    _one_line(rc, err, verb, says)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("change, says", [
    ({"num_hidden_layers": 3}, "num_hidden_layers 3 does not match the 2 layers in the weights"),
    ({"vocab_size": 128300}, "vocab_size 128300 and hidden_size 256 do not match the weights' embedding"),
])
def test_info_does_not_report_a_config_that_does_not_describe_its_weights_as_healthy(change, says, tiny_model,
                                                                                      tmp_path):
    rc, err = _cli("info", _lying_copy(tiny_model, tmp_path / "m", **change))
    _one_line(rc, err, "info", says)


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json", "generation_config.json",
                                  "model.safetensors.index.json"])
def test_deeply_nested_json_is_one_line(name, tiny_model, tmp_path):
    src = _lying_copy(tiny_model, tmp_path / "m")
    (src / name).unlink(missing_ok=True)
    (src / name).write_text("[" * 100_000 + "]" * 100_000)
    for verb in ("convert", "info"):
        if verb == "info" and name == "model.safetensors.index.json":
            continue  # info reads no index
        rc, err = _cli(verb, src, *(["--out", tmp_path / "o"] if verb == "convert" else []))
        _one_line(rc, err, verb, name, "nested too deeply")


def test_a_safetensors_dimension_past_int64_is_one_line(tiny_model, tmp_path):
    """A header shape of [2**70, 1] with 4 bytes: int64 arithmetic overflowed (a traceback)."""
    src = _lying_copy(tiny_model, tmp_path / "m")
    header, data_start = _header(tiny_model / "model.safetensors")
    header["model.norm.weight"] = {**header["model.norm.weight"], "shape": [HUGE, 1]}
    head = json.dumps(header).encode()
    head += b" " * ((-len(head)) % 8)
    (src / "model.safetensors").unlink()
    with open(tiny_model / "model.safetensors", "rb") as f, open(src / "model.safetensors", "wb") as out:
        f.seek(data_start)
        out.write(struct.pack("<Q", len(head)) + head + f.read())
    rc, err = _cli("convert", src, "--out", tmp_path / "o")
    _one_line(rc, err, "convert", "model.norm.weight", "bytes for shape")


def _header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


# ---------------------------------------------------------------- the campaign's transcript (finding 6, medium)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _simulate(*args) -> int:
    from userlm_local.cli import main

    return main(["simulate", "--quiet", *map(str, args)])


@pytest.fixture
def intents(tmp_path):
    p = tmp_path / "intents.jsonl"
    p.write_text("".join(json.dumps({"id": f"i{n}", "intent": f"You are a user chatting with an assistant language "
                                                             f"model to plan garden bed number {n}."}) + "\n"
                         for n in range(3)))
    return p


def _garden(user, intents, out, *args) -> int:
    return _simulate("--user", user, "--assistant", f"script:{EXAMPLES / 'garden-replies.txt'}", "--intents", intents,
                     "--out", out, "--max-turns", 1, "--max-new-tokens", 6, *args)


def _with_errors(path: Path, ids: set[str]) -> None:
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for r in recs:
        if r["intent_id"] in ids:
            r.update(ended_by="error", error="HTTP 500")
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_retry_errors_writes_through_a_symlinked_out_and_keeps_the_lock(tiny_model, intents, tmp_path):
    """``--resume --retry-errors`` on a symbolic link replaced the link with a regular file (the target
    kept its error records); and the rewritten transcript, a new inode, was not locked."""
    from userlm_local.simulation.transcripts import TranscriptWriter
    from userlm_local.util.errors import UserError

    target = tmp_path / "data" / "t.jsonl"
    target.parent.mkdir()
    assert _garden(tiny_model, intents, target) == 0
    _with_errors(target, {"i1"})
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    # the rewrite happens when the transcript opens: the lock must hold on the new file
    with TranscriptWriter.open(link, "resume", retry_errors=True) as w:
        assert w.dropped == 1 and link.is_symlink()
        (tmp_path / "hard.jsonl").hardlink_to(target)  # made to the rewritten file, under another name
        with pytest.raises(UserError, match="another campaign is writing this file"):
            TranscriptWriter.open(tmp_path / "hard.jsonl", "resume")
    _with_errors(target, {"i2"})
    assert _garden(tiny_model, intents, link, "--resume", "--retry-errors") == 0
    assert link.is_symlink() and link.resolve() == target
    recs = [json.loads(line) for line in target.read_text().splitlines()]
    assert sorted(r["intent_id"] for r in recs) == ["i0", "i1", "i2"]
    assert all(r["ended_by"] != "error" for r in recs)


def test_info_and_convert_read_tiny_as_the_same_model(tmp_path, monkeypatch):
    """'info tiny' described the bundled tiny UserLM while 'convert tiny' took ./tiny (issue 29, low):
    with a directory of that name in the working directory they described two models."""
    pytest.importorskip("gguf")
    from userlm_local.defaults import tiny_user_model

    (tmp_path / "tiny").mkdir()  # a decoy: not a checkpoint
    monkeypatch.chdir(tmp_path)
    rc, out = _cli_out("info", "tiny", "--json")
    assert rc == 0 and Path(json.loads(out)["path"]).resolve() == tiny_user_model().resolve()
    rc, _ = _cli("convert", "tiny", "--out", tmp_path / "o", "--quiet", "--no-validate", timeout=300)
    assert rc == 0
    source = json.loads((tmp_path / "o" / "manifest.json").read_text())["source"]
    assert Path(source["path"]).resolve() == tiny_user_model().resolve()


def _cli_out(*argv, timeout=90) -> tuple[int, str]:
    p = subprocess.run([sys.executable, "-m", "userlm_local.cli", *map(str, argv)], capture_output=True, check=False,
                       text=True, timeout=timeout)
    return p.returncode, p.stdout


def test_chat_bytes_that_are_not_utf8_are_one_line_and_the_turns_so_far_are_kept(tmp_path):
    """A byte that is not UTF-8 in --intent or in a piped reply became a lone surrogate and a tokenizer
    TypeError traceback (issue 29's surrogate finding, in chat); the user's turn before it is kept."""
    base = [sys.executable, "-m", "userlm_local.cli", "chat", "tiny", "--max-turns", "2", "--max-new-tokens", "8"]
    p = subprocess.run([*map(os.fsencode, base), b"--intent", b"You are a user \xff planning a garden"],
                       capture_output=True, check=False, timeout=120)
    assert p.returncode == 2 and p.stderr.decode().strip() == "userlm-local chat: error: --intent is not valid UTF-8 text"
    out = tmp_path / "c.json"
    p = subprocess.run([*base, "--intent", "You are a user planning a garden", "--out", str(out)],
                       input=b"Fine \xff thanks\n", capture_output=True, check=False, timeout=120)
    err = p.stderr.decode(errors="replace").strip().splitlines()
    assert p.returncode == 2 and err == [f"wrote {out}",
                                         "userlm-local chat: error: the assistant's reply 1 is not valid UTF-8 text"], err
    assert [m["role"] for m in json.loads(out.read_text())] == ["system", "user"]


@pytest.mark.parametrize("shard", [5, None, "../model.safetensors", "/etc/passwd", "sub/model.safetensors"])
def test_a_shard_index_naming_anything_but_a_file_beside_it_is_one_line(shard, tiny_model, tmp_path):
    """weight_map values of another type were a TypeError traceback; a path elsewhere was opened."""
    src = _lying_copy(tiny_model, tmp_path / "m")
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"model.norm.weight": shard}}))
    rc, err = _cli("convert", src, "--out", tmp_path / "o")
    _one_line(rc, err, "convert", "model.safetensors.index.json")
    assert not (tmp_path / "o").exists()
