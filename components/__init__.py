"""KFP v2 components: one per stage, each a thin shell around defectgen.runner.

They run in our own image (containers/Dockerfile.cpu) with defectgen installed,
so nothing is pip-installed at run time (install_kfp_package=False).
"""

import os

# The image every component runs in; override at compile time (pipelines/compile.py --image).
IMAGE = os.environ.get("DEFECTGEN_IMAGE", "defectgen:cpu")
