"""Offload modes (none / model / block) and their combination with fp8 layers and regional compile.

Block offloading is exercised with the CPU as both onload and offload device: the hooks, groups and weight
moves run exactly as on a GPU, minus the CUDA stream. Compile runs use TorchDynamo with the 'eager' backend,
which checks graph capture (and fullgraph) without spending tens of seconds in Inductor on a CPU.
"""

import pytest
import torch

from reelsmith.engine.errors import InvalidInputError
from reelsmith.engine.models.compile import COMPILE_MODES, apply_compile, is_compiled
from reelsmith.engine.models.offload import OFFLOAD_MODES, apply_offload, on_device, stage_on_device
from reelsmith.engine.models.precision import Fp8Linear, apply_precision

from tiny_wan import run, tiny_wan

CPU = torch.device("cpu")


def group_offload_hooks(model):
    return [
        name for name, module in model.named_modules()
        if getattr(module, "_diffusers_hook", None) is not None
        and module._diffusers_hook.get_hook("group_offloading") is not None
    ]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    yield
    torch._dynamo.reset()


def test_choices():
    assert OFFLOAD_MODES == ("none", "model", "block")
    assert COMPILE_MODES == ("off", "regional")
    with pytest.raises(InvalidInputError, match="block"):
        apply_offload(tiny_wan(), "sequential", CPU)
    with pytest.raises(InvalidInputError, match="regional"):
        apply_compile(tiny_wan(), "max-autotune")


@pytest.mark.parametrize("choice", ["bf16", "fp8_e4m3fn"])
def test_block_offload_gives_the_same_output(choice):
    reference = tiny_wan()
    apply_precision(reference, choice, CPU)
    expected = run(reference)

    model = tiny_wan()
    apply_precision(model, choice, CPU)
    onload = torch.device("cpu", 0)  # stands in for the GPU: a device value distinct from the offload CPU
    apply_offload(model, "block", onload)
    hooked = group_offload_hooks(model)
    assert "blocks.0" in hooked and "blocks.1" in hooked  # one group per block
    assert "" in hooked  # the top-level group (embeddings, proj_out) is onloaded around the forward
    # the small modules outside the blocks are kept on the compute device instead of moving every forward
    top_group = model._diffusers_hook.get_hook("group_offloading").group
    assert top_group.offload_device == top_group.onload_device == onload
    block_group = model.blocks[0]._diffusers_hook.get_hook("group_offloading").group
    assert block_group.offload_device == CPU and block_group.onload_device == onload
    out = run(model)
    assert torch.equal(out, expected)
    if choice == "fp8_e4m3fn":
        layer = model.blocks[0].attn1.to_q
        assert isinstance(layer, Fp8Linear) and layer.weight.dtype == torch.float8_e4m3fn
        assert layer.weight_scale.device == CPU


def test_block_offload_then_regional_compile():
    reference = tiny_wan()
    apply_precision(reference, "fp8_e4m3fn", CPU)
    expected = run(reference)

    model = tiny_wan()
    apply_precision(model, "fp8_e4m3fn", CPU)
    apply_offload(model, "block", CPU)
    notes = apply_compile(model, "regional", backend="eager")
    # the offload hooks' weight moves run outside the graph, so fullgraph was turned off, and said so
    assert notes and "fullgraph" in notes[0]
    assert all(is_compiled(block) for block in model.blocks)
    assert torch.equal(run(model), expected)


def test_compile_after_block_offload_only():
    model = tiny_wan()
    apply_precision(model, "bf16", CPU)
    apply_compile(model, "regional", backend="eager")
    with pytest.raises(InvalidInputError, match="before torch.compile"):
        apply_offload(model, "block", CPU)


def test_regional_compile_wraps_each_block_in_one_graph():
    reference = tiny_wan()
    apply_precision(reference, "fp8_e4m3fn", CPU)
    expected = run(reference)

    model = tiny_wan()
    apply_precision(model, "fp8_e4m3fn", CPU)
    assert apply_compile(model, "regional", backend="eager") == []  # fullgraph: no graph break allowed
    assert all(is_compiled(block) for block in model.blocks)
    assert not is_compiled(model) and not is_compiled(model.proj_out)
    assert torch.equal(run(model), expected)  # fullgraph=True would raise on any graph break


def test_compile_off_changes_nothing():
    model = tiny_wan()
    assert apply_compile(model, "off") == []
    assert not any(is_compiled(module) for module in model.modules())


def test_model_offload_keeps_the_model_on_the_cpu_between_stages(monkeypatch):
    model = tiny_wan()
    apply_precision(model, "fp8_e4m3fn", CPU)
    apply_offload(model, "model", CPU)
    assert {p.device for p in model.parameters()} == {CPU}

    moves = []
    real_to = torch.nn.Module.to

    def recording_to(self, *args, **kwargs):
        if self is model:
            moves.append(torch.device(args[0]) if args else kwargs.get("device"))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", recording_to)
    target = torch.device("cpu", 0)  # stands in for the GPU: a distinct device value, same memory
    with stage_on_device(model, "model", target) as staged:
        assert staged is model
        assert moves == [target]
    assert moves == [target, CPU]

    moves.clear()
    with pytest.raises(RuntimeError, match="cancelled"):
        with on_device(model, target):
            raise RuntimeError("cancelled")
    assert moves == [target, CPU]  # moved back even when the stage fails or is cancelled

    moves.clear()
    for mode in ("none", "block"):
        with stage_on_device(model, mode, target):
            pass
    assert moves == []  # nothing moves per stage in the other modes


def test_no_offload_puts_the_model_on_the_device():
    model = tiny_wan()
    apply_precision(model, "bf16", CPU)
    apply_offload(model, "none", CPU)
    assert {p.device for p in model.parameters()} == {CPU}
    assert group_offload_hooks(model) == []
