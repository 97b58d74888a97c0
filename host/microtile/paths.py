"""Where the repository's own folders are, for the code that reads them at run time."""
from pathlib import Path

# host/microtile/paths.py -> the repository root (boards/, firmware/, models/).
REPO_ROOT = Path(__file__).resolve().parents[2]
