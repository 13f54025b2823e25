"""FP8 attention under the sequence split, on 2 CPU processes over gloo: our processors make the Ulysses head
exchange themselves (ulysses_exchange.py), so a tiny Wan split by sequence over two ranks gives the one-process
FP8 output (the reference implementation of the kernel's scheme: the same quantisation, in PyTorch). The split
switch takes the split off and puts it back (what `auto` does between steps with and without CFG).

The same with regional compile as the workers apply it (`context_parallel=True`; dynamo's aot_eager backend,
which traces as inductor does without generating code): the blocks trace under the split, the exchange's
functional collectives included, and give the eager output."""

import socket

import conftest  # noqa: F401 - the spawned ranks import this file afresh: conftest registers `reelsmith` there
import pytest
import torch
import torch.multiprocessing as mp
from diffusers import WanTransformer3DModel

from reelsmith.engine.models.attention import apply_attention_backend

REFERENCE = {"implementation": "reference"}


def tiny_wan(seed=0):
    torch.manual_seed(seed)  # 4 heads: 2 per rank after the exchange
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=64, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval().requires_grad_(False).to(torch.bfloat16)


def run_wan(model):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # 3 x 6 x 10 = 180 tokens, 90 per rank
        return model(hidden_states=torch.randn(1, 16, 3, 12, 20, generator=generator).to(torch.bfloat16),
                     timestep=torch.tensor([500]),
                     encoder_hidden_states=torch.randn(1, 7, 32, generator=generator).to(torch.bfloat16),
                     return_dict=False)[0]


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank(rank, port, compiled, results):
    """One rank: the FP8 model split by sequence, then unsplit, then split again; counts the head exchanges."""
    import os

    import torch.distributed as dist

    from reelsmith.engine.models import compile as compile_options, ulysses_exchange
    from reelsmith.engine.parallel.parallel_plan import SplitLayout, make_parallel_plan
    from reelsmith.engine.parallel.sequence_split import SequenceSplitSwitch
    from reelsmith.engine.parallel.worker_runtime import init_rank

    torch.set_num_threads(1)
    os.environ["REELSMITH_PARALLEL_CPU"] = "1"
    plan = make_parallel_plan("2", "sequence")
    groups = init_rank(plan, rank, f"tcp://127.0.0.1:{port}")
    exchanges = []
    original = ulysses_exchange._all_to_all
    ulysses_exchange._all_to_all = lambda x, group: exchanges.append(x.shape) or original(x, group)

    model = tiny_wan()
    apply_attention_backend(model, "fp8", fp8_options=REFERENCE)
    split = SequenceSplitSwitch(model, "cpu", groups.meshes())
    if compiled:
        compile_options.apply_compile(model, "regional", backend="aot_eager", context_parallel=True)
    split.use(plan.guided)
    first = run_wan(model)
    split_exchanges = len(exchanges)
    split.use(SplitLayout(1, 1))
    unsplit = run_wan(model)
    unsplit_exchanges = len(exchanges) - split_exchanges
    split.use(plan.guided)
    again = run_wan(model)
    from torch._dynamo.utils import counters
    results[rank] = {"split": first, "unsplit": unsplit, "again": again,
                     "exchanges": (split_exchanges, unsplit_exchanges),
                     "compiled_blocks": sum(compile_options.is_compiled(b) for b in model.blocks),
                     "graphs": counters["stats"]["unique_graphs"]}
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module", params=[False, True], ids=["eager", "compiled"])
def two_rank_outputs(request):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(_free_port(), request.param, results), nprocs=2, join=True)
        return request.param, dict(results)


def test_fp8_under_the_sequence_split_equals_one_process(two_rank_outputs):
    compiled, two_rank_outputs = two_rank_outputs
    expected = run_wan(apply_fp8(tiny_wan()))
    exact = run_wan(tiny_wan())
    assert not torch.equal(expected, exact)  # the quantised attention really is what is compared
    for rank in (0, 1):
        out = two_rank_outputs[rank]
        # 2 self-attention layers x (q, k, v in + the output back) = 8 exchanges, none once the split is off
        # (compiled: dynamo runs the exchange while tracing, then the graphs run it without calling Python)
        assert out["exchanges"][1] == 0 and (compiled or out["exchanges"][0] == 8)
        if compiled:  # both blocks compiled, and graphs were built for them (the first block's in two pieces)
            assert out["compiled_blocks"] == 2 and out["graphs"] >= 3
        else:
            assert out["compiled_blocks"] == 0
        for name in ("split", "unsplit", "again"):
            got = out[name]
            assert got.shape == expected.shape
            # per-head scales and K smoothing see every token: the same math as one process, up to bf16
            # rounding of the token-sliced projections
            assert torch.nn.functional.cosine_similarity(got.float().flatten(), expected.float().flatten(),
                                                         dim=0) > 0.9999, name
            assert (got.float() - expected.float()).abs().max() <= 0.02, name


def apply_fp8(model):
    apply_attention_backend(model, "fp8", fp8_options=REFERENCE)
    return model
