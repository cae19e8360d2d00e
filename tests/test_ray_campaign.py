"""``simulate --ray``: a campaign over a local Ray instance (``ray.init(num_cpus=2)``), the one
writer in this process; an actor killed mid-run has its conversation rerun elsewhere, and every
conversation is in the transcript exactly once."""

from __future__ import annotations

import argparse
import json

import pytest

ray = pytest.importorskip("ray")

from userlm_local import cli  # noqa: E402
from userlm_local.commands import simulate  # noqa: E402
from userlm_local.simulation.intent_sets import load_intents  # noqa: E402
from userlm_local.simulation.ray_campaign import RayCampaign  # noqa: E402
from userlm_local.simulation.transcripts import TranscriptWriter  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def intents_file(tmp_path, n: int):
    p = tmp_path / "intents.txt"
    p.write_text("".join(f"You want help with task number {i}, step by step.\n" for i in range(n)))
    return p


def args_for(*argv: str):
    p = argparse.ArgumentParser()
    simulate.add_arguments(p)
    return p.parse_args(list(argv))


def test_an_actor_killed_mid_run_loses_nothing(local_ray, tmp_path):
    out = tmp_path / "t.jsonl"
    args = args_for("--user", "tiny", "--assistant", "tiny", "--intents", str(intents_file(tmp_path, 6)),
                    "--max-turns", "2", "--trials", "1", "--out", str(out))
    killed = []

    def kill_one(campaign: RayCampaign, rec: dict) -> None:
        if not killed:  # after the first record: kill an actor that is working on another conversation
            victim = campaign.actors[0]
            killed.append(ray.get(victim.pid.remote()))
            ray.kill(victim, no_restart=True)

    camp = RayCampaign(simulate.campaign_spec(args, {"threads": 1}), actors=2, after_record=kill_one)
    with TranscriptWriter.open(out, "new") as w:
        stats = camp.run(load_intents(str(args.intents), None), w)
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert killed and camp.restarts >= 1
    assert len(ids) == 6 and len(set(ids)) == 6 and stats.done == 6
    assert all(json.loads(line)["error"] is None for line in out.read_text().splitlines())


def test_simulate_ray_then_resume(local_ray, tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    intents = intents_file(tmp_path, 3)
    base = ["simulate", "--user", "tiny", "--assistant", "tiny", "--intents", str(intents), "--max-turns", "2",
            "--out", str(out), "--quiet", "--ray"]
    assert cli.main(base) == 0, capsys.readouterr().err
    first = out.read_text()
    assert cli.main(base + ["--trials", "2", "--resume"]) == 0
    lines = out.read_text().splitlines()
    assert out.read_text().startswith(first) and len(lines) == 6
    assert len({json.loads(line)["id"] for line in lines}) == 6


def test_a_configuration_error_is_one_line_before_any_conversation(local_ray, tmp_path, capsys):
    """An assistant nobody answers at: the actors' start fails alike on every node, so it is the
    user's error, said once, not a lost node replaced nine times."""
    out = tmp_path / "t.jsonl"
    rc = cli.main(["simulate", "--user", "tiny", "--assistant", "http://127.0.0.1:9/v1", "--intents",
                   str(intents_file(tmp_path, 2)), "--out", str(out), "--quiet", "--ray", "--ray-actors", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach the endpoint" in err and "actor died" not in err, err
    assert not out.exists()


def test_resume_with_other_settings_warns(local_ray, tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    base = ["simulate", "--user", "tiny", "--assistant", "tiny", "--intents", str(intents_file(tmp_path, 2)),
            "--max-turns", "2", "--out", str(out), "--quiet", "--ray", "--ray-actors", "1"]
    assert cli.main(base) == 0
    capsys.readouterr()
    assert cli.main(base + ["--max-turns", "3", "--trials", "2", "--resume"]) == 0
    assert "holds records made with another user model, assistant or settings" in capsys.readouterr().err


def test_eval_ray_matches_the_local_run_and_resumes(local_ray, tmp_path, capsys):
    """eval --ray: the conversations (graded in the actors' sandboxes) and the single-turn baseline
    on actors; the same transcripts and exact scores as the local run (the tiny UserLM's coupled
    sampling is keyed per conversation), and --resume runs nothing again."""
    from test_eval import ADD, APPLES, MUL, write_jsonl

    tasks = write_jsonl(tmp_path / "tasks.jsonl", [ADD, MUL, APPLES])
    script = tmp_path / "script.json"
    reply = ("```python\ndef add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return a + b\n```\n"
             "And Tom has 7 apples.")
    script.write_text(json.dumps([reply]))
    base = ["eval", "--quiet", "--user", "tiny", "--assistant", f"script:{script}", "--tasks", str(tasks),
            "--trials", "2", "--max-turns", "2"]
    outs = {"local": tmp_path / "local", "ray": tmp_path / "ray"}
    assert cli.main(base + ["--out", str(outs["local"])]) == 0
    assert cli.main(base + ["--out", str(outs["ray"]), "--ray", "--ray-actors", "2"]) == 0, capsys.readouterr().err

    def read(out, name):
        return {r["id"]: r for r in map(json.loads, (out / name).read_text().splitlines())}

    for name in ("transcripts.jsonl", "single-turn.jsonl"):
        local, remote = read(outs["local"], name), read(outs["ray"], name)
        assert sorted(local) == sorted(remote) and len(local) == 6
        for k in local:
            assert local[k]["messages"] == remote[k]["messages"] and local[k]["ended_by"] == remote[k]["ended_by"]
            assert local[k]["eval"]["success"] == remote[k]["eval"]["success"]
    scores = {k: json.loads((v / "eval.json").read_text())["scores"] for k, v in outs.items()}

    def untimed(d: dict) -> dict:
        return {k: v for k, v in d.items() if not k.startswith("seconds")}

    for key in ("score", "single_turn", "drop", "ended_by", "turns_to_success"):
        assert untimed(scores["ray"][key]) == untimed(scores["local"][key]), key
    assert scores["ray"]["score"]["value"] == pytest.approx(200 / 3, abs=1e-3)
    lines = (outs["ray"] / "transcripts.jsonl").read_text()
    assert cli.main(base + ["--out", str(outs["ray"]), "--ray", "--ray-actors", "1", "--resume"]) == 0
    assert (outs["ray"] / "transcripts.jsonl").read_text() == lines
