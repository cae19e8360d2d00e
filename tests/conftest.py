import os

import pytest

from fixtures import CACHE, tiny_llama_plain_dir, tiny_userlm_dir, userlm_tokenizer_dir

# the default UserLM is built once into this cache (not the user's), and reused by later runs
os.environ["XDG_CACHE_HOME"] = str(CACHE / "xdg")


@pytest.fixture(scope="session")
def tokenizer_dir():
    return userlm_tokenizer_dir()


@pytest.fixture(scope="session")
def tiny_model():
    return tiny_userlm_dir()


@pytest.fixture(scope="session")
def plain_model():
    return tiny_llama_plain_dir()


@pytest.fixture(scope="session")
def torch_backend(tiny_model):
    from userlm_local.runtime.backends.torch import load

    return load(tiny_model)


@pytest.fixture(scope="session")
def torch_backend64(tiny_model):
    """The torch backend with its model cast to float64, for tests that compare two ways of computing
    the same logits (one pass or through the cache, batched or alone): in float32 those differ by the
    CPU's accumulation order (AMX, AVX-512 and AVX2 kernels differ); in float64 only by the rounding of
    each logit to float32 on the way out, at most 2**-23 of the logits' scale."""
    from userlm_local.runtime.backends.torch import load

    backend = load(tiny_model)
    backend.model.double()
    return backend


@pytest.fixture(scope="session")
def gguf_files(tiny_model):
    """The tiny fixture as F16, Q8_0 and Q4_K_M GGUFs (converted once, cached in tests/.cache)."""
    from fixtures import CACHE, FIXTURE_VERSION, _atomic_dir
    from userlm_local.convert.pipeline import to_gguf

    def build(tmp):
        to_gguf(tiny_model, tmp / "out", "f16,q8_0,q4_k_m", logit_check=False, progress=False)

    d = _atomic_dir(CACHE / f"tiny-userlm-gguf-v{FIXTURE_VERSION}", build) / "out"
    manifest = __import__("json").loads((d / "manifest.json").read_text())
    return {a["quant"].lower(): d / a["file"] for a in manifest["artifacts"]}


# ---------------------------------------------------------------- GGUF conversion, once per session

@pytest.fixture(scope="session")
def converted(tiny_model, tmp_path_factory):
    """The tiny fixture in every GGUF type (with an imatrix), and the output directory."""
    pytest.importorskip("llama_cpp")
    from convert_support import ALL, quiet
    from userlm_local.convert import to_gguf

    out = tmp_path_factory.mktemp("gguf") / "out"
    result = to_gguf(tiny_model, out, ALL, imatrix="compute", calibration="builtin",
                     calibration_conversations=8, **quiet())
    return result, out


@pytest.fixture(scope="session")
def manifest(converted):
    _, out = converted
    return __import__("json").loads((out / "manifest.json").read_text())


@pytest.fixture(scope="session")
def bf16_sharded(tiny_model, tmp_path_factory):
    """The fixture re-saved as two bf16 shards with an index (no torch)."""
    import json
    import shutil

    from convert_support import write_safetensors
    from userlm_local.convert.gguf_writer import f32_to_bf16_bits
    from userlm_local.artifacts.safetensors import Checkpoint

    d = tmp_path_factory.mktemp("bf16src")
    for f in tiny_model.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and not f.name.startswith("."):
            shutil.copy(f, d / f.name)
    ck = Checkpoint(tiny_model)
    names = sorted(ck.tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for fname, part in shards.items():
        write_safetensors(d / fname, {n: ("BF16", f32_to_bf16_bits(ck.load_f32(ck.tensors[n]))) for n in part})
        weight_map.update({n: fname for n in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


@pytest.fixture(scope="module")
def onnx_home(tmp_path_factory):
    """onnxruntime writes telemetry under ~/.cache/Microsoft on first use: not in the user's HOME."""
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(tmp_path_factory.mktemp("home"))
    yield
    if old is None:
        os.environ.pop("HOME", None)
    else:
        os.environ["HOME"] = old
