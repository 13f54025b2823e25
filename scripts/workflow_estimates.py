#!/usr/bin/env python3
"""What to expect from each shipped workflow on a GPU: the editor's estimate (engine/estimates.py over
data/benchmarks.json, the same numbers the sampler nodes show) for the workflow's own sampler settings,
as a markdown table for the README.

    python scripts/workflow_estimates.py --gpu "NVIDIA H100 80GB HBM3" --gpu "NVIDIA B200"
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from pack_import import PACK_ROOT, import_pack


def sampler_payloads(api: dict) -> list[tuple[str, dict]]:
    """(node id, estimate payload without the GPU) for each Reelsmith sampler of an API-format workflow."""
    from reelsmith.nodes import routes

    out = []
    for node_id, node in api.items():
        rule = routes.SAMPLER_RULES.get(node["class_type"])
        if rule is None:
            continue
        sampler = {k: v for k, v in node["inputs"].items() if not isinstance(v, list)}
        loader_link = next((v for v in node["inputs"].values() if isinstance(v, list)
                            and api[v[0]]["class_type"] in routes.LOADERS), None)
        loader = api[loader_link[0]]["inputs"] if loader_link else {}
        names = [v for v in loader.values() if isinstance(v, str)]
        out.append((node_id, {"node_type": node["class_type"], "sampler": sampler, "loader": loader,
                              "variant": routes.variant_from_names(rule.family, names),
                              "variant_source": "names"}))
    return out


def table(gpus: list[str], workflows_dir: pathlib.Path) -> str:
    from reelsmith.engine import estimates
    from reelsmith.nodes import routes

    lines = ["| workflow | GPU | sampling time | peak GPU memory | estimate from |", "| --- | --- | --- | --- | --- |"]
    for path in sorted((workflows_dir / "api").glob("*.json")):
        api = json.loads(path.read_text())
        for node_id, payload in sampler_payloads(api):
            for gpu in gpus:
                result = routes.estimate_for(dict(payload, gpu_device=gpu))
                seconds, peak = result["seconds"], result["peak_gib"]
                when = estimates.format_duration(seconds) if seconds else "not measured"
                row = result["row"]
                basis = (f"{row['precision']}, compile {row['compile']}, {row['size']}: {row['seconds_per_forward']} "
                         f"s/forward x {result['forwards']} forwards" if row else result["lines"][0])
                memory = f"{peak:.0f} GiB ({result['peak_kind']})" if peak else "-"
                lines.append(f"| {path.stem} | {gpu} | {when} | {memory} | {result['status']}: {basis} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="append", default=None, help="GPU name as torch/ComfyUI report it")
    parser.add_argument("--workflows", type=pathlib.Path, default=PACK_ROOT / "workflows")
    args = parser.parse_args(argv)
    import_pack()
    print(table(args.gpu or ["NVIDIA H100 80GB HBM3", "NVIDIA B200"], args.workflows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
