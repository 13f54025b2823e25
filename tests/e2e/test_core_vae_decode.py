"""End-to-end tier: the LATENT of Reelsmith's Wan and LTX samplers is what ComfyUI's core VAEDecode expects.

In a real ComfyUI, a sampler's LATENT goes into core VAEDecode with the VAE that core loaders read from the
same weights (VAELoader for Wan's VAE file, CheckpointLoaderSimple for LTX's vendor checkpoint), and the frames
must equal the sampler's own decoded IMAGE. Both sides are deterministic here: Wan's VAE has no decode noise,
and the LTX checkpoint written for this test has a VAE without timestep conditioning (ComfyUI mixes unseeded
noise into a timestep-conditioned LTX decode; that decoder's numbers are compared in-process by
test_native_parity_ltx.py::test_demo_checkpoint_decodes_like_comfyui).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from reelsmith.engine import demo_ltx
from test_wan_workflows import PACK_ROOT, _demo_prompt, server  # noqa: F401  (shared fixture and helpers)

pytestmark = pytest.mark.e2e
CHECK_DIR = "reelsmith-e2e"


def _saved_frames(client, entry, prefix: str, out_dir) -> np.ndarray:
    files = sorted(p for p in client.download_outputs(entry, out_dir) if p.name.startswith(prefix))
    assert files, f"no images saved with prefix {prefix}"
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in files])


def _decode_both_ways(client, prompt: dict, sampler: str, vae_source: dict, tmp_path) -> tuple[np.ndarray, np.ndarray]:
    prompt.update({
        "90": vae_source,
        "91": {"class_type": "VAEDecode", "inputs": {"samples": [sampler, 1], "vae": ["90", vae_source["vae_output"]]}},
        "92": {"class_type": "SaveImage", "inputs": {"images": ["91", 0], "filename_prefix": "core_decode"}},
        "93": {"class_type": "SaveImage", "inputs": {"images": [sampler, 0], "filename_prefix": "reelsmith_decode"}},
    })
    del vae_source["vae_output"]
    entry = client.wait(client.queue(prompt), timeout=300)
    core = _saved_frames(client, entry, "core_decode", tmp_path)
    ours = _saved_frames(client, entry, "reelsmith_decode", tmp_path)
    return core, ours


def _assert_same_frames(core: np.ndarray, ours: np.ndarray) -> None:
    assert core.shape == ours.shape and core.shape[0] > 1, (core.shape, ours.shape)
    assert ours.std() > 5  # a real picture, not a flat frame that any decode would match
    difference = np.abs(core - ours)
    print(f"core VAEDecode vs Reelsmith: max {difference.max()}, mean {difference.mean():.4f} (8-bit levels)")
    assert difference.max() <= 2 and difference.mean() < 0.05  # float rounding before 8-bit quantisation only


def test_core_vae_decode_of_wan_latent(server, tmp_path):  # noqa: F811
    client = server.client
    prompt = _demo_prompt(client, PACK_ROOT / "workflows" / "api" / "wan22_t2v_480p.json")
    vae_file = prompt["1"]["inputs"]["vae"]
    assert vae_file.endswith("wan_2.1_vae.safetensors"), vae_file
    core, ours = _decode_both_ways(client, prompt, "2", {"class_type": "VAELoader", "inputs": {"vae_name": vae_file},
                                                         "vae_output": 0}, tmp_path)
    _assert_same_frames(core, ours)


def test_core_vae_decode_of_ltx_latent(server, tmp_path):  # noqa: F811
    client = server.client
    name = f"{CHECK_DIR}/ltxv-2b-0.9.8-distilled-vae-check.safetensors"
    demo_ltx.TinyLTXSet(seed=11, vae_timestep_conditioning=False).write_vendor_file(
        server.models_dir / "checkpoints" / name, distilled=True)
    prompt = _demo_prompt(client, PACK_ROOT / "workflows" / "api" / "ltx_2b_t2v_720p.json")
    prompt["1"]["inputs"]["checkpoint"] = name
    core, ours = _decode_both_ways(client, prompt, "2", {"class_type": "CheckpointLoaderSimple",
                                                         "inputs": {"ckpt_name": name}, "vae_output": 2}, tmp_path)
    _assert_same_frames(core, ours)
