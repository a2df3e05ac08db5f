"""What code a trial ran: the package version, a hash of its source, and the git commit if any."""
import hashlib
import subprocess
from functools import lru_cache
from pathlib import Path

import searchlab


@lru_cache(maxsize=None)
def code_version():
    package = Path(searchlab.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    try:
        git = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=package,
                             capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        git = None
    return {"version": searchlab.__version__, "source_sha256": digest.hexdigest()[:16], "git": git}
