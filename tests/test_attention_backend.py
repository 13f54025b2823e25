"""Attention backend choice: availability, `auto`, clear errors, and per-model routing through diffusers'
dispatcher without touching its process-wide default."""

import pytest
import torch
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

from reelsmith.engine.errors import BackendUnavailableError, InvalidInputError
from reelsmith.engine.models import attention
from reelsmith.engine.models.attention import (
    ATTENTION_BACKENDS,
    apply_attention_backend,
    available_attention_backends,
    resolve_attention_backend,
)

from tiny_wan import run
from tiny_wan import tiny_wan as tiny_fp32_wan

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def tiny_wan(seed: int = 0):
    return tiny_fp32_wan(seed).to(torch.bfloat16)


def processor_backends(model):
    return {
        module.processor._attention_backend
        for module in model.modules()
        if hasattr(getattr(module, "processor", None), "_attention_backend")
    }


@pytest.fixture
def default_backend():
    before = _AttentionBackendRegistry._active_backend
    yield before
    _AttentionBackendRegistry._active_backend = before  # never leak into other tests, even on failure


def test_choices_and_diffusers_names_exist():
    assert ATTENTION_BACKENDS == ("auto", "sdpa", "cudnn", "sage", "flash3", "fp8")
    assert set(attention.DIFFUSERS_BACKEND_NAMES) == set(ATTENTION_BACKENDS) - {"auto", "fp8"}  # fp8 is ours
    for name in attention.DIFFUSERS_BACKEND_NAMES.values():
        AttentionBackendName(name)  # raises ValueError if diffusers renamed it
        assert AttentionBackendName(name) in _AttentionBackendRegistry._backends


def test_cpu_has_sdpa_only():
    assert available_attention_backends(CPU) == ["sdpa"]
    assert resolve_attention_backend("auto", CPU) == "sdpa"
    assert resolve_attention_backend("sdpa", CPU) == "sdpa"


@pytest.mark.parametrize("choice, hint", [("cudnn", "NVIDIA"), ("sage", "NVIDIA"), ("flash3", "Hopper"),
                                          ("fp8", "Hopper")])
def test_unavailable_choice_says_why(choice, hint):
    with pytest.raises(BackendUnavailableError, match=hint):
        resolve_attention_backend(choice, CPU)


def test_unknown_choice_is_refused():
    with pytest.raises(InvalidInputError, match="sdpa"):
        resolve_attention_backend("xformers", CPU)
    with pytest.raises(InvalidInputError):
        apply_attention_backend(tiny_wan(), "flash")


def _pretend_gpu(monkeypatch, capability, sage=False, flash3=False, triton=False):
    monkeypatch.setattr(attention, "_capability", lambda device: capability if device.type == "cuda" else None)
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(attention, "_sage_importable", lambda: sage)
    monkeypatch.setattr(attention, "_flash3_importable", lambda: flash3)
    monkeypatch.setattr(attention, "_triton_importable", lambda: triton)


def test_hopper_auto_prefers_cudnn(monkeypatch):
    _pretend_gpu(monkeypatch, (9, 0), sage=True)
    assert available_attention_backends(CUDA) == ["sdpa", "cudnn", "sage"]
    assert resolve_attention_backend("auto", CUDA) == "cudnn"
    with pytest.raises(BackendUnavailableError, match="flash_attn_interface"):
        resolve_attention_backend("flash3", CUDA)
    with pytest.raises(BackendUnavailableError, match="pip install triton"):
        resolve_attention_backend("fp8", CUDA)


def test_hopper_with_everything_installed(monkeypatch):
    _pretend_gpu(monkeypatch, (9, 0), sage=True, flash3=True, triton=True)
    assert available_attention_backends(CUDA) == ["sdpa", "cudnn", "sage", "flash3", "fp8"]
    assert resolve_attention_backend("auto", CUDA) == "cudnn"  # fp8 only for a model whose attention it fits
    assert resolve_attention_backend("auto", CUDA, fp8_fits=True) == "fp8"


def test_other_gpus_get_sdpa_and_install_hints(monkeypatch):
    _pretend_gpu(monkeypatch, (8, 0), sage=False, flash3=True, triton=True)
    assert resolve_attention_backend("auto", CUDA) == "sdpa"
    assert available_attention_backends(CUDA) == ["sdpa", "cudnn"]
    with pytest.raises(BackendUnavailableError, match="pip install"):
        resolve_attention_backend("sage", CUDA)
    with pytest.raises(BackendUnavailableError, match="Hopper"):
        resolve_attention_backend("flash3", CUDA)
    with pytest.raises(BackendUnavailableError, match="9.0"):
        resolve_attention_backend("fp8", CUDA)


def test_sdpa_gives_the_default_output(default_backend):
    untouched = tiny_wan()
    chosen = tiny_wan()
    assert apply_attention_backend(chosen, "sdpa", CPU) == "sdpa"
    assert processor_backends(untouched) == {None}
    assert processor_backends(chosen) == {AttentionBackendName.NATIVE}
    assert torch.equal(run(chosen), run(untouched))
    assert _AttentionBackendRegistry._active_backend == default_backend


def test_auto_resolves_for_the_models_device(default_backend):
    model = tiny_wan()
    assert apply_attention_backend(model, "auto") == "sdpa"
    assert attention.model_attention_backend(model) == "sdpa"


def test_two_models_keep_their_own_backend_and_the_global_default(default_backend):
    first = tiny_wan()
    second = tiny_wan()
    apply_attention_backend(first, "sdpa", CPU)
    # No device given: the choice is only recorded (the model will run on a GPU later).
    apply_attention_backend(second, "cudnn")
    # diffusers' own ModelMixin.set_attention_backend would have made cuDNN the process-wide default here
    assert _AttentionBackendRegistry._active_backend == default_backend
    assert processor_backends(first) == {AttentionBackendName.NATIVE}
    assert processor_backends(second) == {AttentionBackendName._NATIVE_CUDNN}
    assert attention.model_attention_backend(second) == "cudnn"
    # The routing is real: the cuDNN kernel has no CPU implementation, so only the second model fails here.
    run(first)
    with pytest.raises(RuntimeError):
        run(second)
    # and a model without a choice still follows the untouched default
    assert torch.isfinite(run(tiny_wan()).float()).all()


def test_explicit_choice_checked_against_the_device(default_backend):
    with pytest.raises(BackendUnavailableError, match="cudnn"):
        apply_attention_backend(tiny_wan(), "cudnn", CPU)


@pytest.mark.parametrize("implementation", ["cudnn", "gluon", "gluon-ws"])
def test_an_fp8_implementation_that_cannot_run_here_fails_before_any_swap(implementation):
    from diffusers import WanTransformer3DModel

    from reelsmith.engine.models.attention_fp8_processors import is_fp8_processor

    # head dim 64: a model the FP8 processors take, so only the implementation can refuse
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=64, in_channels=4,
                                  out_channels=4, text_dim=16, freq_dim=32, ffn_dim=16, num_layers=1,
                                  rope_max_seq_len=32)
    with pytest.raises(BackendUnavailableError, match=f"implementation '{implementation}'"):
        apply_attention_backend(model, "fp8", fp8_options={"implementation": implementation})
    assert not any(is_fp8_processor(getattr(m, "processor", None)) for m in model.modules())
