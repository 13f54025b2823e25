import sys, time, torch
sys.path.insert(0, "scripts")
from pack_import import import_engine_only; import_engine_only()
from bench_models import Workload, randomise_on_gpu
from diffusers import AutoencoderKLWan
from reelsmith.engine.models.checkpoint_io import empty_weights
from reelsmith.engine.models.wan_vae import vae_config
dev = torch.device("cuda")
cfg = {k: v for k, v in vae_config("2.1").items() if not k.startswith("_")}
with empty_weights():
    vae = AutoencoderKLWan(**cfg)
randomise_on_gpu(vae, dev)
z = torch.randn(1, 16, 21, 90, 160, device=dev, dtype=torch.bfloat16)
def t(label, fn=lambda: vae.decode(z, return_dict=False)[0]):
    with torch.no_grad():
        fn(); torch.cuda.synchronize(); s = time.perf_counter(); out = fn(); torch.cuda.synchronize()
    print(label, round(time.perf_counter() - s, 3), torch.cuda.max_memory_allocated() / 2**30, flush=True)
    return out
ref = t("bf16")
torch.backends.cudnn.benchmark = True
t("bf16 benchmark")
torch.backends.cudnn.benchmark = False
vae.to(memory_format=torch.channels_last_3d)
out = t("bf16 channels_last_3d")
print("max diff", (out.float() - ref.float()).abs().max().item())
