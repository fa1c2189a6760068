"""MLflow metric keys of the downstream stages' paired comparisons (train, segment, detect):
one spelling, so the MLflow UI compares like with like across stages and runs."""

from __future__ import annotations


def comparison_metrics(model: str | None, comparisons: list[dict]) -> dict[str, float]:
    """MLflow keys of paired comparisons (core.stats.compare rows):
    [<model>/]<arm>/vs_<control>/<metric>_delta, _ci_low, _ci_high, _p (no model prefix
    for a stage with one model, e.g. segment)."""
    out: dict[str, float] = {}
    for c in comparisons:
        name = f"{metric_name(c['arm'])}/vs_{metric_name(c['control'])}/{c['metric']}"
        name = f"{model}/{name}" if model else name
        out[f"{name}_delta"] = c["delta"]
        if c["ci"] is not None:
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = c["ci"]
            out[f"{name}_p"] = c["p_value"]
    return out


def metric_name(condition: str) -> str:
    """A condition as a metric key part: MLflow keys may not hold '+' (real+synthetic ->
    real_synthetic)."""
    return condition.replace("+", "_")
