"""The `button-ray` command: generate, plan, scenarios, export, card, inspect, filter, validate, fetch-model.

Configuration problems are reported before Ray or any engine starts, naming the field.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError


def _config_error(exc: ValidationError) -> str:
    lines = [f"invalid configuration ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def _load(args: argparse.Namespace):
    from button_ray.config import load_config

    overrides = list(args.set or [])
    if getattr(args, "output", None):
        overrides.append(f"output.uri={args.output}")
    if getattr(args, "prompts", None):
        # JSON quoting: override values are read as YAML, and a path may hold ': ' or '#'.
        overrides.append(f"method.prompts_dir={json.dumps(str(args.prompts))}")
    return load_config(args.config, overrides)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def cmd_generate(args: argparse.Namespace) -> int:
    from button_ray import summary
    from button_ray.pipeline import run_generate

    if args.target_accepted is not None and args.num_scenarios is not None:
        print("button-ray: --target-accepted and --num-scenarios both say how much to run: give one",
              file=sys.stderr)
        return 2
    cfg = _load(args)
    result = run_generate(cfg, limit=args.num_scenarios, target_accepted=args.target_accepted)
    summary.render(result)
    print(f"output: {cfg.output.uri} (summary.json, manifest.json)")
    target = result.get("target")
    if target is not None and not target["reached"]:
        print(f"button-ray: target not reached: {target['stopped']}", file=sys.stderr)
        return 1
    if target is not None:
        print(f"target reached: {target['committed_accepted']} accepted trajectories committed "
              f"(asked {target['accepted']})")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from rich.console import Console

    from button_ray import plan, summary
    from button_ray.card import render_examples
    from button_ray.plan_job import run_plan

    cfg = _load(args)
    doc = run_plan(cfg, sample=args.sample, target=args.target, throughput=args.throughput, examples=args.examples)
    Console(width=120).print(summary.funnel_table(doc["sample"]["funnel"]))
    render_examples([(e["record_id"], e["messages"]) for e in doc["sample"]["examples"]])
    plan.render(doc)
    print(f"throughput: {doc['throughput_assumption']}")
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"plan: {args.out}")
    return 0


def cmd_scenarios(args: argparse.Namespace) -> int:
    from button_ray.scenario_job import run_scenario_job

    cfg = _load(args)
    result = run_scenario_job(cfg, seeds=args.seeds, base=args.base, target=args.target, out_path=args.out)
    print(json.dumps(result, indent=1))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from button_ray.export import export

    if args.validate and args.format != "button":
        print("button-ray: --validate checks the BUTTON format only; drop it or use --format button",
              file=sys.stderr)
        return 2
    result = export(args.run, args.out, args.format, max_rows_per_file=args.max_rows_per_file)
    where = result.files[0] if len(result.files) == 1 else f"{len(result.files)} files in {args.out}"
    print(f"wrote {result.rows} trajectories ({args.format}) to {where}")
    if not result.finished:
        print(f"note: {args.run} is not finished (no _SUCCESS): exported what its {result.shards} committed "
              "shards hold; export again when the run is done")
    if result.dataset_info is not None:
        print(f"LLaMA-Factory dataset_info.json entry (added to {result.dataset_info_file}):")
        print(json.dumps(result.dataset_info, indent=2))
    if args.validate:
        return max(cmd_validate(argparse.Namespace(path=path)) for path in result.files)
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from button_ray.card import CARD_FILE, PLOTS_DIR, write_card

    run = write_card(args.run)
    root = args.run.rstrip("/")
    print(f"wrote {root}/{CARD_FILE} and {root}/{PLOTS_DIR}/*.png ({run.rows} trajectories, "
          f"{'finished' if run.finished else 'not finished'})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from button_ray.card import collect, render_inspect

    render_inspect(collect(args.run, examples=args.n))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from button_ray.button_format import validate_jsonl

    report = validate_jsonl(args.path)
    print(json.dumps(report, indent=1))
    return 0 if report["invalid"] == 0 else 1


def cmd_filter(args: argparse.Namespace) -> int:
    from button_ray.file_filter import filter_jsonl

    cfg = _load(args)
    if not Path(args.input).is_file():
        print(f"button-ray: input file {args.input} does not exist", file=sys.stderr)
        return 2
    summary = filter_jsonl(args.input, args.out, cfg.method, args.report)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_fetch_model(args: argparse.Namespace) -> int:
    from button_ray.model_cache import fetch

    done, skipped = fetch(_load(args))
    for model, why in skipped.items():
        print(f"skipped {model}: {why}")
    for ref, path in done:
        print(f"cached {ref.repo_id}{'@' + ref.revision if ref.revision else ''} in {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="button-ray", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, prompts: bool = True) -> None:
        p.add_argument("--config", type=Path, help="YAML config (default: built-in defaults)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config field, e.g. --set method.parallel_ratio=0.7")
        if prompts:
            p.add_argument("--prompts", type=Path, metavar="DIR",
                           help="read the prompt templates from DIR (a copy of prompts/); overrides "
                                "method.prompts_dir")

    g = sub.add_parser("generate", help="generate BUTTON trajectories (resumes an existing output)")
    common(g)
    g.add_argument("--output", help="output URI (local path, s3://...); overrides output.uri")
    g.add_argument("--num-scenarios", type=_positive_int, default=None,
                   help="use the first N scenarios (N >= 1; a resume may change it)")
    g.add_argument("--target-accepted", type=_positive_int, default=None, metavar="T",
                   help="keep generating, in rounds sized from the measured yield, until T accepted trajectories "
                        "are committed (the pool: every scenario, up to scenarios.limit)")
    g.set_defaults(fn=cmd_generate)

    pl = sub.add_parser("plan", help="check a config against the cluster, run a small sample, and estimate what a "
                                     "target number of accepted trajectories costs")
    common(pl)
    pl.add_argument("--output", help="the output the run would write (checked like generate checks it; the sample "
                                     "never writes there)")
    pl.add_argument("--sample", type=_positive_int, default=4, metavar="N",
                    help="scenarios to sample, at the configured slots each (default: 4)")
    pl.add_argument("--target", type=_positive_int, default=None, metavar="T",
                    help="accepted trajectories to estimate the cost of")
    pl.add_argument("--throughput", type=_positive_float, default=None, metavar="TOK_S",
                    help="completion tokens/s per replica to plan with instead of the sample's (e.g. a GPU's, "
                         "for a plan sampled on CPU)")
    pl.add_argument("--examples", type=int, default=3, metavar="N", help="accepted records to print (default: 3)")
    pl.add_argument("--out", default="plan.json", help="where to write the plan (default: plan.json)")
    pl.set_defaults(fn=cmd_plan)

    s = sub.add_parser("scenarios", help="extract, expand and deduplicate a scenario pool (a Ray Data stream "
                                         "on the config's pools)")
    common(s)
    s.add_argument("--seeds", help="seed conversations (.jsonl: glaive system/chat rows or message lists)")
    s.add_argument("--base", default="default", help="base scenario list (.txt) or 'default'")
    s.add_argument("--target", type=int, default=500, help="pool size to reach by expansion")
    s.add_argument("--out", required=True, help="where to write the pool (.txt, one per line)")
    s.set_defaults(fn=cmd_scenarios)

    e = sub.add_parser("export", help="write a run's committed trajectories as JSON Lines for trainers")
    e.add_argument("run", help="the run's output URI (local path, s3://...)")
    e.add_argument("out", help="the .jsonl file to write (local path, s3://...); with --max-rows-per-file, "
                               "a new or empty folder for the parts")
    e.add_argument("--format", choices=("button", "openai", "sharegpt"), default="button",
                   help="button: exact BUTTONInstruct records; openai: messages with tool_calls + tools "
                        "(TRL, axolotl); sharegpt: LLaMA-Factory (default: button)")
    e.add_argument("--max-rows-per-file", type=_positive_int, metavar="N",
                   help="split the output into part files of at most N rows")
    e.add_argument("--validate", action="store_true", help="run the strict BUTTON validator on it")
    e.set_defaults(fn=cmd_export)

    c = sub.add_parser("card", help="(re)write a run's dataset card: README.md and card/*.png at its root")
    c.add_argument("run", help="the run's output URI")
    c.set_defaults(fn=cmd_card)

    i = sub.add_parser("inspect", help="print a run's statistics and example dialogues (committed shards only)")
    i.add_argument("run", help="the run's output URI")
    i.add_argument("-n", type=int, default=2, metavar="N", help="example dialogues to show (default: 2)")
    i.set_defaults(fn=cmd_inspect)

    f = sub.add_parser("filter", help="keep the records of a BUTTON .jsonl file that pass the structure and "
                       "content rules (method.* settings of the config); report every dropped line")
    common(f, prompts=False)
    f.add_argument("input", help="a BUTTON JSON Lines file (ours or anyone's)")
    f.add_argument("out", help="the .jsonl file to write the kept records to")
    f.add_argument("--report", help="write a JSON report: counts per reason and one entry per dropped line")
    f.set_defaults(fn=cmd_filter)

    v = sub.add_parser("validate", help="check a BUTTON .jsonl file against the exact format")
    v.add_argument("path")
    v.set_defaults(fn=cmd_validate)

    m = sub.add_parser("fetch-model", help="download the models of the config's pools into the Hugging Face "
                       "cache (HF_HOME), so that replicas load them from disk")
    common(m, prompts=False)
    m.set_defaults(fn=cmd_fetch_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from button_ray.errors import LLMUnavailableError, UserError

    try:
        return args.fn(args)
    except ValidationError as exc:
        print(f"button-ray: {_config_error(exc)}", file=sys.stderr)
        return 2
    except (UserError, FileNotFoundError) as exc:
        # FileNotFoundError: a path named on the command line (validate, export) that is not there.
        print(f"button-ray: {exc}", file=sys.stderr)
        return 2
    except LLMUnavailableError as exc:
        print(f"button-ray: the job stopped, no engine answered: {exc}; what was committed is kept, "
              "and the same command resumes", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
