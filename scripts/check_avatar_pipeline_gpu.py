#!/usr/bin/env python3
"""The whole HunyuanVideo-Avatar pipeline on a CUDA GPU at real size, random weights (nothing downloaded): the
transformer (13 B), the HunyuanVideo VAE, LLaVA-Llama-3-8B with its CLIP ViT-L/14-336 tower, CLIP-L text and
whisper-tiny, built in memory with the released architectures, then one `generate_avatar_video` call, exactly the
engine path the sampler node runs: portrait + audio in, frames + trimmed audio out.

It reports each stage's seconds and peak GPU memory (text encode, audio features, reference latents, every
denoising step, decode), the whole run, and the memory left allocated afterwards. Tokenizers are the demo's
word-level ones built in memory (the real ones are files), so the prompt's token count differs from the vendor's;
the sequence lengths the models see are the real ones (351 text positions + 576 image features).

    python scripts/check_avatar_pipeline_gpu.py --size 704 --steps 3 --offload none block
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import pathlib
import sys
import tempfile
import time
import traceback

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from pack_import import import_engine_only  # noqa: E402

import_engine_only()

# Released architectures (config.json of each model as published): LLaVA-Llama-3-8B (xtuner's transformers export,
# which the vendor's llava_llama_image is), CLIP-L text (openai/clip-vit-large-patch14), whisper-tiny.
LLAMA_3_8B = dict(vocab_size=128320, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                  rms_norm_eps=1e-5)
CLIP_VIT_L_336 = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                      num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
CLIP_L_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=77, projection_dim=768)
WHISPER_TINY = dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, decoder_layers=4,
                    decoder_attention_heads=6, decoder_ffn_dim=1536, num_mel_bins=80, max_source_positions=1500,
                    vocab_size=51865)


def _random(model_class, config, device, dtype):
    """A model of the released size with N(0, 0.02) weights made on the GPU (no CPU copy)."""
    from bench_models import randomise_on_gpu
    from reelsmith.engine.models.checkpoint_io import empty_weights

    with empty_weights():
        model = model_class(config)
    return randomise_on_gpu(model, device, dtype=dtype)


def build_encoders(device):
    import torch
    from transformers import (CLIPTextConfig, CLIPTextModel, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              WhisperConfig, WhisperFeatureExtractor, WhisperModel)

    from reelsmith.engine import demo_avatar
    from reelsmith.engine.models.avatar_encoders import ClipTextEncoder, LlavaTextEncoder, WhisperAudioEncoder

    llama_tokenizer, clip_tokenizer = demo_avatar.llama_tokenizer(), demo_avatar.clip_tokenizer()
    llava_config = LlavaConfig(text_config=LlamaConfig(**LLAMA_3_8B, pad_token_id=llama_tokenizer.pad_token_id),
                               vision_config=CLIP_VIT_L_336, vision_feature_layer=-2,
                               image_token_id=llama_tokenizer.convert_tokens_to_ids("<image>"),
                               vision_feature_select_strategy="default", projector_hidden_act="gelu")
    # fp16 as the loader reads them on CUDA; kept on the CPU between prompts, as the loaded model keeps them
    llava = _random(LlavaForConditionalGeneration, llava_config, device, torch.float16).to("cpu")
    clip = _random(CLIPTextModel, CLIPTextConfig(**CLIP_L_TEXT), device, torch.float16).to("cpu")
    whisper = _random(WhisperModel, WhisperConfig(**WHISPER_TINY), device, torch.float32).to("cpu")
    return (LlavaTextEncoder(model=llava, tokenizer=llama_tokenizer),
            ClipTextEncoder(model=clip, tokenizer=clip_tokenizer),
            WhisperAudioEncoder(encoder=whisper.encoder, feature_extractor=WhisperFeatureExtractor(feature_size=80)))


def build_model(precision: str, offload: str, attention_name: str, encoders, detector_path, device):
    """An AvatarModel as `load_avatar_model` returns it, with the options applied the way it applies them."""
    from diffusers import AutoencoderKLHunyuanVideo

    from bench_models import randomise_on_gpu
    from reelsmith.engine import host
    from check_avatar_gpu import build as build_transformer
    from reelsmith.engine.models import attention
    from reelsmith.engine.models.avatar_encoders import avatar_encoder_files
    from reelsmith.engine.models.avatar_face_detector import FaceDetector
    from reelsmith.engine.models.avatar_layouts import AvatarModelFiles
    from reelsmith.engine.models.avatar_model import AvatarLoadOptions, AvatarModel
    from reelsmith.engine.models.checkpoint_io import empty_weights
    from reelsmith.engine.models.hunyuan_avatar_checkpoint import AvatarTransformerFiles
    from reelsmith.engine.models.hunyuan_vae import shipped_vae_config

    transformer, notes = build_transformer(precision, offload, device)  # check_avatar_gpu.py's, the same options
    attention.apply_attention_backend(transformer, attention_name, device)
    vae_config = {k: v for k, v in shipped_vae_config().items() if not k.startswith("_")}
    with empty_weights():
        vae = AutoencoderKLHunyuanVideo(**vae_config)
    randomise_on_gpu(vae, device)
    if offload != "none":
        vae.to("cpu")
    llava, clip, whisper = encoders
    root = pathlib.Path(tempfile.gettempdir()) / "avatar-random"
    files = AvatarModelFiles(label="random weights (real size)", root=root,
                             transformer=AvatarTransformerFiles(weights=root / "random", fp8_map=None, format="random"),
                             vae=root / "vae", encoders=avatar_encoder_files(root), detector=detector_path,
                             notes=notes)
    options = AvatarLoadOptions(precision=precision, attention=attention_name, offload=offload)
    residents = [host.ResidentModel(m, device) for m in (transformer, vae)] if offload == "none" else []
    return AvatarModel(files=files, options=options, device=device, transformer=transformer, vae=vae, llava=llava,
                       clip=clip, whisper=whisper, detector=FaceDetector.load(detector_path), notes=notes,
                       residents=residents)


class StageClock:
    """Seconds and peak GPU memory of each named stage (wrapping the engine functions the generation calls)."""

    def __init__(self):
        self.rows: list[dict] = []

    @contextlib.contextmanager
    def stage(self, name: str):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        yield
        torch.cuda.synchronize()
        self.rows.append(dict(stage=name, seconds=round(time.perf_counter() - started, 2),
                              peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2)))

    def wrap(self, owner, attribute: str, name: str):
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            with self.stage(name):
                return original(*args, **kwargs)
        setattr(owner, attribute, timed)
        return original


def run_once(model, args, clock: StageClock) -> dict:
    import numpy as np
    import torch

    from reelsmith.engine import demo_avatar
    from reelsmith.engine.pipelines import avatar_generate

    # a portrait at least 256 px wide (the sampler's minimum), 4:5, rendered at image_size
    width = max(args.size, 256)
    portrait = demo_avatar.demo_portrait(width=width, height=round(width * 1.25))
    image = torch.from_numpy(np.asarray(portrait, dtype=np.float32) / 255.0)[None]
    speech = demo_avatar.demo_speech(seconds=args.seconds, sample_rate=44100, channels=2)
    audio = {"waveform": torch.from_numpy(np.ascontiguousarray(speech, dtype=np.float32))[None], "sample_rate": 44100}
    originals = [(avatar_generate, name, clock.wrap(avatar_generate, name, label)) for name, label in (
        ("avatar_audio_features", "audio features (whisper-tiny)"),
        ("encode_reference_latents", "reference latents (VAE encode)"),
        ("decode_avatar_latents", "decode (VAE)"))]
    originals.append((model, "encode_text", clock.wrap(model, "encode_text", "text encode (LLaVA-8B + CLIP-L)")))
    step_times: list[float] = []
    last = [time.perf_counter()]

    def on_step(step, total, x0):
        torch.cuda.synchronize()
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now
        print(f"  step {step}/{total}: {step_times[-1]:.2f} s", flush=True)

    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        video = avatar_generate.generate_avatar_video(
            model, image=image, audio=audio, prompt=demo_avatar.DEMO_PROMPT, image_size=args.size, fps=25.0,
            steps=args.steps, seed=0, length=avatar_generate.FIRST_WINDOW if args.first_window else avatar_generate.WHOLE_AUDIO,
            batch_guidance=not args.separate_guidance, on_step=on_step)
    finally:
        for owner, name, original in originals:
            if owner is model:
                del model.encode_text  # back to the class method
            else:
                setattr(owner, name, original)
    torch.cuda.synchronize()
    whole = time.perf_counter() - started
    # the first step's interval also holds everything before it; the later ones are the denoising steps alone
    denoise_steps = step_times[1:] or step_times
    return dict(seconds_total=round(whole, 1), seconds_per_step=round(sorted(denoise_steps)[len(denoise_steps) // 2], 2),
                steps_timed=len(step_times), frames=int(video.frames.shape[0]),
                frame_size=list(video.frames.shape[1:3]), audio_samples=int(video.audio["waveform"].shape[-1]),
                finite=bool(torch.isfinite(video.frames).all()),
                peak_gib_run=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                allocated_after_gib=round(torch.cuda.memory_allocated() / 2**30, 2))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=704, help="image_size (the portrait's shorter side; multiple of 64)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.2, help="audio length (5.16 s = 129 frames at 25 fps)")
    parser.add_argument("--first-window", action="store_true", help="length mode 'first 129 frames'")
    parser.add_argument("--separate-guidance", action="store_true",
                        help="run the guidance branches as two batch-1 forwards instead of one batch-2 forward")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--offload", nargs="+", default=["none"])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("avatar_pipeline_gpu.json"))
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("check_avatar_pipeline_gpu.py needs a CUDA GPU.", file=sys.stderr)
        return 2
    from reelsmith.engine import demo_avatar

    device = torch.device("cuda")
    started = time.perf_counter()
    encoders = build_encoders(device)
    print(f"# encoders built in {time.perf_counter() - started:.1f} s", flush=True)
    detector = demo_avatar.write_face_detector(pathlib.Path(tempfile.mkdtemp()) / "detface.pt")
    results = []
    for offload in args.offload:
        clock = StageClock()
        row = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, precision=args.precision,
                   attention=args.attention, offload=offload, size=args.size, steps=args.steps,
                   audio_seconds=args.seconds, batch_guidance=not args.separate_guidance)
        model = None
        try:
            model = build_model(args.precision, offload, args.attention, encoders, detector, device)
            row["resident_before_run_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
            row.update(run_once(model, args, clock))
        except Exception as error:
            row["error"] = f"{type(error).__name__}: {str(error)[:400]}"
            traceback.print_exc()
        row["stages"] = clock.rows
        results.append(row)
        print(json.dumps(row), flush=True)
        del model
        gc.collect()
        torch.cuda.empty_cache()
    args.out.write_text(json.dumps(results, indent=2))
    for row in results:
        print(f"\n## offload {row['offload']}: {row.get('error') or ''}")
        print("| stage | seconds | peak GiB |\n| --- | --- | --- |")
        for stage in row["stages"]:
            print(f"| {stage['stage']} | {stage['seconds']} | {stage['peak_gib']} |")
        if "seconds_total" in row:
            print(f"| denoising step (median) | {row['seconds_per_step']} | |")
            print(f"| whole run ({row['steps']} steps, {row['frames']} frames {row['frame_size']}) | "
                  f"{row['seconds_total']} | {row['peak_gib_run']} |")
            print(f"memory allocated after the run: {row['allocated_after_gib']} GiB "
                  f"(resident before: {row['resident_before_run_gib']} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
