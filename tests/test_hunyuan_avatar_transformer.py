"""HunyuanVideo-Avatar transformer: its data flow (checked against a plain re-statement of the vendor's math on
vendor-named tensors), the reference frame, the face-gated audio adapters, motion/fps conditioning, and the
model options (precision, block offload, regional compile, attention backend) at tiny size on the CPU."""

import math

import pytest
import torch
import torch.nn.functional as F

from reelsmith.engine.errors import InvalidInputError
from reelsmith.engine.models import hunyuan_avatar_keys as keys
from reelsmith.engine.models.attention import apply_attention_backend, model_attention_backend
from reelsmith.engine.models.compile import apply_compile, is_compiled
from reelsmith.engine.models.hunyuan_avatar_transformer import AvatarRotaryPosEmbed, adapter_positions
from reelsmith.engine.models.offload import apply_offload
from reelsmith.engine.models.precision import Fp8Linear, apply_precision

from tiny_hunyuan_avatar import HIDDEN, TINY_CONFIG, inputs, run, tiny_avatar

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def model():
    return tiny_avatar()


# ------------------------------------------------------------------ the vendor's math, restated


def _sinusoid(values, dim=256):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    angles = values.reshape(-1).float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def _rope_tables(frames, height, width, axes=(2, 4, 4), theta=256.0):
    times = torch.cat([torch.tensor([-1.0]), torch.arange(frames, dtype=torch.float32)])
    grid = torch.stack(torch.meshgrid(times, torch.arange(height, dtype=torch.float32),
                                      torch.arange(width, dtype=torch.float32), indexing="ij")).reshape(3, -1)
    cos, sin = [], []
    for axis, dim in enumerate(axes):
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2).float() / dim)
        angles = torch.outer(grid[axis], freqs)
        cos.append(angles.cos().repeat_interleave(2, dim=1))
        sin.append(angles.sin().repeat_interleave(2, dim=1))
    return torch.cat(cos, dim=1), torch.cat(sin, dim=1)


def vendor_forward(V, x, timestep, text, text_mask, pooled, reference, audio, face_mask, motion_exp, motion_pose, fps):
    """HunyuanVideo-Avatar's forward written out from the vendor's description (models_audio.py and its modules),
    on the vendor's tensors: fused q/k/v, (shift, scale) final modulation, adapters after odd double blocks."""
    D, heads = HIDDEN, TINY_CONFIG["num_attention_heads"]

    def lin(name, h):
        return F.linear(h, V[f"{name}.weight"], V.get(f"{name}.bias"))

    def embed(prefix, values):
        return lin(f"{prefix}.mlp.2", F.silu(lin(f"{prefix}.mlp.0", _sinusoid(values))))

    def modulate(h, shift, scale):
        return h * (1 + scale[:, None]) + shift[:, None]

    def split_heads(h):
        return h.unflatten(-1, (heads, -1))

    def rms(h, weight):
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * weight

    def rotate(h, cos, sin):  # pairs (2i, 2i+1) rotate together
        pairs = h.unflatten(-1, (-1, 2))
        rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
        return h * cos[:, None] + rotated * sin[:, None]

    def attend(q, k, v, key_mask):
        mask = key_mask[:, None, None, :] if key_mask is not None else None
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return out.transpose(1, 2).flatten(2)

    def patch(name, latents):
        return F.conv3d(latents, V[f"{name}.proj.weight"], V[f"{name}.proj.bias"], stride=(1, 2, 2)).flatten(2).transpose(1, 2)

    B, _, T, H, W = x.shape
    th, tw = H // 2, W // 2
    vec = embed("time_in", timestep)
    vec = vec + embed("motion_exp", motion_exp).reshape(B, -1) + embed("motion_pose", motion_pose).reshape(B, -1)
    vec = vec + embed("fps_proj", fps) + lin("vector_in.out_layer", F.silu(lin("vector_in.in_layer", pooled)))

    # token refiner
    m = text_mask.float()[..., None]
    c = embed("txt_in.t_embedder", timestep) + lin(
        "txt_in.c_embedder.linear_2", F.silu(lin("txt_in.c_embedder.linear_1", (text * m).sum(1) / m.sum(1))))
    txt = lin("txt_in.input_embedder", text)
    pair_mask = text_mask.bool()[:, None, :] & text_mask.bool()[:, :, None]
    pair_mask[:, :, 0] = True
    for i in range(TINY_CONFIG["num_refiner_layers"]):
        p = f"txt_in.individual_token_refiner.blocks.{i}"
        gate_msa, gate_mlp = lin(f"{p}.adaLN_modulation.1", F.silu(c)).chunk(2, dim=-1)
        h = F.layer_norm(txt, (D,), V[f"{p}.norm1.weight"], V[f"{p}.norm1.bias"], eps=1e-6)
        q, k, v = [split_heads(t) for t in lin(f"{p}.self_attn_qkv", h).chunk(3, dim=-1)]
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=pair_mask[:, None]).transpose(1, 2).flatten(2)
        txt = txt + lin(f"{p}.self_attn_proj", a) * gate_msa[:, None]
        h = F.layer_norm(txt, (D,), V[f"{p}.norm2.weight"], V[f"{p}.norm2.bias"], eps=1e-6)
        txt = txt + lin(f"{p}.mlp.fc2", F.silu(lin(f"{p}.mlp.fc1", h))) * gate_mlp[:, None]

    # reference frame + video tokens
    img = patch("img_in", x) + lin("before_proj", patch("ref_in", reference))
    img = torch.cat([patch("img_in", reference[:, :, :1]), img], dim=1)
    ref_len = th * tw
    cos, sin = _rope_tables(T, th, tw)
    # joint attention: each row's first sum(mask) text tokens (flash-attention valid lengths), whatever the mask's layout
    leading = torch.arange(text_mask.shape[1])[None] < text_mask.sum(1, keepdim=True)
    key_mask = torch.cat([torch.ones(B, img.shape[1], dtype=torch.bool), leading], dim=1)

    # audio: 4 tokens per video frame, the first frame repeated 3 more times in front, 16 per latent frame
    a = audio.flatten(2)
    a = F.relu(lin("audio_proj.proj2", F.relu(lin("audio_proj.proj1", a))))
    a = F.layer_norm(lin("audio_proj.proj3", a).unflatten(-1, (4, D)), (D,), V["audio_proj.norm.weight"],
                     V["audio_proj.norm.bias"])
    a = torch.cat([a[:, :1].repeat(1, 3, 1, 1), a], dim=1).reshape(B, T, 16, D)
    gate = F.interpolate(face_mask.float(), size=(T, th, tw), mode="nearest").reshape(B, -1, 1)

    def qkv(name, h, mod):  # modulated LayerNorm -> fused q/k/v -> heads
        return [split_heads(t) for t in lin(name, modulate(F.layer_norm(h, (D,), eps=1e-6), mod[0], mod[1])).chunk(3, -1)]

    def mlp(prefix, h, mod):
        hidden = lin(f"{prefix}.fc1", modulate(F.layer_norm(h, (D,), eps=1e-6), mod[3], mod[4]))
        return lin(f"{prefix}.fc2", F.gelu(hidden, approximate="tanh")) * mod[5][:, None]

    for i in range(TINY_CONFIG["num_layers"]):
        p = f"double_blocks.{i}"
        im = lin(f"{p}.img_mod.linear", F.silu(vec)).chunk(6, dim=-1)
        tm = lin(f"{p}.txt_mod.linear", F.silu(vec)).chunk(6, dim=-1)
        iq, ik, iv = qkv(f"{p}.img_attn_qkv", img, im)
        tq, tk, tv = qkv(f"{p}.txt_attn_qkv", txt, tm)
        iq = rotate(rms(iq, V[f"{p}.img_attn_q_norm.weight"]), cos, sin)
        ik = rotate(rms(ik, V[f"{p}.img_attn_k_norm.weight"]), cos, sin)
        tq, tk = rms(tq, V[f"{p}.txt_attn_q_norm.weight"]), rms(tk, V[f"{p}.txt_attn_k_norm.weight"])
        out = attend(torch.cat([iq, tq], 1), torch.cat([ik, tk], 1), torch.cat([iv, tv], 1), key_mask)
        ia, ta = out[:, :img.shape[1]], out[:, img.shape[1]:]
        img = img + lin(f"{p}.img_attn_proj", ia) * im[2][:, None]
        img = img + mlp(f"{p}.img_mlp", img, im)
        txt = txt + lin(f"{p}.txt_attn_proj", ta) * tm[2][:, None]
        txt = txt + mlp(f"{p}.txt_mlp", txt, tm)
        if i % 2 == 1:  # adapter after double blocks 1, 3, ...
            q_ = f"audio_adapter_blocks.{i // 2}"
            video = img[:, ref_len:].reshape(B, T, -1, D)
            q = lin(f"{q_}.to_q", F.layer_norm(video, (D,), V[f"{q_}.norm2.weight"], V[f"{q_}.norm2.bias"]))
            k, v = lin(f"{q_}.to_kv", F.layer_norm(a, (D,), V[f"{q_}.norm1.weight"], V[f"{q_}.norm1.bias"])).chunk(2, -1)
            weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
            added = lin(f"{q_}.to_out", weights @ v).reshape(B, -1, D) * gate
            img = img + torch.cat([torch.zeros_like(img[:, :ref_len]), added], dim=1)

    seq = torch.cat([img, txt], dim=1)
    n_img = img.shape[1]
    for i in range(TINY_CONFIG["num_single_layers"]):
        p = f"single_blocks.{i}"
        shift, scale, g = lin(f"{p}.modulation.linear", F.silu(vec)).chunk(3, dim=-1)
        h = lin(f"{p}.linear1", modulate(F.layer_norm(seq, (D,), eps=1e-6), shift, scale))
        qkv, mlp = h[..., :3 * D], h[..., 3 * D:]
        q, k, v = [split_heads(t) for t in qkv.chunk(3, -1)]
        q, k = rms(q, V[f"{p}.q_norm.weight"]), rms(k, V[f"{p}.k_norm.weight"])
        q = torch.cat([rotate(q[:, :n_img], cos, sin), q[:, n_img:]], 1)
        k = torch.cat([rotate(k[:, :n_img], cos, sin), k[:, n_img:]], 1)
        out = attend(q, k, v, key_mask)
        seq = seq + lin(f"{p}.linear2", torch.cat([out, F.gelu(mlp, approximate="tanh")], -1)) * g[:, None]

    video = seq[:, ref_len:n_img]
    shift, scale = lin("final_layer.adaLN_modulation.1", F.silu(vec)).chunk(2, dim=-1)
    video = lin("final_layer.linear", modulate(F.layer_norm(video, (D,), eps=1e-6), shift, scale))
    video = video.reshape(B, T, th, tw, -1, 1, 2, 2)
    return torch.einsum("nthwcopq->nctohpwq", video).reshape(B, -1, T, H, W)


def test_forward_matches_the_vendors_math(model):
    args = inputs(batch=2)
    vendor = keys.ours_to_vendor(model.state_dict())
    with torch.no_grad():
        expected = vendor_forward(vendor, args["hidden_states"], args["timestep"], args["encoder_hidden_states"],
                                  args["encoder_attention_mask"], args["pooled_projections"], args["reference_latents"],
                                  args["audio_features"], args["face_mask"], args["motion_exp"], args["motion_pose"],
                                  args["fps"])
        out = model(**args)
    assert out.shape == args["hidden_states"].shape
    assert expected.abs().mean() > 0.1  # a real signal, not zeros
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_unaligned_vendor_mask_goes_to_the_refiner_and_its_sum_to_the_attention(model):
    """The vendor's LLaVA mask marks the prompt tokens and the LAST positions (avatar_encoders): the token refiner
    sees it as it is, the joint attention the first sum(mask) tokens; both as the vendor's forward does."""
    args = inputs(batch=2, text_len=9)
    mask = torch.zeros(2, 9, dtype=torch.long)
    mask[0, :2], mask[0, -3:] = 1, 1   # 2 prompt tokens + 3 trailing ones: attention over the first 5
    mask[1, :4], mask[1, -2:] = 1, 1   # 4 + 2: the first 6
    args["encoder_attention_mask"] = mask
    vendor = keys.ours_to_vendor(model.state_dict())
    with torch.no_grad():
        expected = vendor_forward(vendor, args["hidden_states"], args["timestep"], args["encoder_hidden_states"], mask,
                                  args["pooled_projections"], args["reference_latents"], args["audio_features"],
                                  args["face_mask"], args["motion_exp"], args["motion_pose"], args["fps"])
        out = model(**args)
        aligned = model(**dict(args, encoder_attention_mask=(torch.arange(9)[None] < mask.sum(1, keepdim=True)).long()))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out, aligned, atol=1e-3)  # the refiner's mask layout matters


# ------------------------------------------------------------------ structure


def test_reference_frame_rotary_position_is_minus_one():
    rope = AvatarRotaryPosEmbed(2, 1, (2, 4, 4), 256.0)
    grid = rope.positions(frames=3, height=2, width=3)
    assert grid.shape == (3, 4 * 2 * 3)
    per_frame = 2 * 3
    assert torch.equal(grid[0, :per_frame], torch.full((per_frame,), -1.0))   # reference frame: time -1
    assert torch.equal(grid[0, per_frame:], torch.arange(3.0).repeat_interleave(per_frame))  # video: 0, 1, 2
    assert torch.equal(grid[1:, :per_frame], grid[1:, per_frame:2 * per_frame])  # same height/width grid
    cos, sin = rope(3, 2, 3)
    assert cos.shape == sin.shape == (4 * per_frame, 10)
    expected_cos, expected_sin = _rope_tables(3, 2, 3)
    torch.testing.assert_close(cos, expected_cos)
    torch.testing.assert_close(sin, expected_sin)
    # the time axis (first 2 channels) of the reference frame rotates by -1 * theta^0 = -1 radian
    assert torch.allclose(sin[0, :2], torch.full((2,), math.sin(-1.0)))


def test_adapters_follow_every_other_double_block():
    assert adapter_positions(20) == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]
    model = tiny_avatar()
    calls = []
    for i, block in enumerate(model.transformer_blocks):
        block.register_forward_hook(lambda *_, i=i: calls.append(f"double {i}"))
    model.audio_adapter_blocks[0].register_forward_hook(lambda *_: calls.append("adapter 0"))
    model.single_transformer_blocks[0].register_forward_hook(lambda *_: calls.append("single 0"))
    run(model)
    assert calls == ["double 0", "double 1", "adapter 0", "single 0"]


@pytest.mark.parametrize("frames", [1, 3])
def test_reference_frame_is_dropped_before_the_final_layer(frames):
    model = tiny_avatar()
    seen = []
    model.proj_out.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    args = inputs(frames=frames)
    with torch.no_grad():
        out = model(**args)
    assert out.shape == args["hidden_states"].shape  # output frames == input frames
    assert seen == [frames * 2 * 3]  # tokens reaching the final layer: the video's only (H/2 x W/2 per frame)


def test_face_mask_gates_the_audio(model):
    other_audio = torch.randn(1, 9, 10, 5, 4, generator=torch.Generator().manual_seed(7))
    no_face = torch.zeros(1, 1, 1, 4, 6)
    assert torch.equal(run(model, face_mask=no_face), run(model, face_mask=no_face, audio_features=other_audio))
    assert not torch.allclose(run(model), run(model, audio_features=other_audio))  # face everywhere: audio counts
    part = torch.zeros(1, 1, 1, 4, 6)
    part[..., :2, :2] = 1.0  # one token of the 2x3 token grid
    with_part = run(model, face_mask=part)
    assert not torch.allclose(with_part, run(model, face_mask=part, audio_features=other_audio))
    assert not torch.allclose(with_part, run(model))
    # the mask may come without its channel axis, at another resolution, or with one frame per latent frame
    torch.testing.assert_close(run(model, face_mask=part[:, 0]), with_part)
    torch.testing.assert_close(run(model, face_mask=part.repeat(1, 1, 3, 1, 1)), with_part)
    torch.testing.assert_close(run(model, face_mask=part[0, 0, 0].repeat_interleave(4, 0).repeat_interleave(4, 1)[None]), with_part)


def test_motion_and_fps_change_the_output(model):
    base = run(model)
    assert not torch.allclose(base, run(model, motion_exp=torch.full((1, 4), 10)))
    assert not torch.allclose(base, run(model, motion_pose=torch.full((1, 4), 5)))
    assert not torch.allclose(base, run(model, fps=torch.tensor([12.5])))
    # one value per sample stands for four equal ones, as the vendor passes them
    torch.testing.assert_close(run(model, motion_exp=torch.tensor([30]), motion_pose=torch.tensor([25])), base)
    assert not torch.allclose(base, run(model, motion_exp=torch.tensor([[30, 30, 30, 10]])))


def test_reference_latents_matter_and_one_frame_stands_for_all(model):
    args = inputs()
    one = args["reference_latents"][:, :, :1]
    base = run(model)
    torch.testing.assert_close(run(model, reference_latents=one), run(model, reference_latents=one.repeat(1, 1, 3, 1, 1)),
                               rtol=1e-4, atol=1e-4)
    assert not torch.allclose(run(model, reference_latents=one), base)


def test_batch_rows_are_independent(model):
    """A cond/uncond batch with different prompt lengths gives each row what it gives alone."""
    batch = inputs(batch=2)
    with torch.no_grad():
        together = model(**batch)
        for row in range(2):
            alone = {k: v[row:row + 1] for k, v in batch.items()}
            valid = int(alone["encoder_attention_mask"].sum())
            alone["encoder_hidden_states"] = alone["encoder_hidden_states"][:, :valid]  # padding removed
            alone["encoder_attention_mask"] = alone["encoder_attention_mask"][:, :valid]
            torch.testing.assert_close(model(**alone), together[row:row + 1], rtol=1e-4, atol=1e-5)


def test_rows_with_different_text_lengths_run_without_a_mask(model, monkeypatch):
    """A masked attention leaves the fast kernels, so a batch whose rows differ in text length runs row by row,
    each without padding and without a mask (the result is checked against the vendor's masked math above)."""
    batch = inputs(batch=2)
    assert batch["encoder_attention_mask"].sum(dim=1).unique().numel() == 2  # the rows do differ
    seen = []
    block = model.transformer_blocks[0]
    original = type(block).forward
    monkeypatch.setattr(type(block), "forward", lambda self, *a, **k: seen.append(a[3]) or original(self, *a, **k))
    with torch.no_grad():
        out = model(**batch)
    assert out.shape[0] == 2
    assert len(seen) == 2 * len(model.transformer_blocks) and all(mask is None for mask in seen)
    same = dict(batch, encoder_attention_mask=batch["encoder_attention_mask"][:1].repeat(2, 1))
    seen.clear()
    with torch.no_grad():
        model(**same)
    assert len(seen) == len(model.transformer_blocks)  # equal lengths: one batched pass


def test_bad_inputs_are_refused(model):
    with pytest.raises(InvalidInputError, match=r"audio_features must be \[B=1, 9, 10, 5, 4\]"):
        run(model, audio_features=torch.zeros(1, 12, 10, 5, 4))
    with pytest.raises(InvalidInputError, match="reference_latents"):
        run(model, reference_latents=torch.zeros(1, 4, 2, 4, 6))
    with pytest.raises(InvalidInputError, match="face_mask"):
        run(model, face_mask=torch.zeros(1, 2, 1, 4, 6))
    with pytest.raises(InvalidInputError, match="motion_exp"):
        run(model, motion_exp=torch.zeros(1, 3))
    with pytest.raises(InvalidInputError, match="patches"):
        run(model, hidden_states=torch.zeros(1, 4, 3, 5, 6))


# ------------------------------------------------------------------ model options


def block_linears(model):
    return [m for blocks in (model.transformer_blocks, model.single_transformer_blocks)
            for m in blocks.modules() if isinstance(m, (torch.nn.Linear, Fp8Linear))]


def cosine(a, b):
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def test_precision_bf16_and_fp8_storage():
    expected = run(tiny_avatar())
    bf16 = tiny_avatar()
    assert apply_precision(bf16, "bf16", CPU) == []
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    out_bf16 = run(bf16)
    assert cosine(out_bf16, expected) > 0.99

    fp8 = tiny_avatar()
    apply_precision(fp8, "fp8_e4m3fn", CPU)
    layers = block_linears(fp8)
    assert len(layers) == 34 and all(isinstance(m, Fp8Linear) and m.weight.dtype == torch.float8_e4m3fn for m in layers)
    # outside the blocks nothing is fp8 (as the vendor's fp8 file)
    assert type(fp8.audio_adapter_blocks[0].to_q) is torch.nn.Linear and type(fp8.proj_out) is torch.nn.Linear
    assert fp8.before_proj.weight.dtype == torch.bfloat16
    out_fp8 = run(fp8)  # fp8 storage dequantizes on the CPU
    assert cosine(out_fp8, expected) > 0.99 and not torch.equal(out_fp8, out_bf16)


def test_block_offload_gives_the_same_output():
    reference = tiny_avatar()
    apply_precision(reference, "fp8_e4m3fn", CPU)
    expected = run(reference)
    model = tiny_avatar()
    apply_precision(model, "fp8_e4m3fn", CPU)
    apply_offload(model, "block", torch.device("cpu", 0))  # a distinct device value standing in for the GPU
    hooked = {name for name, m in model.named_modules()
              if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook("group_offloading")}
    assert {"transformer_blocks.0", "transformer_blocks.1", "single_transformer_blocks.0", "audio_adapter_blocks.0", ""} <= hooked
    assert torch.equal(run(model), expected)


def test_regional_compile_wraps_each_block():
    reference = tiny_avatar()
    apply_precision(reference, "fp8_e4m3fn", CPU)
    expected = run(reference)
    model = tiny_avatar()
    apply_precision(model, "fp8_e4m3fn", CPU)
    assert apply_compile(model, "regional", backend="eager") == []  # fullgraph: a graph break would raise
    assert all(is_compiled(b) for b in [*model.transformer_blocks, *model.single_transformer_blocks])
    assert not is_compiled(model) and not is_compiled(model.audio_adapter_blocks[0])
    assert torch.equal(run(model), expected)


def test_attention_backend_reaches_the_joint_attention():
    model = tiny_avatar()
    assert apply_attention_backend(model, "sdpa") == "sdpa"
    assert model_attention_backend(model) == "sdpa"
    assert model.transformer_blocks[0].attn.processor._attention_backend.value == "native"
    assert model.single_transformer_blocks[0].attn.processor._attention_backend.value == "native"
    run(model)
