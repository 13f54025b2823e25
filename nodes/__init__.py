"""ComfyUI surface: one module per family, each exporting NODE_CLASS_MAPPINGS and display names."""

from ..engine import host
from . import avatar, content_credentials, encode, ltx, nsfw, routes, wan, watermark

host.register_model_folders()
routes.register_routes()  # the graph editor's questions (js/reelsmith.js); nothing without a server

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _family in (wan, ltx, avatar, nsfw, watermark, encode, content_credentials):
    NODE_CLASS_MAPPINGS.update(_family.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_family.NODE_DISPLAY_NAME_MAPPINGS)
