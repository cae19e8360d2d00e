"""Bad input gives one line on stderr naming the problem and exit code 2, never a traceback."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from fixtures import llama31_tokenizer_files
from userlm_local.cli import main

INTENT = "You are a user chatting with an assistant language model to fix a flat bicycle tyre."


def model_variant(src, dest, *, tokenizer_from=None, config=None, weights="model.safetensors"):
    dest.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        origin = (tokenizer_from or src) / name
        if origin.exists():
            shutil.copy(origin, dest / name)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(config or {})
    (dest / "config.json").write_text(json.dumps(cfg))
    if weights:
        os.symlink(src / "model.safetensors", dest / weights)
    return dest


def replies(tmp_path):
    p = tmp_path / "replies.txt"
    p.write_text("Sure, take the wheel off first.\n")
    return p


def one_line_error(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert needle in err, err
    assert "Traceback" not in err


def test_missing_path(capsys, tmp_path):
    one_line_error(capsys, ["info", str(tmp_path / "nope")], "no such file or directory")


def test_not_a_llama_checkpoint(capsys, tmp_path, tiny_model):
    m = model_variant(tiny_model, tmp_path / "m", config={"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    one_line_error(capsys, ["info", str(m)], "not a Llama checkpoint")


def test_not_a_model_dir(capsys, tmp_path):
    one_line_error(capsys, ["info", str(tmp_path)], "no config.json")


def test_no_endconversation_token(capsys, tmp_path, tiny_model):
    m = model_variant(tiny_model, tmp_path / "m", tokenizer_from=llama31_tokenizer_files())
    one_line_error(capsys, ["info", str(m)], "not a UserLM")
    assert main(["info", str(m), "--allow-non-userlm"]) == 0
    assert "NO: no <|endconversation|>" in capsys.readouterr().out


def test_pickled_weights_refused(capsys, tmp_path, tiny_model):
    m = model_variant(tiny_model, tmp_path / "m", weights="pytorch_model.bin")
    one_line_error(capsys, ["info", str(m)], "--allow-pickle")
    one_line_error(capsys, ["chat", str(m), "--intent", INTENT, "--assistant-file", str(replies(tmp_path))], "pickled")


def test_truncated_weights(capsys, tmp_path, tiny_model):
    m = model_variant(tiny_model, tmp_path / "m", weights=None)
    with open(tiny_model / "model.safetensors", "rb") as f:
        (m / "model.safetensors").write_bytes(f.read(1 << 20))
    one_line_error(capsys, ["chat", str(m), "--intent", INTENT, "--assistant-file", str(replies(tmp_path))],
                   "truncated")  # named from the header before torch reads a byte
    one_line_error(capsys, ["info", str(m)], "truncated")  # info said it was healthy


def test_empty_script(capsys, tmp_path, tiny_model):
    one_line_error(capsys, ["chat", str(tiny_model), "--intent", INTENT, "--assistant-file", os.devnull],
                   "no replies in the script")


def test_empty_intent(capsys, tiny_model):
    one_line_error(capsys, ["chat", str(tiny_model), "--intent", "  "], "intent is empty")


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    ('{"messages": 3}', "expected a JSON list"),
    ('[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]', "message 1: cannot add a user turn"),
    ('[{"role": "system", "content": "x"}, {"role": "assistant", "content": "b"}]', "message 1: cannot add an assistant turn"),
    ('[{"role": "system", "content": "x"}, {"role": "user", "content": "b"}]', "the next turn must be the user's"),
    # issue 29: a tokenizer TypeError and a RecursionError
    ('[{"role": "system", "content": "You are a user \\udc80"}]', "message 1 holds a lone surrogate"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON (nested too deeply)"),
])
def test_malformed_conversation_file(capsys, tmp_path, tiny_model, content, needle):
    path = tmp_path / "c.json"
    path.write_text(content)
    one_line_error(capsys, ["prompt", str(tiny_model), "--conversation", str(path)], needle)


def test_missing_conversation_file(capsys, tmp_path, tiny_model):
    one_line_error(capsys, ["prompt", str(tiny_model), "--conversation", str(tmp_path / "x.json")], "no such file")


def test_real_process_prints_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "userlm_local.cli", "info", str(tmp_path / "missing")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("userlm-local info: error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_chat_with_scripted_assistant(capsys, tmp_path, tiny_model):
    replies = tmp_path / "replies.json"
    replies.write_text(json.dumps(["Tyres go flat from punctures.", "Use a patch kit."]))
    out = tmp_path / "conv.json"
    argv = ["chat", str(tiny_model), "--intent", INTENT, "--assistant-file", str(replies),
            "--max-new-tokens", "8", "--seed", "7", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    msgs = json.loads(out.read_text())
    assert msgs[0] == {"role": "system", "content": INTENT}
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[2]["content"] == "Tyres go flat from punctures."
    assert f"user> {msgs[1]['content']}" in printed
    # same seed, same conversation
    assert main(argv) == 0
    capsys.readouterr()
    assert json.loads(out.read_text()) == msgs


# -- found by probing the verbs as a user (2026-11-28) -----------------------------------------

def test_chat_out_is_checked_before_the_conversation(capsys, tmp_path):
    for out, needle in (("/proc/nope.json", "cannot write there"), (str(tmp_path), "is a directory"),
                        (str(tmp_path / "no" / "x.json"), "no such directory"), ("", "--out is empty")):
        one_line_error(capsys, ["chat", "tiny", "--intent", INTENT, "--assistant-file", str(replies(tmp_path)),
                                "--out", out], needle)
    one_line_error(capsys, ["chat", "tiny", "--intent", INTENT, "--max-new-tokens", "0"], "--max-new-tokens")


def test_chat_out_is_written_whole(capsys, tmp_path):
    out = tmp_path / "c.json"
    assert main(["chat", "tiny", "--intent", INTENT, "--assistant-file", str(replies(tmp_path)), "--max-turns", "1",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())[0]["role"] == "system"
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as a plain open() makes it


def test_chat_out_keeps_an_interrupted_conversation(tmp_path):
    """Ctrl-C in the middle of a chat: the turns so far are written to --out, then exit 130."""
    import signal

    out, many = tmp_path / "c.json", tmp_path / "many.txt"
    many.write_text("".join(f"Reply number {i}, go on.\n" for i in range(500)))
    proc = subprocess.Popen([sys.executable, "-m", "userlm_local.cli", "chat", "tiny", "--intent", INTENT,
                             "--assistant-file", str(many), "--max-turns", "500", "--guardrails", "paper",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # as at a terminal: a background job (CI under nohup ... &) inherits SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = 0
    for line in proc.stdout:  # two user turns printed, then the signal
        seen += line.startswith("user> ")
        if seen == 2:
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    messages = json.loads(out.read_text())
    assert [m["role"] for m in messages[:4]] == ["system", "user", "assistant", "user"]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_convert_empty_or_unwritable_options(capsys, tmp_path):
    from userlm_local.defaults import tiny_user_model

    src = str(tiny_user_model())
    for flag in ("--out", "--quant", "--name"):
        argv = ["convert", src, "--out", str(tmp_path / "o"), "--quiet"]
        argv += [flag, ""] if flag != "--out" else []
        if flag == "--out":
            argv[3] = ""
        one_line_error(capsys, argv, f"{flag} is empty")
    one_line_error(capsys, ["convert", src, "--out", "/proc/nope/out", "--quiet"], "cannot create the output directory")
    assert not (tmp_path / "o").exists()


def test_bench_refuses_a_bootstrap_too_small_to_decide(capsys):
    one_line_error(capsys, ["bench", "--suite", "ci", "--bootstrap", "0"], "--bootstrap must be at least 100")


def test_bench_leaves_no_out_directory_on_bad_input(capsys, tmp_path):
    from userlm_local.defaults import tiny_assistant_model, tiny_user_model

    out = tmp_path / "new" / "bench"
    one_line_error(capsys, ["bench", str(tiny_assistant_model()), str(tiny_user_model()), "--out", str(out)],
                   "a candidate is a GGUF file")
    assert not (tmp_path / "new").exists()


def test_a_reader_that_left_is_not_a_success(monkeypatch):
    """``| head`` closing the pipe early: exit 141, as a tool killed by SIGPIPE, never 0."""
    r, w = os.pipe()
    os.close(r)  # a real broken pipe
    out = os.fdopen(w, "w", buffering=1)
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["info", "tiny"]) == 141
    out.close()

