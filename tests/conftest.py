import os
import random

import pytest

import torch  # noqa: E402

# Without a GPU the Triton kernels run in the interpreter (docs/DESIGN.md §8). Triton reads the
# variable when a kernel module is first imported, so it is set before any test runs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Test tensors are tiny: one thread is as fast, and it does not fight other processes for cores.
torch.set_num_threads(int(os.environ.get("MINIPOST_TEST_THREADS", "1")))

WORDS = ("the order shipped kettle mug lamp arrives March Total price refund return shop Minimart "
         "your tracking code is delivery we are happy to help thanks for shopping with us").split()


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory):
    """A tokenizer trained in a fraction of a second on a little Minimart-like text."""
    from minipost.tokenizer import Tokenizer

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(25)) + f" ${rng.randint(1, 999)}." for _ in range(2000)]
    return Tokenizer.train(texts, tmp_path_factory.mktemp("tok") / "tokenizer.model", vocab_size=400)
