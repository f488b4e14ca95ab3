import os

import pytest
import torch


@pytest.fixture(scope="session")
def device():
    """CUDA when present. Without it the gpu-marked tests skip, except with C2F_GPU_TESTS_ON_CPU=1, which
    runs them on the CPU to check the tests themselves (slow: GPT-B shapes, bf16 emulated on most CPUs)."""
    if torch.cuda.is_available():
        torch.cuda.set_device(0)
        return torch.device("cuda", 0)
    if os.environ.get("C2F_GPU_TESTS_ON_CPU") == "1":
        return torch.device("cpu")
    pytest.skip("needs CUDA (torch sees no GPU); C2F_GPU_TESTS_ON_CPU=1 runs these on the CPU")
