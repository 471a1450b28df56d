"""`evalkit slurm submit` and `resume`: render a submission's sbatch scripts and submit them
with their dependencies.

The job graph: [model server] -> evaluation arrays (one per suite, one task per shard; after
the server has started, each task waits for its health endpoint) -> one merge job per suite
(afterok on that suite's array) -> the report job (afterok on the merges); a server-stop job
(afterany on the arrays) frees the server's GPUs. Every dependant is submitted with
--kill-on-invalid-dep=yes, so a failed task cancels its merge and report instead of leaving
them pending forever.

Each shard's run and the merged run are planned here, before anything is written, so bad input
fails at once (one line, exit 2) and `status` can find every shard's run by its config hash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalkit.errors import EvalkitError
from evalkit.slurm import scheduler
from evalkit.slurm.render import render
from evalkit.slurm.submission import Job, Submission, SuitePlan
from evalkit.store import results_root

if TYPE_CHECKING:
    from evalkit.serve import ServePlan

# Flags of `evalkit run` that the submission sets itself.
RESERVED_RUN_FLAGS = ("--suite", "--model", "--shard", "--results-dir", "--no-progress")
SERVER_RESERVED_FLAGS = ("--base-url", "--api-key-env")
SERVER_WAIT_S = 4 * 3600  # an evaluation task waits this long for the server to answer
SERVER_START_S = 3 * 3600  # loading about 1 TB of weights over two nodes takes a while


@dataclass(frozen=True)
class SubmitOptions:
    suites: Sequence[str]
    model: str
    shards: int
    run_args: Sequence[str] = ()  # passed to every `evalkit run`, e.g. ["--limit", "40"]
    results_dir: str | None = None
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    gpus_per_node: int | None = None
    nodes: int | None = None  # model-server nodes (default: the preset's layout)
    cpus_per_task: int | None = None
    setup: str = ""  # shell lines run first in every job (module load, venv activation)
    evalkit: str | None = None  # how jobs invoke evalkit; default below
    workdir: str | None = None
    port: int = 8000
    dry_run: bool = False


def _now() -> datetime:
    return datetime.now(UTC)


def _check_run_args(run_args: Sequence[str], server: bool) -> None:
    reserved = RESERVED_RUN_FLAGS + (SERVER_RESERVED_FLAGS if server else ())
    for arg in run_args:
        if arg.split("=", 1)[0] in reserved:
            raise EvalkitError(f"{arg.split('=', 1)[0]} is set by `evalkit slurm submit` itself")


def _server_plan(opts: SubmitOptions) -> ServePlan | None:
    """The vLLM serving plan when the model is a preset on its vllm route, else None: such a
    model is served once for all tasks instead of loaded by every shard."""
    from evalkit import serve
    from evalkit.models import resolve_preset

    resolved = resolve_preset(opts.model)
    if resolved is None or resolved[2].backend != "vllm":
        return None
    return serve.serve_plan(
        opts.model,
        nodes=opts.nodes,
        gpus_per_node=opts.gpus_per_node,
        port=opts.port,
        head_address="${head_ip}",  # known only inside the job: the allocation's first node
    )


def _plan_suite(suite: str, eval_model: str, opts: SubmitOptions, server: bool) -> SuitePlan:
    """Config hashes of the suite's shard runs and merged run, as the tasks will compute them."""
    from evalkit.cli import build_parser, run_config
    from evalkit.runner import config_hash, plan

    args = build_parser().parse_args(
        ["run", "--suite", suite, "--model", eval_model, *opts.run_args]
    )
    config = run_config(args)
    options = config.model_options
    if server:
        # The server does not exist yet; the endpoint is not part of a run's identity.
        options = dataclasses.replace(
            options, base_url="http://model-server.invalid/v1", api_key="-"
        )
    p = plan(dataclasses.replace(config, shard=None, cache=False, model_options=options))
    if len(p.samples) < opts.shards:
        raise EvalkitError(
            f"{suite}: {len(p.samples)} items cannot make {opts.shards} non-empty shards"
        )
    # A shard's identity is the unsharded one with its shard set (runner.plan), and the merge of
    # all shards has the unsharded identity (evalkit.merge).
    shard_hashes = [
        config_hash({**p.identity, "shard": [i, opts.shards]}) for i in range(opts.shards)
    ]
    return SuitePlan(shard_hashes=shard_hashes, merged_hash=p.config_hash)


def submit(opts: SubmitOptions) -> Submission:
    if opts.shards < 1:
        raise EvalkitError(f"bad --shards {opts.shards}: must be a positive integer")
    if not opts.suites:
        raise EvalkitError("give at least one --suite")
    if not opts.dry_run and shutil.which("sbatch") is None:
        raise EvalkitError("sbatch not found: run this on a Slurm login node (or use --dry-run)")
    serve_plan = _server_plan(opts)
    _check_run_args(opts.run_args, serve_plan is not None)
    eval_model = f"openai:{serve_plan.served_name}" if serve_plan else opts.model
    suites = {
        s: _plan_suite(s, eval_model, opts, serve_plan is not None)
        for s in dict.fromkeys(opts.suites)
    }

    root = results_root(opts.results_dir)
    now = _now()
    sub_id = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"
    final = root / "slurm" / sub_id
    staging = root / "slurm" / f".{sub_id}.tmp"
    created = [d for d in (root, root / "slurm") if not d.exists()]
    staging.mkdir(parents=True)
    try:
        sub = Submission(
            submission_id=sub_id,
            path=final,
            created_at=now.isoformat(timespec="seconds"),
            model=opts.model,
            eval_model=eval_model,
            shards=opts.shards,
            suites=suites,
            results_dir=str(root),
            workdir=str(Path(opts.workdir or os.getcwd()).resolve()),
            run_args=list(opts.run_args),
            slurm={
                "partition": opts.partition,
                "account": opts.account,
                "time": opts.time,
                "gpus_per_node": opts.gpus_per_node,
                "nodes": opts.nodes,
                "cpus_per_task": opts.cpus_per_task,
            },
            server=_server_state(serve_plan, opts, final) if serve_plan else None,
            dry_run=opts.dry_run,
        )
        _write_scripts(sub, staging, opts, serve_plan)
        sub.save(staging)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        raise
    if opts.dry_run:
        return sub
    try:
        submit_jobs(sub, {s: list(range(opts.shards)) for s in suites}, set(suites), True)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)  # its submitted jobs were cancelled
        _remove_empty(created)
        raise
    sub.save()
    return sub


def _remove_empty(dirs: Sequence[Path]) -> None:
    """Remove the folders a failed submission created, so bad input leaves nothing behind."""
    for d in reversed(dirs):
        with contextlib.suppress(OSError):
            d.rmdir()


def _server_state(plan: ServePlan, opts: SubmitOptions, path: Path) -> dict[str, Any]:
    from evalkit.models import PRESETS

    layout = PRESETS[plan.preset].serving
    nodes = opts.nodes or (layout.nodes if layout else 1)
    return {
        "preset": plan.preset,
        "nodes": nodes,
        "gpus_per_node": plan.gpus // nodes,
        "served_name": plan.served_name,
        "gpus": plan.gpus,
        "port": plan.port,
        "endpoint_file": str(path / "server" / "endpoint"),
        "key_file": str(path / "server" / "api_key"),
    }


def _write_scripts(
    sub: Submission, where: Path, opts: SubmitOptions, serve_plan: ServePlan | None
) -> None:
    """Render every script of the submission into `where` (its final path is `sub.path`)."""
    (where / "logs").mkdir()
    s = sub.slurm
    common = {
        "logs_dir": str(sub.logs_dir),
        "setup": opts.setup.strip() or "# (none)",
        "workdir": sub.workdir,
        "evalkit": opts.evalkit
        or (
            "python -m evalkit"
            if opts.setup.strip()
            else f"{shlex.quote(sys.executable)} -m evalkit"
        ),
        "partition": s["partition"],
        "account": s["account"],
        "time": s["time"],
        "results_dir": sub.results_dir,
        "submission_dir": str(sub.path),
    }
    server = None
    if serve_plan is not None and sub.server is not None:
        (where / "server").mkdir(mode=0o700)
        # The server's API key: readable by the user only, from its creation on.
        fd = os.open(where / "server" / "api_key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
        tp = int(serve_plan.vllm[serve_plan.vllm.index("--tensor-parallel-size") + 1])
        _write(
            where / "server.sbatch",
            render(
                "server.sbatch.j2",
                **common,
                job_name="evalkit-server",
                preset=serve_plan.preset,
                served_name=serve_plan.served_name,
                nodes=sub.server["nodes"],
                gpus_per_node=sub.server["gpus_per_node"],
                gpus=serve_plan.gpus,
                tensor_parallel=tp,
                pipeline_parallel=serve_plan.gpus // tp,
                ray_head=serve_plan.ray_head,
                ray_worker=serve_plan.ray_worker,
                ray_port=int(serve_plan.ray_head[-1]) if serve_plan.ray_head else None,
                vllm=serve_plan.vllm,
                port=serve_plan.port,
                endpoint_file=sub.server["endpoint_file"],
                key_file=sub.server["key_file"],
                start_timeout_s=SERVER_START_S,
            ),
        )
        _write(
            where / "server-stop.sbatch",
            render("server-stop.sbatch.j2", **common, job_name="evalkit-server-stop"),
        )
        server = {**sub.server, "wait_s": SERVER_WAIT_S}
    for suite in sub.suites:
        _write(
            where / f"eval-{suite}.sbatch",
            render(
                "eval.sbatch.j2",
                **common,
                job_name=f"evalkit-{suite}",
                suite=suite,
                model=sub.model,
                eval_model=sub.eval_model,
                shards=sub.shards,
                run_args=sub.run_args,
                cpus_per_task=s["cpus_per_task"],
                # Behind a server the tasks are clients; otherwise they hold the model.
                gpus_per_node=None if server else s["gpus_per_node"],
                server=server,
            ),
        )
        _write(
            where / f"merge-{suite}.sbatch",
            render(
                "merge.sbatch.j2",
                **common,
                job_name=f"evalkit-merge-{suite}",
                suite=suite,
                shards=sub.shards,
            ),
        )
    _write(
        where / "report.sbatch",
        render("report.sbatch.j2", **common, job_name="evalkit-report", site_dir=str(sub.site_dir)),
    )


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)


def submit_jobs(
    sub: Submission,
    shards: dict[str, list[int]],
    merges: set[str],
    report: bool,
    *,
    wait_evals: dict[str, list[str]] | None = None,
    wait_merges: Sequence[str] = (),
    server_id: str | None = None,
) -> list[Job]:
    """Submit eval arrays for `shards`, merges for `merges`, the report; each waits (afterok)
    also on the still-active jobs named in `wait_evals` (suite -> task keys) and `wait_merges`.
    On any failure, cancel what this call submitted, and raise."""
    new: list[Job] = []
    stamp = _now().isoformat(timespec="seconds")

    def submit_one(job: Job, args: Sequence[str] = ()) -> str:
        job.job_id = scheduler.sbatch(
            sub.path / job.script, dependency=job.dependency, array=job.array, args=args
        )
        job.submitted_at = stamp
        new.append(job)
        return job.job_id

    wait_evals = wait_evals or {}
    try:
        any_eval = any(shards.values())
        if sub.server is not None and any_eval and server_id is None:
            server_id = submit_one(Job("server", "evalkit-server", "server.sbatch"))
        eval_ids: dict[str, str] = {}
        for suite, indices in shards.items():
            if indices:
                eval_ids[suite] = submit_one(
                    Job(
                        "eval",
                        f"evalkit-{suite}",
                        f"eval-{suite}.sbatch",
                        suite=suite,
                        array=sorted(indices),
                        dependency=f"after:{server_id}" if server_id else None,
                    ),
                    args=[server_id] if server_id else (),
                )
        if server_id is not None and any_eval:
            upstream = [*eval_ids.values(), *(k for v in wait_evals.values() for k in v)]
            submit_one(
                Job(
                    "server-stop",
                    "evalkit-server-stop",
                    "server-stop.sbatch",
                    dependency="afterany:" + ":".join(upstream),
                ),
                args=[server_id],
            )
        merge_ids = []
        for suite in sub.suites:
            if suite not in merges:
                continue
            upstream = [
                *([eval_ids[suite]] if suite in eval_ids else []),
                *wait_evals.get(suite, []),
            ]
            merge_ids.append(
                submit_one(
                    Job(
                        "merge",
                        f"evalkit-merge-{suite}",
                        f"merge-{suite}.sbatch",
                        suite=suite,
                        dependency="afterok:" + ":".join(upstream) if upstream else None,
                    )
                )
            )
        if report:
            upstream = [*merge_ids, *wait_merges]
            submit_one(
                Job(
                    "report",
                    "evalkit-report",
                    "report.sbatch",
                    dependency="afterok:" + ":".join(upstream) if upstream else None,
                )
            )
    except BaseException:
        scheduler.cancel(j.job_id for j in new if j.job_id)
        raise
    sub.jobs += new
    return new


def planned_commands(sub: Submission) -> list[str]:
    """The sbatch commands `submit` runs, for --dry-run (`<name>` stands for a job id)."""
    lines = []
    if sub.server:
        lines.append(f"sbatch {sub.path / 'server.sbatch'}")
    for suite in sub.suites:
        dep = " --dependency=after:<server>" if sub.server else ""
        arg = " <server>" if sub.server else ""
        lines.append(
            f"sbatch --array=0-{sub.shards - 1}{dep} {sub.path / f'eval-{suite}.sbatch'}{arg}"
        )
    if sub.server:
        evals = ":".join(f"<eval-{s}>" for s in sub.suites)
        lines.append(
            f"sbatch --dependency=afterany:{evals} {sub.path / 'server-stop.sbatch'} <server>"
        )
    for suite in sub.suites:
        lines.append(
            f"sbatch --dependency=afterok:<eval-{suite}> {sub.path / f'merge-{suite}.sbatch'}"
        )
    merges = ":".join(f"<merge-{s}>" for s in sub.suites)
    lines.append(f"sbatch --dependency=afterok:{merges} {sub.path / 'report.sbatch'}")
    return lines
