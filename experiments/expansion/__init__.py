"""Does synthetic data beat classical augmentation? (run.py)"""
