"""`evalkit` command line. Imports stay inside the commands so that `evalkit --help` is instant
(no numpy, no openai, never torch)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from evalkit.runner import RunConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, exit 2: bad input is a user error, not a usage dump."""
        self.exit(2, f"evalkit: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="evalkit",
        description="Reproducible LLM evaluation: GSM8K, MATH, MATH-500, HumanEval.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="evaluate a model on a suite (resumes an unfinished run)")
    run.add_argument("--suite", required=True, help="suite name (see `evalkit list suites`)")
    run.add_argument(
        "--model",
        required=True,
        help="local | openai:<model> | vllm:<repo> | replay:<file> | <preset>[@<route>]",
    )
    run.add_argument(
        "--protocol", help="published settings to default to (see `evalkit list protocols`)"
    )
    run.add_argument("--mode", help="prompt mode, e.g. chat or base (default: the suite's)")
    run.add_argument("--limit", type=_positive_int, help="only the first N items")
    # None = not given: the protocol's value, else evalkit's default (see evalkit.protocols).
    run.add_argument(
        "--samples",
        "--trials",
        dest="samples",
        type=_positive_int,
        help="samples (trials) per item (default: the suite's, 1 except tau2's 4)",
    )
    run.add_argument("--temperature", type=_non_negative_float, help="default 0")
    run.add_argument("--top-p", type=_non_negative_float)
    run.add_argument("--max-tokens", type=_positive_int, help="default 2048")
    run.add_argument("--system-prompt", help="system message for chat requests ('' for none)")
    run.add_argument("--seed", type=int, default=1234)
    run.add_argument("--concurrency", type=_positive_int, default=8, help="requests in flight")
    run.add_argument("--shard", help="i/n: run only the i-th of n deterministic shards")
    run.add_argument("--data-dir", help="local data folder (default: $EVALKIT_DATA_DIR or hub)")
    run.add_argument(
        "--results-dir", help="results store (default: $EVALKIT_RESULTS_DIR or ./results)"
    )
    run.add_argument(
        "--base-url", help="OpenAI-compatible endpoint (default: preset or $OPENAI_BASE_URL)"
    )
    run.add_argument("--api-key-env", help="environment variable holding the API key")
    run.add_argument(
        "--request-timeout", type=_positive_float, default=600.0, help="seconds per attempt"
    )
    run.add_argument(
        "--max-attempts", type=_positive_int, default=6, help="per request, retries included"
    )
    run.add_argument(
        "--allow-data-mismatch",
        action="store_true",
        help="run even if the data fingerprint differs from the pinned one (recorded)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--no-cache",
        action="store_true",
        help="bypass the response cache ($EVALKIT_CACHE_DIR or ~/.cache/evalkit)",
    )

    agent = run.add_argument_group("agentic suites (tau2-*, bfcl multi-turn)")
    agent.add_argument(
        "--user-model",
        help="simulated user: a model spec, or 'scripted' (default: the suite's, e.g. gpt-4.1)",
    )
    # Unset: the suite's own (Suite.default_budget); each flag given replaces its field only.
    agent.add_argument(
        "--max-steps",
        type=_positive_int,
        help="messages per episode (default: the suite's; tau2: 200, bfcl: no limit)",
    )
    agent.add_argument(
        "--max-errors",
        type=_positive_int,
        help="tool errors per episode (default: the suite's; tau2: 10, bfcl: no limit)",
    )
    agent.add_argument(
        "--episode-timeout",
        type=_positive_float,
        help="seconds per episode (default: the suite's; tau2 and bfcl: 1800)",
    )

    vllm = run.add_argument_group("vLLM engine (vllm:<repo> and <preset>@vllm)")
    vllm.add_argument("--tensor-parallel-size", type=_positive_int)
    vllm.add_argument("--pipeline-parallel-size", type=_positive_int)
    vllm.add_argument("--enable-expert-parallel", action="store_true", default=None)
    vllm.add_argument("--max-model-len", type=_positive_int)
    vllm.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=None,
        help="run the repo's own code (vllm and hf; default: the preset's setting)",
    )

    hf = run.add_argument_group("transformers engine (hf:<repo|folder|.gguf> and <preset>@hf)")
    hf.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    hf.add_argument(
        "--device-map", default="auto", help="auto (replicas when it fits) | cpu | cuda:N"
    )
    hf.add_argument("--max-memory", help="per-device cap, e.g. 0=70GiB,1=70GiB,cpu=200GiB")
    hf.add_argument("--offload-folder", help="disk offload for what fits nowhere in --max-memory")
    hf.add_argument("--revision", help="hub branch, tag or commit (default: the preset's pin)")
    hf.add_argument("--batch-size", type=_positive_int, default=8, help="per model replica")

    lst = sub.add_parser("list", help="list suites, model presets or protocols")
    lst.add_argument("what", choices=("suites", "models", "protocols"))

    serve = sub.add_parser("serve", help="print (and run) the vLLM server command for a preset")
    serve.add_argument("preset", help="a preset with weights, e.g. kimi-k2-instruct")
    serve.add_argument("--dry-run", action="store_true", help="print the commands only")
    serve.add_argument("--nodes", type=_positive_int, help="default: the preset's layout")
    serve.add_argument("--gpus-per-node", type=_positive_int, help="default: the preset's")
    serve.add_argument("--port", type=_positive_int, default=8000)
    serve.add_argument("--head-address", help="head node address (default: this host's name)")

    res = sub.add_parser("results", help="table of stored runs")
    res.add_argument("--results-dir")
    res.add_argument("--suite", help="only this suite")

    merge = sub.add_parser("merge", help="merge finished shard runs into one run")
    merge.add_argument("run_ids", nargs="+", help="the shard runs, all shards of one config")
    merge.add_argument("--results-dir")

    plan = sub.add_parser("plan", help="capacity plan: weights, device map, KV cache, layouts")
    plan.add_argument("--model", required=True, help="kimi-k2-instruct | kimi-k2-base | ...")
    plan.add_argument("--gpus", type=_positive_int, required=True, help="GPUs in all")
    plan.add_argument("--gpu-mem", default="80GiB", help="memory per GPU, e.g. 80GiB, 141GiB")
    plan.add_argument("--nodes", type=_positive_int, help="nodes (default: 8 GPUs per node)")
    plan.add_argument("--context", type=_positive_int, help="tokens per sequence (default: max)")
    plan.add_argument("--reserve", help="per-GPU memory kept for activations (default: 10%%)")
    plan.add_argument("--analytic", action="store_true", help="no meta-device build (no torch)")
    plan.add_argument("--json", action="store_true", help="machine-readable plan")

    compare = sub.add_parser(
        "compare", help="paired comparison of two runs: B − A with 95%% CI and p-value"
    )
    compare.add_argument("run_a", help="run id of A")
    compare.add_argument("run_b", help="run id of B (the difference is B − A)")
    compare.add_argument("--results-dir")
    compare.add_argument(
        "--force", action="store_true", help="compare runs of different data/prompt/protocol"
    )
    compare.add_argument("--json", action="store_true", help="machine-readable comparison")

    report = sub.add_parser(
        "report", help="static HTML leaderboard, tables and plots from the finished runs"
    )
    report.add_argument("--out", default="reports/site", help="site folder (default reports/site)")
    report.add_argument("--results-dir")
    report.add_argument(
        "--runs", nargs="+", metavar="RUN_ID", help="only these runs (default: latest per group)"
    )
    report.add_argument(
        "--compare",
        nargs=2,
        action="append",
        default=[],
        metavar=("RUN_A", "RUN_B"),
        help="pin a paired comparison B − A (repeatable; default: every pair in a column)",
    )
    report.add_argument(
        "--force",
        action="store_true",
        help="compare pinned runs of different data/prompt/protocol (the report says so)",
    )
    slurm = sub.add_parser("slurm", help="run suites as Slurm jobs: submit, status, resume, cancel")
    slurm_sub = slurm.add_subparsers(dest="slurm_command", required=True, parser_class=_Parser)
    sbmt = slurm_sub.add_parser(
        "submit",
        help="render sbatch scripts (server, eval arrays, merges, report) and submit them",
        description="Flags after `--` go to every `evalkit run`, e.g. -- --limit 40 --samples 5.",
    )
    sbmt.add_argument("--suite", action="append", required=True, help="repeatable")
    sbmt.add_argument("--model", required=True, help="as for `evalkit run`; <preset>@vllm: served")
    sbmt.add_argument("--shards", type=_positive_int, required=True, help="array tasks per suite")
    sbmt.add_argument("--partition")
    sbmt.add_argument("--account")
    sbmt.add_argument("--time", help="per job, e.g. 04:00:00 (default: the partition's)")
    sbmt.add_argument(
        "--gpus-per-node", type=_positive_int, help="per eval task, or per server node (vllm)"
    )
    sbmt.add_argument("--nodes", type=_positive_int, help="model-server nodes (default: preset's)")
    sbmt.add_argument("--cpus-per-task", type=_positive_int)
    sbmt.add_argument("--port", type=_positive_int, default=8000, help="model server's port")
    sbmt.add_argument("--setup", default="", help="shell run first in every job (module, venv)")
    sbmt.add_argument("--setup-file", help="a file of such shell lines")
    sbmt.add_argument(
        "--evalkit", help="how jobs call evalkit (default: python -m evalkit after --setup)"
    )
    sbmt.add_argument("--workdir", help="jobs' working directory (default: this one)")
    sbmt.add_argument("--results-dir")
    sbmt.add_argument("--dry-run", action="store_true", help="write the scripts, submit nothing")
    sbmt.add_argument("run_args", nargs="*", help="after --: flags for `evalkit run`")
    for name, text in (
        ("status", "jobs, shards done vs remaining, logs (cancels jobs that can never run)"),
        ("resume", "resubmit unfinished shards, then their merges and the report"),
        ("cancel", "cancel the submission's pending and running jobs"),
    ):
        cmd = slurm_sub.add_parser(name, help=text)
        cmd.add_argument("submission", help="submission folder, or its id under the results dir")
        cmd.add_argument("--results-dir")
        if name == "status":
            cmd.add_argument("--json", action="store_true", help="machine-readable status")
    mrg = slurm_sub.add_parser("merge", help="merge a submission's shards of a suite (merge job)")
    mrg.add_argument("submission")
    mrg.add_argument("--suite", required=True)
    mrg.add_argument("--results-dir")
    return parser


def cmd_run(args: argparse.Namespace) -> None:
    from evalkit.runner import execute

    run = execute(run_config(args))
    print_run(run.summary(), run.path)


def run_config(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of parsed `evalkit run` arguments (also used by `evalkit slurm submit`,
    which plans every shard's run to know its config hash)."""
    from evalkit import protocols
    from evalkit.models import ModelOptions
    from evalkit.records import GenerationParams
    from evalkit.registry import get_suite
    from evalkit.runner import RunConfig, parse_shard

    suite = get_suite(args.suite)
    settings = protocols.resolve(
        args.protocol,
        args.suite,
        {k: getattr(args, k) for k in protocols.SETTINGS},
        suite_defaults={"samples": suite.default_samples},
    )
    # The suite's budget, with only the limits given as flags replaced.
    flags = {
        "max_steps": args.max_steps,
        "max_errors": args.max_errors,
        "max_time_s": args.episode_timeout,
    }
    budget = dataclasses.replace(
        suite.default_budget, **{k: v for k, v in flags.items() if v is not None}
    )
    return RunConfig(
        suite=args.suite,
        model=args.model,
        mode=settings.mode,
        params=GenerationParams(
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_tokens=settings.max_tokens,
            seed=args.seed,
        ),
        samples=settings.samples,
        protocol=settings.protocol,
        protocol_overrides=settings.overrides,
        system_prompt=settings.system_prompt,
        limit=args.limit,
        shard=parse_shard(args.shard) if args.shard else None,
        data_dir=args.data_dir,
        results_dir=args.results_dir,
        allow_data_mismatch=args.allow_data_mismatch,
        model_options=ModelOptions(
            base_url=args.base_url,
            api_key_env=args.api_key_env,
            timeout_s=args.request_timeout,
            max_attempts=args.max_attempts,
            concurrency=args.concurrency,
            tensor_parallel_size=args.tensor_parallel_size,
            pipeline_parallel_size=args.pipeline_parallel_size,
            enable_expert_parallel=args.enable_expert_parallel,
            max_model_len=args.max_model_len,
            trust_remote_code=args.trust_remote_code,
            dtype=args.dtype,
            device_map=args.device_map,
            max_memory=args.max_memory,
            offload_folder=args.offload_folder,
            revision=args.revision,
            batch_size=args.batch_size,
        ),
        progress=not args.no_progress,
        cache=not args.no_cache,
        user_model=args.user_model,
        budget=budget,
    )


def print_run(summary: dict[str, Any], path: Any) -> None:
    from evalkit.report_text import format_metric

    print(f"run {summary['run_id']}  ({path})")
    c = summary["counts"]
    print(
        f"  {summary['config']['suite']} [{summary['config']['mode']}]  "
        f"model {summary['config']['model']}  items {c['items']}  samples {c['samples']}  "
        f"errors {c['errors']}  truncated {c['truncated']}"
    )
    for name, m in summary["metrics"].items():
        print(f"  {name:10s} {format_metric(m)}")


def cmd_list(args: argparse.Namespace) -> None:
    if args.what == "suites":
        from evalkit.registry import all_suites

        for name, suite in all_suites().items():
            print(f"{name:10s} modes={','.join(suite.modes):18s} {suite.description}")
            print(f"{'':10s} ids: {suite.id_doc}")
    elif args.what == "protocols":
        from evalkit.protocols import PROTOCOLS

        for proto in PROTOCOLS.values():
            print(f"{proto.name:14s} {proto.description}")
            for suite_name, d in proto.defaults_table().items():
                print(f"{'':14s}   {suite_name:10s} {d}")
    else:
        from evalkit.models import PRESETS

        for p in PRESETS.values():
            print(f"{p.name:16s} {p.description}")
            for key, r in p.routes.items():
                mark = "*" if key == p.default_route else " "
                print(f"{'':16s} {mark} @{key:9s} {r.backend}:{r.model}")
            if p.hf_repo:
                print(f"{'':16s}   weights {p.hf_repo} revision {p.revision or 'unpinned'}")
        print("(* default route; pick another with <preset>@<route>)")
        print(f"{'openai:<model>':10s} any OpenAI-compatible endpoint (--base-url)")
        print(f"{'vllm:<repo>':10s} weights on vLLM's offline engine (pip install 'evalkit[vllm]')")
        print(f"{'replay:<file>':10s} recorded responses, one {{id, response}} JSON line each")


def cmd_results(args: argparse.Namespace) -> None:
    from evalkit.report_text import results_table
    from evalkit.store import Store, results_root

    print(results_table(Store(results_root(args.results_dir)), suite=args.suite))


def cmd_merge(args: argparse.Namespace) -> None:
    from evalkit.merge import merge_runs
    from evalkit.store import Store, results_root

    run = merge_runs(Store(results_root(args.results_dir)), args.run_ids)
    print_run(run.summary(), run.path)


def cmd_serve(args: argparse.Namespace) -> None:
    from evalkit import serve

    plan = serve.serve_plan(
        args.preset,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        port=args.port,
        head_address=args.head_address,
    )
    print(serve.format_plan(plan))
    if not args.dry_run:
        serve.launch(plan)


def cmd_plan(args: argparse.Namespace) -> None:
    import json

    from evalkit import planner

    result = planner.make_plan(
        args.model,
        args.gpus,
        gpu_mem=args.gpu_mem,
        nodes=args.nodes,
        context=args.context,
        reserve=args.reserve,
        use_meta=not args.analytic,
    )
    print(json.dumps(result, indent=2) if args.json else planner.format_plan(result))


def cmd_compare(args: argparse.Namespace) -> None:
    import json

    from evalkit.compare import compare_runs, format_comparison
    from evalkit.store import Store, results_root

    store = Store(results_root(args.results_dir))
    result = compare_runs(store.get(args.run_a), store.get(args.run_b), force=args.force)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_comparison(result))


def cmd_report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from evalkit.reports.site import build_site
    from evalkit.store import Store, results_root

    report = build_site(
        Store(results_root(args.results_dir)),
        Path(args.out),
        run_ids=args.runs,
        compare=[tuple(pair) for pair in args.compare],
        force=args.force,
    )
    runs, pairs = len(report.run_ids), report.comparisons
    print(
        f"report of {runs} run{'' if runs == 1 else 's'}: {report.claims_measured} of "
        f"{report.claims} claims measured, {pairs} paired comparison{'' if pairs == 1 else 's'}, "
        f"{report.files} files"
    )
    print(f"  open {report.out / 'index.html'}")


def cmd_slurm(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from evalkit.errors import EvalkitError
    from evalkit.slurm import status as slurm_status
    from evalkit.slurm.submission import Submission

    if args.slurm_command == "submit":
        from evalkit.slurm.submit import SubmitOptions, planned_commands, submit

        setup = args.setup
        if args.setup_file:
            try:
                setup = "\n".join([setup, Path(args.setup_file).read_text(encoding="utf-8")])
            except OSError as exc:
                raise EvalkitError(f"cannot read --setup-file: {exc}") from None
        sub = submit(
            SubmitOptions(
                suites=args.suite,
                model=args.model,
                shards=args.shards,
                run_args=args.run_args,
                results_dir=args.results_dir,
                partition=args.partition,
                account=args.account,
                time=args.time,
                gpus_per_node=args.gpus_per_node,
                nodes=args.nodes,
                cpus_per_task=args.cpus_per_task,
                port=args.port,
                setup=setup,
                evalkit=args.evalkit,
                workdir=args.workdir,
                dry_run=args.dry_run,
            )
        )
        if sub.dry_run:
            print(f"dry run: scripts in {sub.path}; submitting would run:")
            print("\n".join(f"  {line}" for line in planned_commands(sub)))
            return
        print(f"submission {sub.submission_id}  ({sub.path})")
        for job in sub.jobs:
            after = f"  after {job.dependency}" if job.dependency else ""
            print(f"  {job.name:24s} {job.job_id}{after}")
        print(f"  follow it with: evalkit slurm status {sub.path}")
        return
    if args.slurm_command == "merge":
        from evalkit.slurm.shards import merge_suite

        sub = Submission.load(args.submission, args.results_dir)
        run, made = merge_suite(sub, args.suite)
        if not made:
            print(f"{args.suite}: already merged as {run.run_id}")
        print_run(run.summary(), run.path)
        return
    sub = Submission.load(args.submission, args.results_dir)
    if args.slurm_command == "status":
        state = slurm_status.collect(sub)
        print(json.dumps(state, indent=2) if args.json else slurm_status.format_status(state))
    elif args.slurm_command == "resume":
        jobs = slurm_status.resume(sub)
        if not jobs:
            print(f"submission {sub.submission_id}: nothing to resume, everything is done")
        for job in jobs:
            shards = f" shards {','.join(map(str, job.array))}" if job.array else ""
            print(f"  {job.name:24s} {job.job_id}{shards}")
    else:
        cancelled = slurm_status.cancel(sub)
        print(f"cancelled {', '.join(cancelled) if cancelled else 'nothing (no active jobs)'}")


COMMANDS = {
    "slurm": cmd_slurm,
    "report": cmd_report,
    "compare": cmd_compare,
    "plan": cmd_plan,
    "run": cmd_run,
    "list": cmd_list,
    "results": cmd_results,
    "merge": cmd_merge,
    "serve": cmd_serve,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from evalkit.errors import EvalkitError

    try:
        COMMANDS[args.command](args)
    except EvalkitError as exc:
        print(f"evalkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("evalkit: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
