"""KFP v2 components: one per stage, each a thin shell around defectgen.runner.

They run in our own image (containers/Dockerfile.cpu) with defectgen installed,
so nothing is pip-installed at run time (install_kfp_package=False).
"""

import os

# The image every component runs in; set DEFECTGEN_IMAGE when compiling for a cluster
# (it is read when the components are defined, i.e. at compile time).
IMAGE = os.environ.get("DEFECTGEN_IMAGE", "defectgen:cpu")
