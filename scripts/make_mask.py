"""``python scripts/make_mask.py ...`` from a checkout: the same as ``python -m diffship.tools.make_mask ...``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffship.tools.make_mask import main  # noqa: E402

if __name__ == "__main__":
    main()
