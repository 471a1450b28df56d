"""`evalkit` command line. Imports stay inside the commands so that `evalkit --help` is instant
(no numpy, no openai, never torch)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn


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
        "--model", required=True, help="local | openai:<model> | replay:<file> | preset"
    )
    run.add_argument("--mode", help="prompt mode, e.g. chat or base (default: the suite's)")
    run.add_argument("--limit", type=_positive_int, help="only the first N items")
    run.add_argument("--samples", type=_positive_int, default=1, help="samples per item (pass@k)")
    run.add_argument("--temperature", type=_non_negative_float, default=0.0)
    run.add_argument("--top-p", type=_non_negative_float)
    run.add_argument("--max-tokens", type=_positive_int, default=2048)
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

    lst = sub.add_parser("list", help="list suites or model presets")
    lst.add_argument("what", choices=("suites", "models"))

    res = sub.add_parser("results", help="table of stored runs")
    res.add_argument("--results-dir")
    res.add_argument("--suite", help="only this suite")

    merge = sub.add_parser("merge", help="merge finished shard runs into one run")
    merge.add_argument("run_ids", nargs="+", help="the shard runs, all shards of one config")
    merge.add_argument("--results-dir")
    return parser


def cmd_run(args: argparse.Namespace) -> None:
    from evalkit.models import ModelOptions
    from evalkit.records import GenerationParams
    from evalkit.runner import RunConfig, execute, parse_shard

    config = RunConfig(
        suite=args.suite,
        model=args.model,
        mode=args.mode,
        params=GenerationParams(
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_tokens,
            seed=args.seed,
        ),
        samples=args.samples,
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
        ),
        progress=not args.no_progress,
    )
    run = execute(config)
    print_run(run.summary(), run.path)


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
    else:
        from evalkit.models import PRESETS

        for p in PRESETS.values():
            print(f"{p.name:10s} {p.backend}:{p.model:24s} {p.description}")
        print(f"{'openai:<model>':10s} any OpenAI-compatible endpoint (--base-url)")
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


COMMANDS = {"run": cmd_run, "list": cmd_list, "results": cmd_results, "merge": cmd_merge}


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
