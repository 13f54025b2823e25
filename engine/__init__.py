"""Reelsmith engine: everything that does work, importable and testable without ComfyUI.

Only `engine/host.py` may touch ComfyUI internals; every other module here is plain Python + torch.
"""
