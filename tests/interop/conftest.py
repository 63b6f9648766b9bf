import pytest

from minipost import backend


@pytest.fixture(autouse=True)
def float32_matmuls():
    """The comparisons are in float32: cli.run (the export test's training run) sets the
    process-wide precision to "auto", which is bf16 for SmolLM2's size on a CPU with native
    bf16; every test here starts from fp32 and leaves it so."""
    backend.set_precision("fp32")
    yield
    backend.set_precision("fp32")
