"""The bench scripts import each other as siblings (they run as `python bench/NAME.py`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
