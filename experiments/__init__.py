"""Experiments: commands that run the pipeline to answer a question, with their results."""
