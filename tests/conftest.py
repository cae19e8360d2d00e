import pytest

from fixtures import tiny_llama_plain_dir, tiny_userlm_dir, userlm_tokenizer_dir


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
