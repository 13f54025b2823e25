"""One Wan clip on several GPUs: a plan (how the GPUs split the work), worker processes that each hold the model
on one GPU, and a proxy that lets the one-GPU sampler loop drive them. ComfyUI-free, like all of `engine/`."""
