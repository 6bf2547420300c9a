"""The choice of autocast precision per device, with the GPU's bfloat16 support mocked."""
from __future__ import annotations

import pytest
import torch

from core import engine
from core.engine import Precision, _autocast, choose_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.fixture
def gpu(monkeypatch):
    """Set whether the (pretended) current GPU has native bfloat16."""
    def set_bf16(supported: bool):
        def is_bf16_supported(including_emulation: bool = True):
            return supported or including_emulation  # emulation "works" everywhere, and must not count
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    return set_bf16


@pytest.mark.parametrize("bf16,want,scaler", [(True, "bf16", False), (False, "fp16", True)])
def test_cuda_default_is_bf16_where_the_gpu_has_it(gpu, bf16, want, scaler):
    gpu(bf16)
    p = choose_precision(CUDA)
    assert p.name == want and p.needs_scaler is scaler and p.device_type == "cuda"
    assert p.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[want]


@pytest.mark.parametrize("bf16", [True, False])
def test_cuda_explicit_choices(gpu, bf16):
    gpu(bf16)
    assert choose_precision(CUDA, "fp32").dtype is None
    assert choose_precision(CUDA, "fp16").needs_scaler
    assert choose_precision(CUDA, amp=True).name == "fp16"  # the older --amp keeps meaning float16
    if bf16:
        assert choose_precision(CUDA, "bf16").name == "bf16"
    else:
        with pytest.raises(ValueError, match="no native bfloat16"):
            choose_precision(CUDA, "bf16")


def test_cpu_defaults_to_fp32_and_refuses_fp16(gpu):
    gpu(True)  # whatever the GPU can do, the CPU's default does not change
    p = choose_precision(CPU)
    assert p.name == "fp32" and p.dtype is None and p.make_scaler() is None
    assert choose_precision(CPU, amp=True).name == "fp32"
    assert choose_precision("cpu", "bf16").dtype is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        choose_precision(CPU, "fp16")
    with pytest.raises(ValueError, match="expected one of fp32, bf16, fp16"):
        choose_precision(CPU, "half")


def test_autocast_follows_the_precision_and_the_older_bool():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with choose_precision(CPU, "bf16").autocast():
        assert torch.mm(a, b).dtype == torch.bfloat16
    with _autocast(CPU, Precision("fp32", "cpu")):
        assert torch.mm(a, b).dtype == torch.float32
    with _autocast(CPU, True):  # amp=True on the CPU stays float32, as before
        assert torch.mm(a, b).dtype == torch.float32


@pytest.mark.filterwarnings("ignore:.*CUDA is not available")
def test_fp16_comes_with_a_grad_scaler():
    assert isinstance(Precision("fp16", "cuda").make_scaler(), torch.amp.GradScaler)
    assert Precision("bf16", "cuda").make_scaler() is None


def test_training_runs_under_bf16_autocast_on_the_cpu():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 3)

        def forward(self, x, frozen_base=False):
            return self.lin(x.flatten(1))

    torch.manual_seed(0)
    model = Net()
    batches = [(torch.randn(4, 2, 2, 2), torch.tensor([0, 1, 2, 0]), torch.arange(4), [], {})] * 3
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.lin.weight.detach().clone()
    out = engine.train_one_epoch(model, batches, opt, CPU, frozen_base=False, scaler=None,
                                 env=engine.DistEnv(), skipped=engine.Skipped(),
                                 precision=choose_precision(CPU, "bf16"))
    assert out["images"] == 12 and out["loss"] == out["loss"]  # finite, not NaN
    assert model.lin.weight.dtype == torch.float32 and not torch.equal(before, model.lin.weight)
