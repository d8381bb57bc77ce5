"""Write the schema-2 manifests' constants that tests/core/test_manifest_upgrade.py upgrades: exported by diffship as
it was at the last schema-2 commit (the reference for what such packages hold), from each tiny preset.

    python scripts/make_v2_manifest_fixtures.py            # writes tests/data/manifests-v2/<preset>.json

It checks that commit out into a temporary git worktree, runs that version's own ``cli.py export`` there (with this
interpreter), and keeps ``family`` and ``constants`` of each manifest, verbatim.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAST_SCHEMA_2 = "32ed80d"
"""The last commit whose exporter wrote schema 2 (the family's constants flat, SDXL's as optional fields)."""
PRESETS = ("tiny", "tiny-v", "tiny-xl", "tiny-xl-refiner")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "manifests-v2")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="diffship-v2-") as scratch:
        tree = Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), LAST_SCHEMA_2], check=True)
        try:
            for preset in PRESETS:
                package = Path(scratch) / preset
                subprocess.run([sys.executable, "cli.py", "export", "--model", preset, "--out", str(package)],
                               cwd=tree, check=True)
                manifest = json.loads((package / "manifest.json").read_text(encoding="utf-8"))
                assert manifest["schema_version"] == 2, manifest["schema_version"]
                kept = {"schema_version": 2, "family": manifest["family"], "constants": manifest["constants"]}
                (args.out / f"{preset}.json").write_text(json.dumps(kept, indent=1) + "\n", encoding="utf-8")
                print(f"wrote {args.out / f'{preset}.json'}")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)


if __name__ == "__main__":
    main()
