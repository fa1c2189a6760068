"""Register: every class adapter the gate passed into the MLflow model registry, promoted
by the gate (defectgen.registry: superior on val, or better than the champion); a class
kept out is listed in registry.json with the gate's verdict, reason and what would change
it, never registered.

Each adapter becomes a version of `defectgen.<dataset>.<class>` (see defectgen.registry)
tagged with the gate's metric and verdict, the params hash, the hash of the images it
learned from and the pipeline key; `champion` / `challenger` follow the gate.
Without MLflow tracking (tracking.enabled false, or --no-track) nothing is registered
and registry.json says so.

Writes under `out_dir`:
    registry.json   per class: model name, version (None: not registered), alias and why,
                    whether it is new, the gate's verdict (pass | fail | inconclusive),
                    its reason and what would change it

Version numbers depend on the registry's state, not only on the inputs, so dvc.yaml
declares this stage without outputs and runs it every time (like the report);
registering an unchanged adapter again returns its existing version.
"""

from __future__ import annotations

from pathlib import Path

from defectgen.artifacts import (
    FINETUNE_JSON,
    REGISTRY_JSON,
    read_adapter,
    read_base,
    read_chosen,
    read_gate,
    read_json,
)
from defectgen.atomic import atomic_dir, atomic_write_json
from defectgen.config import Params


def run(
    params: Params, *, base: Path, adapters: Path, sweep: Path, gated: Path, out_dir: Path
) -> dict[str, float]:
    """Register and promote every gate-passed class adapter.

    Returns:
        n_registered (new versions), n_champions (classes whose champion is this run's).
    """
    base, adapters, sweep, gated = Path(base), Path(adapters), Path(sweep), Path(gated)
    labels = sorted(read_json(adapters / FINETUNE_JSON, stage="finetune", option="adapters"))
    gate = read_gate(gated)
    chosen = read_chosen(sweep, labels)
    from defectgen import tracking

    if not params.tracking.enabled or tracking.active_run_ids() is None:
        with atomic_dir(out_dir) as tmp:
            atomic_write_json(
                tmp / REGISTRY_JSON, {"skipped": "MLflow tracking is off: nothing registered"}
            )
        return {"n_registered": 0.0, "n_champions": 0.0}
    from defectgen import registry

    record = read_base(base)
    fd = "fid" if gate["extractor"] == "inception-v3-compat" else "fd_effnet_lite0"
    key = tracking.pipeline_key(params)
    out: dict[str, dict] = {}
    for label in labels:
        adapter_dir = adapters / "adapters" / label
        adapter = read_adapter(adapter_dir)
        verdict = gate["classes"].get(label, {})
        passed = bool(verdict.get("passed"))
        distance = verdict.get(fd)
        # what the distance was measured on: only equal bases are compared for promotion
        basis = (
            f"{fd}|{(verdict.get('reference_sha256') or '-')[:16]}|{verdict.get('n_compared', '-')}"
        )
        tags = {
            registry.KEY_TAG: key,
            "defectgen.adapter_id": adapter["adapter_id"],
            "defectgen.verdict": verdict.get("verdict", "fail"),
            registry.SUPERIOR_TAG: "true" if verdict.get("superior") else "false",
            "defectgen.gate_metric": fd,
            registry.DISTANCE_TAG: "" if distance is None else repr(float(distance)),
            registry.BASIS_TAG: basis,
            "defectgen.params_hash": params.section_hash(),
            "defectgen.data_hash": adapter["data"]["ids_sha256"][:16],
            "defectgen.base": f"{record['profile']}:{record['fingerprint'][:16]}",
        }
        settings = chosen[label]
        model_config = {
            "token": adapter["token"],
            "prompt": adapter["prompt"],
            "resolution": adapter["resolution"],
            "channels": 1 if params.preprocess.color == "grayscale" else 3,
            "base_revision": record.get("revision"),
            "defaults": {
                "strength": settings["strength"] or params.generate.strength,
                "guidance": settings["guidance"],
                "steps": params.generate.steps,
            },
        }
        tiny = record["profile"] == "tiny"
        name = registry.model_name(params.data.name, label)
        gate_words = {
            "verdict": tags["defectgen.verdict"],
            "reason": verdict.get("reason"),
            "change": verdict.get("change", ""),
            fd: distance,
        }
        if not passed:  # never a version, so the model's `latest` is never a failed one
            out[label] = {
                "model": name,
                "version": None,
                "alias": None,
                "created": False,
                "why": "not registered: the gate kept it out",
                **gate_words,
            }
            continue
        version, alias, created, why = registry.register_adapter(
            name=name,
            adapter_dir=adapter_dir,
            base_dir=base / record["source"] if tiny else None,
            base_source=None if tiny else str(record["source"]),
            model_config=model_config,
            tags=tags,
        )
        out[label] = {
            "model": name,
            "version": version,
            "alias": alias,
            "why": why,
            "created": created,
            **gate_words,
        }
    with atomic_dir(out_dir) as tmp:
        atomic_write_json(tmp / REGISTRY_JSON, {"pipeline_key": key, "classes": out})
    return {
        "n_registered": float(sum(e["created"] for e in out.values())),
        "n_champions": float(sum(e["alias"] == registry.CHAMPION for e in out.values())),
    }
