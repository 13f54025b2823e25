#!/usr/bin/env python3
"""Write tiny random-weight models of every supported family, in every supported layout, into a ComfyUI
models folder structure (in `reelsmith-demo/` subfolders), so any shipped workflow runs with `--demo`.

    python scripts/make_demo_models.py --models-dir DIR
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from pack_import import import_pack  # scripts/ is on sys.path when a script runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", required=True, type=pathlib.Path,
                        help="a ComfyUI models folder (or an extra_model_paths base) to write into")
    args = parser.parse_args(argv)
    import_pack()
    from reelsmith.engine.demo_avatar import write_avatar_demo_models
    from reelsmith.engine.demo_ltx import write_ltx_demo_models
    from reelsmith.engine.demo_models import write_demo_models

    started = time.monotonic()
    written = (write_demo_models(args.models_dir) + write_ltx_demo_models(args.models_dir)
               + write_avatar_demo_models(args.models_dir))
    for path in written:
        print(f"  {path.relative_to(args.models_dir)}")
    print(f"Wrote {len(written)} demo models under {args.models_dir} in {time.monotonic() - started:.1f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
