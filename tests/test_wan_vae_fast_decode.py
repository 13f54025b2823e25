"""The fast Wan VAE decode gives diffusers' frames: float32 to ~1e-5, bfloat16 at PSNR >= 45 dB, for any
latent frame count and chunking, in both activation layouts, for the 2.1 and the 2.2 decoder structure.

Every weight is re-randomised before comparing (the RMS norm gammas start at one and biases at zero,
which would hide a mistake in how they are applied), and the reference output is checked to be neither
flat nor clipped, so a comparison cannot pass trivially."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import DupUp3D

from pack_paths import PACK_ROOT
from reelsmith.engine.demo_models import TINY_VAE
from reelsmith.engine.errors import BackendUnavailableError
from reelsmith.engine.models import channel_rms_norm, wan_vae_fast_decode
from reelsmith.engine.models.host_frames import HostFrames
from reelsmith.engine.models.wan_vae_fast_decode import (_add_duplicated, chunk_bounds, decode_wan_latents_fast,
                                                         default_chunk_latent_frames)
from reelsmith.engine.pipelines import wan_sampler

# The released decoders' structure at a tiny width. 2.2: residual up blocks whose DupUp3D shortcuts change
# the channel count (1024 -> 512 -> 256 at real size), 2x2 patches, 48 latent channels.
VAE_CONFIGS = {
    "2.1": TINY_VAE["2.1"],
    "2.2": dict(base_dim=4, decoder_base_dim=4, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4),
}


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread():
    """These models are tiny: thread start-up costs more than it saves, and on a busy machine far more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_vae(version: str, seed: int, dtype=torch.float32) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**VAE_CONFIGS[version]).eval()
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.3)
    return vae.to(dtype)


def diffusers_frames(vae, latents) -> torch.Tensor:
    """What decode_wan_latents returns through diffusers: [F, H, W, 3] float32 0..1."""
    return wan_sampler.decode_wan_latents(vae, latents, torch.device("cpu"), fast=False)


def latents_for(vae, frames, height, width, seed=0) -> torch.Tensor:
    return torch.randn(1, vae.config.z_dim, frames, height, width, generator=torch.Generator().manual_seed(seed))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / (a - b).pow(2).mean()))


def assert_informative(reference: torch.Tensor) -> None:
    assert reference.std() > 0.05, "reference frames are nearly flat: the comparison would prove little"
    assert ((reference > 0.001) & (reference < 0.999)).float().mean() > 0.5, "reference frames are mostly clipped"


@pytest.mark.parametrize("version", ["2.1", "2.2"])
@pytest.mark.parametrize("frames, size", [(1, (5, 7)), (2, (5, 7)), (5, (3, 5)), (21, (3, 5))])
def test_float32_equals_diffusers_for_every_chunking(version, frames, size):
    vae = random_vae(version, seed=frames)
    latents = latents_for(vae, frames, *size)
    reference = diffusers_frames(vae, latents)
    assert_informative(reference)
    scale = 8 * (2 if version == "2.2" else 1)
    assert reference.shape == (1 + 4 * (frames - 1), size[0] * scale, size[1] * scale, 3)
    for chunk in (1, 2, 4, frames + 3):
        for memory_format in ("contiguous", "channels_last"):
            out = decode_wan_latents_fast(vae, latents, "cpu", chunk_latent_frames=chunk, memory_format=memory_format)
            assert out.shape == reference.shape and out.dtype == torch.float32 and out.device.type == "cpu"
            difference = (out - reference).abs().max().item()
            assert difference < 2e-5, f"chunk {chunk}, {memory_format}: max abs diff {difference}"


@pytest.mark.parametrize("version", ["2.1", "2.2"])
@pytest.mark.parametrize("piece_frames", [1, 3])
def test_work_in_pieces_gives_the_same_frames(version, piece_frames, monkeypatch):
    """At real size the upsamplers convolve, attention attends and the torch norm normalises a few frames at
    a time; here too (one frame, three frames)."""
    vae = random_vae(version, seed=9)
    latents = latents_for(vae, 4, 3, 4)
    reference = diffusers_frames(vae, latents)
    first_upsampler_channels = vae.decoder.up_blocks[0].resnets[-1].conv2.out_channels
    # pieces of `piece_frames` frames at the first upsampler (4 * 3 * 4 upsampled pixels), 1 frame later on;
    # attention over `piece_frames` frames a call
    monkeypatch.setattr(wan_vae_fast_decode, "UPSAMPLE_PIECE_ELEMENTS", piece_frames * first_upsampler_channels * 48)
    monkeypatch.setattr(wan_vae_fast_decode, "ATTENTION_SCORE_ELEMENTS", piece_frames * (3 * 4) ** 2)
    monkeypatch.setattr(channel_rms_norm, "TORCH_PIECE_ELEMENTS", piece_frames)  # and the norms a frame at a time
    for chunk in (1, 3):
        out = decode_wan_latents_fast(vae, latents, "cpu", chunk_latent_frames=chunk, memory_format="channels_last")
        assert (out - reference).abs().max() < 2e-5, chunk


@pytest.mark.parametrize("version", ["2.1", "2.2"])
@pytest.mark.parametrize("piece_frames", [1, 3, 1000])
def test_subpixel_upsampling_equals_diffusers(version, piece_frames, monkeypatch):
    """Nearest 2x + 3x3 conv as four 2x2 phase convs: float32 to ~1e-5, for whole and sliced pieces."""
    vae = random_vae(version, seed=10)
    latents = latents_for(vae, 4, 3, 5)
    reference = diffusers_frames(vae, latents)
    first_upsampler_channels = vae.decoder.up_blocks[0].resnets[-1].conv2.out_channels
    monkeypatch.setattr(wan_vae_fast_decode, "UPSAMPLE_PIECE_ELEMENTS", piece_frames * first_upsampler_channels * 60)
    for chunk, memory_format in ((1, "channels_last"), (3, "contiguous")):
        out = decode_wan_latents_fast(vae, latents, "cpu", chunk_latent_frames=chunk, memory_format=memory_format,
                                      subpixel_upsample=True)
        assert (out - reference).abs().max() < 2e-5, (chunk, memory_format)


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_bfloat16_matches_diffusers_above_45_db(version):
    vae = random_vae(version, seed=7, dtype=torch.bfloat16)
    latents = latents_for(vae, 3, 3, 4, seed=1)
    reference = diffusers_frames(vae, latents)
    assert_informative(reference)
    for chunk, memory_format, subpixel in ((1, "contiguous", False), (2, "channels_last", False),
                                           (8, "contiguous", False), (2, "channels_last", True)):
        out = decode_wan_latents_fast(vae, latents, "cpu", chunk_latent_frames=chunk, memory_format=memory_format,
                                      subpixel_upsample=subpixel)
        assert out.shape == reference.shape
        assert psnr(out, reference) >= 45.0, f"chunk {chunk}, {memory_format}: {psnr(out, reference):.1f} dB"


@pytest.mark.parametrize("parameter", ["decoder.norm_out.gamma", "decoder.mid_block.attentions.0.norm.gamma",
                                       "decoder.up_blocks.0.upsamplers.0.time_conv.weight",
                                       "decoder.up_blocks.2.upsamplers.0.resample.1.weight"])
def test_a_changed_weight_is_detected(parameter):
    """The comparison is sensitive: one tensor of weights off by 5 % moves the frames past 5x the tolerance
    that the equality tests use."""
    vae = random_vae("2.1", seed=3)
    latents = latents_for(vae, 3, 4, 5)
    reference = diffusers_frames(vae, latents)
    with torch.no_grad():
        vae.get_parameter(parameter).mul_(1.05)
    out = decode_wan_latents_fast(vae, latents, "cpu", chunk_latent_frames=2)
    assert (out - reference).abs().max() > 1e-4


@pytest.mark.parametrize("in_channels, out_channels, factor_t", [(8, 8, 2), (8, 4, 2), (8, 4, 1)])
@pytest.mark.parametrize("first", [True, False])
def test_duplicated_shortcut_equals_dupup3d(in_channels, out_channels, factor_t, first):
    """DupUp3D's channel-to-space mapping at the real 2.2 ratios (1024 -> 1024, 1024 -> 512 in time and
    space, 512 -> 256 in space only), added in place as the 2.2 up blocks add it."""
    module = DupUp3D(in_channels, out_channels, factor_t=factor_t, factor_s=2)
    source = torch.randn(1, in_channels, 3, 4, 5)
    expected_add = module(source, first_chunk=first)
    base = torch.randn_like(expected_add)
    out = base.clone()
    _add_duplicated(out, source, factor_t, 2, first)
    torch.testing.assert_close(out, base + expected_add, rtol=0, atol=0)


def test_chunks_cover_the_clip_evenly():
    assert chunk_bounds(21, 4) == [(0, 3), (3, 7), (7, 10), (10, 14), (14, 17), (17, 21)]
    assert chunk_bounds(21, 7) == [(0, 7), (7, 14), (14, 21)]
    assert chunk_bounds(21, 100) == [(0, 21)]
    assert chunk_bounds(1, 1) == [(0, 1)]
    for frames in (1, 2, 5, 21, 31):
        for chunk in (1, 2, 3, 4, 8):
            bounds = chunk_bounds(frames, chunk)
            assert bounds[0][0] == 0 and bounds[-1][1] == frames
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert all(1 <= stop - start <= chunk for start, stop in bounds)
    assert default_chunk_latent_frames(90, 160) == 2  # 720p
    assert default_chunk_latent_frames(60, 104) == 4  # 480p
    assert default_chunk_latent_frames(1000, 1000) == 1
    assert default_chunk_latent_frames(44, 80, spatial_factor=16) == 2  # the 2.2 VAE at 720p (1280x704)


def test_decode_wan_latents_uses_the_fast_decode_when_asked_and_falls_back(monkeypatch):
    vae = random_vae("2.1", seed=5)
    latents = latents_for(vae, 2, 4, 5)
    reference = diffusers_frames(vae, latents)
    fast = wan_sampler.decode_wan_latents(vae, latents, torch.device("cpu"), fast=True)
    assert (fast - reference).abs().max() < 2e-5

    calls = []

    def unsupported(*args, **kwargs):
        calls.append(1)
        raise BackendUnavailableError("not this VAE")

    monkeypatch.setattr(wan_sampler, "decode_wan_latents_fast", unsupported)
    fell_back = wan_sampler.decode_wan_latents(vae, latents, torch.device("cpu"), fast=True)
    assert calls == [1]
    torch.testing.assert_close(fell_back, reference, rtol=0, atol=0)
    wan_sampler.decode_wan_latents(vae, latents, torch.device("cpu"))  # CPU default: diffusers' decode
    assert calls == [1]

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available")

    monkeypatch.setattr(wan_sampler, "decode_wan_latents_fast", broken)
    torch.testing.assert_close(wan_sampler.decode_wan_latents(vae, latents, torch.device("cpu"), fast=True),
                               reference, rtol=0, atol=0)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(wan_sampler, "decode_wan_latents_fast", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):  # the caller's out-of-memory advice takes over
        wan_sampler.decode_wan_latents(vae, latents, torch.device("cpu"), fast=True)


def test_host_frames_collects_chunks_in_order_and_checks_the_count():
    sink = HostFrames(5, 2, 3)
    chunks = [torch.rand(1, 2, 3, 3), torch.rand(4, 2, 3, 3)]
    for chunk in chunks:
        sink.put(chunk)
        sink.drain(keep=1)
    torch.testing.assert_close(sink.result(), torch.cat(chunks), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="6 frames for a clip of 5"):
        sink.put(torch.rand(1, 2, 3, 3))
    with pytest.raises(RuntimeError, match="got 1 of 5"):
        short = HostFrames(5, 2, 3)
        short.put(torch.rand(1, 2, 3, 3))
        short.result()


def test_batches_other_than_one_are_refused():
    vae = random_vae("2.1", seed=6)
    with pytest.raises(BackendUnavailableError, match="shape"):
        decode_wan_latents_fast(vae, torch.randn(2, 16, 2, 3, 4), "cpu")


def test_unsupported_structure_is_refused_before_any_work():
    vae = random_vae("2.1", seed=6)
    vae.decoder.up_blocks[0].resnets[0].nonlinearity = torch.nn.GELU()
    with pytest.raises(BackendUnavailableError, match="GELU"):
        wan_vae_fast_decode.FastWanDecoder(vae)


TRITON_CHECK = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {scripts!r})
    from pack_import import import_engine_only
    import_engine_only()  # the engine only: importing the node layer would cost seconds here
    import torch
    torch.set_num_threads(1)
    from diffusers import AutoencoderKLWan
    from reelsmith.engine.models import channel_rms_norm
    from reelsmith.engine.models.wan_vae_fast_decode import decode_wan_latents_fast

    channel_rms_norm.KERNEL_DEVICE_TYPES.add("cpu")
    launches = []
    launch = channel_rms_norm.launch_rms_norm_rows
    channel_rms_norm.launch_rms_norm_rows = lambda *a, **k: (launches.append(1), launch(*a, **k))

    # the kernel against the torch formula: a non-power-of-two width with SiLU, an odd one without
    for channels, silu in ((96, True), (7, False)):
        x = torch.randn(1, channels, 3, 5, 6).contiguous(memory_format=torch.channels_last_3d)
        gamma = torch.randn(channels)
        expected = channel_rms_norm.rms_norm_channels_torch(x, gamma, channels ** 0.5, silu)
        got = channel_rms_norm.rms_norm_channels(x, gamma, channels ** 0.5, silu=silu)
        assert (got - expected).abs().max() < 1e-5, (channels, silu)

    # the whole decode (2.1 structure) with every norm through the kernel, against diffusers' decode
    torch.manual_seed(11)
    vae = AutoencoderKLWan(**json.loads({config!r})).eval()
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.3)
        latents = torch.randn(1, 16, 3, 3, 4)
        reference = vae.decode(latents, return_dict=False)[0][0].permute(1, 2, 3, 0).add(1).div(2)
    out = decode_wan_latents_fast(vae, latents, "cpu", chunk_latent_frames=2, memory_format="channels_last")
    assert len(launches) > 40, len(launches)
    assert (out - reference).abs().max() < 2e-5, (out - reference).abs().max()
    assert channel_rms_norm.triton_available()
    print("ok", len(launches))
""")


def test_fused_norm_kernel_in_the_triton_interpreter():
    """The Triton kernel runs on the CPU in Triton's interpreter (float32: its bf16 casts truncate), for
    the norm alone and inside the whole decode."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    script = TRITON_CHECK.format(scripts=str(PACK_ROOT / "scripts"), config=json.dumps(VAE_CONFIGS["2.1"]))
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=PACK_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().startswith("ok")
