"""The bundled tiny models are the defaults: every verb works with no model path."""

import json

from userlm_local.cli import main
from userlm_local.models import default_assistant_model, default_user_model, inspect_model


def test_bundled_models_are_userlm_and_assistant():
    user = inspect_model(default_user_model())
    assert user.is_userlm and user.template_is_userlm and not user.warnings
    assistant = inspect_model(default_assistant_model(), allow_non_userlm=True)
    assert not assistant.is_userlm
    for m in (default_user_model(), default_assistant_model()):
        assert sum(f.stat().st_size for f in m.iterdir()) < 15 * 2**20


def test_info_and_chat_default_to_the_bundled_userlm(capsys, tmp_path):
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == str(default_user_model())
    replies = tmp_path / "r.txt"
    replies.write_text("Sure! What kind of garden?\nTomatoes like sun.\n")
    assert main(["chat", "--intent", "You are a user chatting with an assistant language model to plan a garden.",
                 "--assistant-file", str(replies), "--seed", "1"]) == 0
    assert "user> " in capsys.readouterr().out


def test_simulate_with_no_arguments_runs_the_main_job(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", "--quiet", "--max-turns", "3"]) == 0
    out = capsys.readouterr().out
    (path,) = tmp_path.glob("transcripts-*.jsonl")
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(recs) == 5 and f"transcripts: {path.name}" in out
    for r in recs:
        assert r["assistant"]["kind"] == "local" and r["user_model"]["backend"] == "torch"
        assert r["ended_by"] in ("user", "max_turns")
        assert r["messages"][0]["role"] == "system"
        assert all(m["role"] == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(r["messages"][1:]))
    # a second run does not silently overwrite
    assert main(["simulate", "--quiet", "--out", str(path)]) == 2
    assert "--resume" in capsys.readouterr().err
