"""KFP v2 components: one per stage, each a thin shell around defectgen.runner, plus the
fan-out and fan-in helpers (components/fanin.py) and the exit handler's status
(components/status.py).

They run in our own images (containers/Dockerfile.cpu, Dockerfile.gpu) with defectgen
installed, so nothing is pip-installed at run time (install_kfp_package=False). The
pipeline sets each task's image from params `cluster.cpu_image` / `cluster.gpu_image`.
"""

# The image a component names by itself; every task in pipelines/ overrides it.
IMAGE = "defectgen:cpu"
