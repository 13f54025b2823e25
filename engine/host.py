"""The only module that talks to ComfyUI internals: progress, previews, interrupts, memory, model folders.

Every function has a plain fallback, so the engine runs unchanged in tests and scripts without ComfyUI.
ComfyUI modules are imported lazily, inside functions, because this package is imported by ComfyUI
itself (and by tests where ComfyUI is absent).
"""

from __future__ import annotations

import importlib.util
import logging
import pathlib
from typing import Callable

import torch

from .errors import CancelledError

log = logging.getLogger("reelsmith")

# Model folders ComfyUI should know about beyond its defaults ("diffusers" lists folders, not files).
EXTRA_MODEL_FOLDERS = ("diffusers",)


def comfyui_available() -> bool:
    """True inside a ComfyUI process (or wherever its modules are importable)."""
    return importlib.util.find_spec("comfy") is not None and importlib.util.find_spec("folder_paths") is not None


# ---------------------------------------------------------------- devices and memory

def torch_device() -> torch.device:
    if comfyui_available():
        import comfy.model_management as mm
        return mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    if comfyui_available():
        import comfy.model_management as mm
        return mm.unet_offload_device()
    return torch.device("cpu")


def free_memory(bytes_needed: int, device: torch.device) -> None:
    """Ask ComfyUI to evict other models until `bytes_needed` are free on `device`."""
    if comfyui_available() and device.type != "cpu":
        import comfy.model_management as mm
        mm.free_memory(bytes_needed, device)


def on_unload_all_models(name: str, callback: Callable[[], None]) -> None:
    """Call `callback` whenever ComfyUI unloads all models ("Unload Models", POST /free with unload_models):
    for memory ComfyUI's model management cannot see, such as the GPU workers of a several-GPU run.

    ComfyUI 0.8 has no hook for this, so `comfy.model_management.unload_all_models` is wrapped once; the
    callbacks live on the wrapper, keyed by `name`, so a re-imported pack replaces its callback instead of
    adding a second one."""
    if not comfyui_available():
        return
    import comfy.model_management as mm
    wrapper = mm.unload_all_models
    callbacks = getattr(wrapper, "reelsmith_callbacks", None)
    if callbacks is None:
        original = wrapper

        def unload_all_models(*args, **kwargs):
            result = original(*args, **kwargs)
            for key, hook in list(unload_all_models.reelsmith_callbacks.items()):
                try:
                    hook()
                except Exception:  # noqa: BLE001 - one failing hook must not break ComfyUI's unload
                    log.exception("Reelsmith: unload hook %s failed", key)
            return result

        unload_all_models.reelsmith_callbacks = callbacks = {}
        mm.unload_all_models = unload_all_models
    callbacks[name] = callback


def soft_empty_cache() -> None:
    if comfyui_available():
        import comfy.model_management as mm
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


class _ManagedModule(torch.nn.Module):
    """A plain container ComfyUI's ModelPatcher can write its bookkeeping attributes on (diffusers models
    have a read-only `device` property, which ModelPatcher would try to set)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module


class ResidentModel:
    """A module that ComfyUI's model management may move off the GPU when other models need room.

    Wrapped in ComfyUI's ModelPatcher when ComfyUI is present (so it is listed among loaded models and
    evicted like core models); a plain `.to(device)` otherwise.
    """

    def __init__(self, module: torch.nn.Module, load_device: torch.device):
        if load_device.type == "cuda" and load_device.index is None:
            # ComfyUI compares devices with ==, and torch.device("cuda") != torch.device("cuda", 0)
            load_device = torch.device("cuda", torch.cuda.current_device())
        self.module = module
        self.load_device = load_device
        self.patcher = None
        if comfyui_available():
            import comfy.model_patcher
            self.patcher = comfy.model_patcher.ModelPatcher(
                _ManagedModule(module), load_device=load_device, offload_device=offload_device()
            )

    def load(self) -> None:
        """Make sure the module is on its device, evicting others if needed."""
        if self.patcher is not None:
            import comfy.model_management as mm
            mm.load_models_gpu([self.patcher], force_full_load=True)
        else:
            self.module.to(self.load_device)


def load_resident(models: list[ResidentModel]) -> None:
    patchers = [m.patcher for m in models if m.patcher is not None]
    if patchers:
        import comfy.model_management as mm
        mm.load_models_gpu(patchers, force_full_load=True)
    for m in models:
        if m.patcher is None:
            m.module.to(m.load_device)


# ---------------------------------------------------------------- interrupts and progress

def is_interrupt(error: BaseException) -> bool:
    if isinstance(error, CancelledError):
        return True
    if comfyui_available():
        import comfy.model_management as mm
        return isinstance(error, mm.InterruptProcessingException)
    return False


def throw_if_interrupted() -> None:
    if comfyui_available():
        import comfy.model_management as mm
        mm.throw_exception_if_processing_interrupted()


def _comfy_latent_format(kind: str):
    import comfy.latent_formats as formats
    return {"wan2.1": formats.Wan21, "wan2.2": formats.Wan22, "ltxv": formats.LTXV,
            "hunyuanvideo": formats.HunyuanVideo}[kind]()


class StepReporter:
    """One progress update per denoising step, with a latent preview; each update is an interrupt point.

    `latent_kind` names the latent space of the x0 given to `step()` ("wan2.1" / "wan2.2" / "ltxv" /
    "hunyuanvideo", as the transformer sees it) so ComfyUI's previewer for that space can draw it.
    """

    def __init__(self, total_steps: int, latent_kind: str | None = None,
                 on_step: Callable[[int, int, torch.Tensor | None], None] | None = None):
        self.total = total_steps
        self.on_step = on_step
        self.bar = None
        self.previewer = None
        if comfyui_available():
            import comfy.utils
            self.bar = comfy.utils.ProgressBar(total_steps)
            if latent_kind is not None:
                self.previewer = self._make_previewer(latent_kind)
                self.preview_channels = _comfy_latent_format(latent_kind).latent_channels

    @staticmethod
    def _make_previewer(latent_kind: str):
        import latent_preview
        latent_format = _comfy_latent_format(latent_kind)
        previewer = latent_preview.get_previewer(torch.device("cpu"), latent_format)
        if previewer is None and latent_format.latent_rgb_factors is not None:
            # Previews switched off in ComfyUI: still show the cheap linear preview the node promises.
            previewer = latent_preview.Latent2RGBPreviewer(
                latent_format.latent_rgb_factors, latent_format.latent_rgb_factors_bias,
                latent_format.latent_rgb_factors_reshape,
            )
        return previewer

    def step(self, step: int, x0: torch.Tensor | None = None) -> None:
        throw_if_interrupted()
        if self.on_step is not None:
            self.on_step(step, self.total, x0)
        if self.bar is not None:
            preview = None
            # (a model of another channel count, such as a tiny demo model, gets no preview)
            if self.previewer is not None and x0 is not None and x0.shape[1] == self.preview_channels:
                preview = self.previewer.decode_latent_to_preview_image("JPEG", x0[:1, :, :1].float().cpu())
            self.bar.update_absolute(step, self.total, preview)


# ---------------------------------------------------------------- model folders

def register_model_folders() -> None:
    """Called once at pack import inside ComfyUI: make sure `models/diffusers` is a known folder."""
    if not comfyui_available():
        return
    import folder_paths
    for name in EXTRA_MODEL_FOLDERS:
        if name not in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path(name, str(pathlib.Path(folder_paths.models_dir) / name))


def models_roots() -> list[pathlib.Path]:
    """Every models base folder: ComfyUI's own and each extra_model_paths base (parent of its model folders)."""
    if not comfyui_available():
        return []
    import folder_paths
    roots = [pathlib.Path(folder_paths.models_dir)]
    for folder in ("diffusion_models", "checkpoints", "vae", "text_encoders"):
        for path in folder_paths.get_folder_paths(folder):
            roots.append(pathlib.Path(path).parent)
    for path in folder_paths.get_folder_paths("diffusers") if "diffusers" in folder_paths.folder_names_and_paths else []:
        roots.append(pathlib.Path(path))
    unique = []
    for root in roots:
        if root.is_dir() and root.resolve() not in [r.resolve() for r in unique]:
            unique.append(root)
    return unique


def list_model_files(folder: str) -> list[str]:
    if not comfyui_available():
        return []
    import folder_paths
    try:
        return list(folder_paths.get_filename_list(folder))
    except KeyError:
        return []


def model_file_path(folder: str, name: str) -> pathlib.Path:
    """Full path of a file picked in a combo; a missing one still yields a path (for the error message)."""
    if comfyui_available():
        import folder_paths
        full = folder_paths.get_full_path(folder, name)
        if full:
            return pathlib.Path(full)
        paths = folder_paths.get_folder_paths(folder)
        if paths:
            return pathlib.Path(paths[0]) / name
    return pathlib.Path(name)


# ---------------------------------------------------------------- output files and VIDEO

def output_directory(fallback: str | pathlib.Path | None = None) -> pathlib.Path:
    """ComfyUI's output folder; outside ComfyUI `fallback` (default: ./output)."""
    if comfyui_available():
        import folder_paths
        return pathlib.Path(folder_paths.get_output_directory())
    return pathlib.Path(fallback if fallback is not None else "output").resolve()


def unique_output_path(filename_prefix: str, extension: str, width: int, height: int,
                       fallback_dir: str | pathlib.Path | None = None) -> tuple[pathlib.Path, str, str]:
    """A new file name in the output folder, numbered as ComfyUI's save nodes number theirs.

    Returns (full path, file name, subfolder relative to the output folder). Inside ComfyUI the name comes from
    folder_paths.get_save_image_path (so %date:...% and subfolders in the prefix work as in core SaveVideo).
    """
    if comfyui_available():
        import folder_paths
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), width, height)
        name = f"{filename}_{counter:05}_.{extension}"
        return pathlib.Path(folder) / name, name, subfolder
    root = output_directory(fallback_dir)
    subfolder, _, stem = filename_prefix.replace("\\", "/").rpartition("/")
    folder = root / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    counter = 1
    for existing in folder.glob(f"{stem}_*_.*"):
        number = existing.name[len(stem) + 1:].split("_", 1)[0]
        if number.isdigit():
            counter = max(counter, int(number) + 1)
    name = f"{stem}_{counter:05}_.{extension}"
    return folder / name, name, subfolder


def video_from_file(path: str | pathlib.Path):
    """A native VIDEO (comfy_api VideoFromFile) for a file; outside ComfyUI the path itself as a string."""
    if importlib.util.find_spec("comfy_api") is None:
        return str(path)
    from comfy_api.latest import InputImpl
    return InputImpl.VideoFromFile(str(path))


# ---------------------------------------------------------------- tokenizers ComfyUI ships

def comfyui_t5_tokenizer_dir() -> pathlib.Path | None:
    """ComfyUI's own T5 tokenizer folder (`comfy/text_encoders/t5_tokenizer`, the one its T5-XXL text encoders
    use: ComfyUI's t5xxl files carry no tokenizer). None outside ComfyUI or when the folder is missing."""
    if not comfyui_available():
        return None
    spec = importlib.util.find_spec("comfy")
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = pathlib.Path(location) / "text_encoders" / "t5_tokenizer"
        if folder.is_dir():
            return folder
    return None
