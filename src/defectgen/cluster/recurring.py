"""Nightly expansion on a cluster: KFP recurring runs of the compiled pipeline.

    defectgen schedule create --name nightly --cron "0 0 2 * * *" [--host URL]
    defectgen schedule list [--host URL]
    defectgen schedule delete RECURRING_RUN_ID [--host URL]

The endpoint is --host, else $KF_PIPELINES_ENDPOINT (kfp's own variable), e.g.
http://localhost:8080 after `kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`.
A recurring run starts at most one run at a time and does not catch up on missed
slots: a nightly expansion that overran, or a cluster that was down, does not queue
a backlog of GPU jobs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from defectgen.errors import ConfigError, DefectgenError

ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
# KFP's cron has six fields, seconds first: "0 0 2 * * *" is 02:00:00 every day.
_CRON_FIELD = r"[0-9*/,?LW#A-Za-z-]+"
_CRON = re.compile(rf"^{_CRON_FIELD}( {_CRON_FIELD}){{5}}$")


def check_cron(expr: str) -> str:
    if not _CRON.match(expr.strip()):
        raise ConfigError(
            f"--cron {expr!r}: KFP wants six fields, seconds first "
            "(second minute hour day-of-month month day-of-week), e.g. '0 0 2 * * *' for 02:00"
        )
    return expr.strip()


def _client(host: str | None):
    endpoint = host or os.environ.get(ENDPOINT_ENV)
    if not endpoint:
        raise DefectgenError(
            f"no KFP endpoint: pass --host URL or set ${ENDPOINT_ENV} (for example "
            "http://localhost:8080 after `kubectl port-forward -n kubeflow "
            "svc/ml-pipeline-ui 8080:80`)"
        )
    import warnings

    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # kfp's note about server versions
        return _call(endpoint, "connect", kfp.Client, host=endpoint), endpoint


def _call(endpoint: str, what: str, fn, *args, **kw):
    """Run one KFP API call; an unreachable or refusing endpoint is the user's to fix."""
    try:
        return fn(*args, **kw)
    except Exception as exc:  # urllib3/kfp_server_api raise many types; all mean the same
        if isinstance(exc, DefectgenError):
            raise
        reason = str(exc).splitlines()[0][:300]
        raise DefectgenError(
            f"KFP endpoint {endpoint}: {what} failed ({type(exc).__name__}: {reason}); check "
            f"--host/${ENDPOINT_ENV} and that the KFP API answers there"
        ) from None


def create(
    *,
    host: str | None,
    name: str,
    cron: str,
    package: Path,
    source_path: str = "",
    track: bool = True,
    experiment: str = "defectgen",
    namespace: str | None = None,
) -> str:
    """Create the recurring run of `package`, the pipeline compiled with its params
    (`python -m pipelines.compile --params FILE`: the compiler refuses invalid params);
    returns its id."""
    cron = check_cron(cron)
    if not Path(package).is_file():
        raise DefectgenError(
            f"{package}: no compiled pipeline; run `python -m pipelines.compile --params FILE "
            f"--out {package}`"
        )
    client, endpoint = _client(host)
    exp = _call(
        endpoint, "create experiment", client.create_experiment, experiment, namespace=namespace
    )
    run = _call(
        endpoint,
        "create recurring run",
        client.create_recurring_run,
        experiment_id=exp.experiment_id,
        job_name=name,
        description=f"defectgen nightly expansion ({cron})",
        cron_expression=cron,
        max_concurrency=1,
        no_catchup=True,
        params={"source": source_path, "track": track},
        pipeline_package_path=str(package),
        enable_caching=True,
    )
    return run.recurring_run_id


def list_runs(*, host: str | None, namespace: str | None = None) -> list[dict[str, str]]:
    """Every recurring run on the endpoint: id, name, cron, status."""
    client, endpoint = _client(host)
    out, token = [], ""
    while True:
        page = _call(
            endpoint,
            "list recurring runs",
            client.list_recurring_runs,
            page_token=token,
            page_size=100,
            namespace=namespace,
        )
        for r in page.recurring_runs or []:
            cron = r.trigger.cron_schedule.cron if r.trigger and r.trigger.cron_schedule else ""
            out.append(
                {
                    "id": r.recurring_run_id,
                    "name": r.display_name,
                    "cron": cron,
                    "status": str(r.status),
                }
            )
        token = page.next_page_token
        if not token:
            return out


def delete(*, host: str | None, run_id: str) -> None:
    client, endpoint = _client(host)
    _call(endpoint, f"delete recurring run {run_id}", client.delete_recurring_run, run_id)
