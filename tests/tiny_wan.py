"""The tiny Wan transformer the model-option tests share (DESIGN.md's test config) and one forward on it."""

import torch
from diffusers import WanTransformer3DModel


def tiny_wan(seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval().requires_grad_(False)


def run(model):
    """One forward with fixed random inputs (bf16 activations)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        return model(
            hidden_states=torch.randn(1, 16, 3, 8, 8, generator=generator).to(torch.bfloat16),
            timestep=torch.tensor([500]),
            encoder_hidden_states=torch.randn(1, 7, 32, generator=generator).to(torch.bfloat16),
            return_dict=False,
        )[0]
