import pytest
import torch

import dmm_kernels


def _emulated_library() -> bool:
    """Whether the loaded dmm library is the emulated CUDA kernels' (it defines dmm_emu ops)."""
    try:
        torch.ops.dmm_emu.schedule_seed  # noqa: B018
        return True
    except (AttributeError, RuntimeError):
        return False


# The CUDA kernels of csrc/cuda running CPU tensors on the emulator (DMM_KERNELS_LIBRARY=...).
EMULATED = dmm_kernels.HAS_EXTENSION and _emulated_library()
# The Triton kernels running CPU tensors through Triton's interpreter (CI's Triton pass).
TRITON_INTERPRETED = dmm_kernels.BACKEND["cpu"].startswith("triton")
# gradcheck makes hundreds of launches that the interpreter runs in Python; under it the fp64
# gradient-against-reference tests of the same ops carry the gradient checking.
not_interpreted = pytest.mark.skipif(TRITON_INTERPRETED, reason="gradcheck under the Triton "
                                     "interpreter: covered by the fp64 gradient tests")


@pytest.fixture
def one_thread():
    """Tiny models: OpenMP threading only adds overhead (and thrashes on a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
