import os
import random

import pytest
import torch

# Without a GPU, the Triton kernels run under Triton's interpreter (it must be set before triton is imported), also
# where TRITON_INTERPRET=0 was exported: kept, it would skip the Triton tests of the whole run (tests/test_ops_triton.py
# forces it as well, but a module collected before it may import triton first).
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same RNG state."""
    random.seed(0)
    torch.manual_seed(0)
    return 0


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (deselect with -m 'not slow')")
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    # Keep CPU runs on the machine's cores without oversubscription.
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
