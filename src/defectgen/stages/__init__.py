"""One module per stage, each with run(params, *, <input folders>, out_dir) -> metrics.

Light on purpose: a stage loads torch, diffusers or torchvision only where it uses them
(the modules that import transformers, diffusers or torchvision make torchvision
importable first: see _torchvision_compat), so a stage that has nothing to do (the mask
branch on a dataset without masks) starts in about a second.
"""
