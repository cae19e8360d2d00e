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
    from userlm_local.backends.torch import load

    return load(tiny_model)


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
