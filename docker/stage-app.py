"""Builder: copy the files `pip install .` put into the venv to /staging, under the same paths.

The runtime stage copies the dependencies' venv and this small tree separately, so a
change to MiniVault's code rebuilds (and ships) a layer of a few hundred KB, not the venv.
"""

import csv
import shutil
import sys
import sysconfig
from pathlib import Path

STAGING = Path("/staging")

site = Path(sysconfig.get_paths()["purelib"])
dists = list(site.glob("minivault-*.dist-info"))
if len(dists) != 1:
    sys.exit(f"stage-app: expected one minivault dist-info in {site}, found {dists}")
with open(dists[0] / "RECORD", newline="") as record:
    for row in csv.reader(record):
        src = (site / row[0]).resolve()  # scripts are recorded as ../../../bin/minivault
        dst = STAGING / src.relative_to("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
