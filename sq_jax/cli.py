"""The `sq-jax` command: thin argument parsing, one function call per subcommand."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path



def _init_tiny(args: argparse.Namespace) -> None:
    from sq_jax.toy.tiny import build_tiny

    out = build_tiny(args.out_dir, seed=args.seed, vocab_size=args.vocab_size)
    print(f"tiny model written to {out}")


def _convert(args: argparse.Namespace) -> None:
    from sq_jax.models.checkpoint import convert

    out = convert(args.src, args.dst, to=args.to, dtype=args.dtype)
    print(f"converted {args.src} -> {out} ({args.to})")


def _sample(args: argparse.Namespace) -> None:
    from sq_jax.models.hf_io import load_pretrained, resolve_model_dir
    from sq_jax.models.tokenizer import detect_prompt_format, encode_prompt, load_tokenizer, stop_token_ids
    from sq_jax.prompts.formats import get_prompt_format
    from sq_jax.sampling.simple import generate

    model_dir = resolve_model_dir(args.model)
    tokenizer = load_tokenizer(str(model_dir))
    fmt = get_prompt_format(args.format) if args.format else detect_prompt_format(tokenizer)
    prompt = fmt.pre_query_template if args.prompt is None else fmt.solver_prompt(args.prompt)
    model = load_pretrained(model_dir, dtype=args.dtype)
    ids = encode_prompt(tokenizer, prompt)
    outputs = generate(
        model, [ids] * args.num, max_new_tokens=args.max_new_tokens, stop_ids=stop_token_ids(tokenizer, fmt),
        temperature=args.temperature, seed=args.seed,
    )
    for tokens in outputs:
        print(json.dumps({"prompt": prompt, "output": tokenizer.decode(tokens, skip_special_tokens=False)}))


def _plan(args: argparse.Namespace) -> None:
    from sq_jax.pipeline.plan import report

    print(report(args.config, args.overrides, args.device))


def _train(args: argparse.Namespace) -> None:
    from sq_jax.configlib import load_config
    from sq_jax.train.config import TrainConfig
    from sq_jax.train.trainer import run_training

    cfg = load_config(TrainConfig, args.config, args.overrides)
    if cfg.task != args.command:
        raise ValueError(f"{args.config}: task is {cfg.task!r} but the command is {args.command!r}")
    result = run_training(cfg)
    print(json.dumps({"steps": result.steps, "final_loss": result.final_loss, "eval_loss": result.eval_loss,
                      "eval": result.eval_metrics, "output_dir": str(result.output_dir), "data": result.data_stats}))


# `sq-jax eval` flags: shorthands for EvalConfig keys (flag name -> dotted key). A flag given sets its key over the
# config file's; `a.b=c` overrides win over both; a key set nowhere keeps EvalConfig's default.
_EVAL_FLAGS = {
    "model": "model", "output_dir": "output_dir", "benchmarks": "benchmarks", "data_dir": "data_dir",
    "limit": "limit", "samples": "samples", "temperature": "temperature", "top_p": "top_p",
    "max_tokens": "max_tokens", "seed": "seed", "backend": "backend", "base_url": "base_url",
    "api_key_env": "api_key_env", "grade_workers": "grade_workers", "grade_timeout": "grade_timeout_s",
    "max_slots": "engine.max_slots", "max_cache_length": "engine.max_cache_length",
    "max_prefill_length": "engine.max_prefill_length", "dtype": "engine.dtype", "format": "engine.prompt_format",
    "mesh_tensor": "engine.mesh_tensor", "mesh_fsdp": "engine.mesh_fsdp",
}
_EVAL_OUTPUT_DIR = "runs/eval"


def _eval_flag_values(args: argparse.Namespace) -> dict[str, object]:
    """Dotted key -> value of every eval flag given on the command line."""
    values = {key: getattr(args, flag) for flag, key in _EVAL_FLAGS.items() if getattr(args, flag) is not None}
    if "benchmarks" in values:
        values["benchmarks"] = [b.strip() for b in values["benchmarks"].split(",") if b.strip()]
    if args.truncate_prompts:
        values["engine.overlong_prompt"] = "truncate_left"
    return values


def _config_data(args: argparse.Namespace, flags: dict[str, object], default_engine: dict | None = None,
                 ) -> tuple[dict, str]:
    """The YAML (optional) with the given flags over it and the `a.b=c` overrides over both; (data, where)."""
    from sq_jax.configlib import apply_overrides, load_yaml

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).is_file():  # no file: the first override
        config, overrides = None, [config, *overrides]
    data = load_yaml(config) if config is not None else {}
    if default_engine is not None and any(k.startswith("engine.") for k in flags) \
            and not isinstance(data.get("engine"), dict):
        data["engine"] = default_engine  # an engine flag changes the command's engine default, not EngineSettings'
    # A flag's value is written as JSON, which the override parser reads back unchanged (a path stays a string).
    data = apply_overrides(data, [f"{key}={json.dumps(value)}" for key, value in flags.items()] + overrides)
    return data, config or "<command line>"


def _eval(args: argparse.Namespace) -> None:
    from sq_jax.configlib import from_dict, to_dict
    from sq_jax.eval.runner import EVAL_ENGINE, EvalConfig, regrade, run_eval

    if args.regrade:
        summary = regrade(args.regrade, args.diff, data_dir=args.data_dir, workers=args.grade_workers,
                          timeout_s=5.0 if args.grade_timeout is None else args.grade_timeout)
        print(json.dumps(summary, indent=2))
        return
    data, where = _config_data(args, _eval_flag_values(args), to_dict(EVAL_ENGINE))
    data.setdefault("output_dir", _EVAL_OUTPUT_DIR)
    if data.get("model") is None:
        raise ValueError("a model is required: --model M, model=M or the config's `model` key "
                         "(unless --regrade SAMPLES)")
    cfg = from_dict(EvalConfig, data, where=where)
    report = run_eval(cfg)
    print((Path(cfg.output_dir) / "report.md").read_text())
    print(json.dumps({"output_dir": cfg.output_dir, "metrics": report["metrics"]}))


def _pipeline(args: argparse.Namespace) -> None:
    from sq_jax.pipeline.config import load_pipeline
    from sq_jax.pipeline.runner import report_markdown, run_pipeline, stage_status

    cfg = load_pipeline(args.config, args.overrides)
    if args.action == "report":
        _pipeline_report(cfg)
        return
    if args.action == "status":
        for row in stage_status(cfg):
            counts = ", ".join(f"{k}={v}" for k, v in row["counts"].items())
            print(f"{row['stage']:<24} {row['kind']:<18} {row['state']:<8} {counts}")
        return
    report = run_pipeline(cfg, only=args.only, start=args.start, until=args.until)
    if report:  # process 0's; the other processes of a multi-host run return none
        print(report_markdown(report))


def _pipeline_report(cfg) -> None:
    from sq_jax.pipeline.report_html import REPORT_HTML, write_html_report
    from sq_jax.pipeline.runner import write_report

    # report.json, report.md and report.html from the stage folders as they are, then every plot (the funnel and
    # wall time too, which a run draws once every stage is done); the stage summaries come from the cache.
    path = write_html_report(cfg, write_report(cfg), every_plot=True)
    if path is None:
        raise ValueError(f"{Path(cfg.output_dir) / REPORT_HTML} could not be written (the warning above says why)")
    print(path)


def _generate(args: argparse.Namespace) -> None:
    from sq_jax.configlib import load_config
    from sq_jax.sampling.generate_job import GenerateConfig, run_generate

    manifest = run_generate(load_config(GenerateConfig, args.config, args.overrides), restart=args.restart)
    print(json.dumps({"finished_shards": len(manifest["finished_shards"]), "num_shards": manifest["num_shards"],
                      "stats": manifest["stats"]}))


# `sq-jax serve` flags: shorthands for ServeConfig keys, as for eval.
_SERVE_FLAGS = {
    "model": "model", "host": "host", "port": "grpc_port", "http_port": "http_port",
    "served_model_name": "served_model_name", "api_key_env": "api_key_env", "max_queue": "max_queue",
    "shutdown_grace": "shutdown_grace_s", "max_slots": "engine.max_slots",
    "max_cache_length": "engine.max_cache_length", "max_prefill_length": "engine.max_prefill_length",
    "decode_steps": "engine.decode_steps", "overlong_prompt": "engine.overlong_prompt", "dtype": "engine.dtype",
    "format": "engine.prompt_format", "temperature": "sampling.temperature", "top_p": "sampling.top_p",
    "top_k": "sampling.top_k", "max_tokens": "sampling.max_tokens",
}


def serve_config(args: argparse.Namespace):  # -> ServeConfig (the server module loads with the command)
    """The checked ServeConfig of `sq-jax serve`'s command line."""
    from sq_jax.configlib import from_dict
    from sq_jax.sampling.server import ServeConfig

    flags = {key: getattr(args, flag) for flag, key in _SERVE_FLAGS.items() if getattr(args, flag) is not None}
    data, where = _config_data(args, flags)
    if data.get("model") is None:
        raise ValueError("a model is required: --model M, model=M or the config's `model` key")
    return from_dict(ServeConfig, data, where=where)


def _serve(args: argparse.Namespace) -> None:
    import os

    from sq_jax.sampling.engine_factory import build_engine
    from sq_jax.sampling.server import Server, serve_forever

    cfg = serve_config(args)
    fronts = cfg.fronts(os.environ)
    server = Server(build_engine(cfg.model, cfg.engine, cfg.default_sampling()), fronts)
    where_served = [f"gRPC on {server.grpc_address}"] * bool(server.grpc_address)
    where_served += [f"OpenAI HTTP on http://{server.http_address}/v1"] * bool(server.http_address)
    print(f"sq-jax serving {cfg.model} ({fronts.model_name}): {', '.join(where_served)}"
          + (f"; API key from ${cfg.api_key_env}" if fronts.api_key else ""), flush=True)
    serve_forever(server)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sq-jax", description="ScaleQuest in JAX: question synthesis from scratch.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init-tiny", help="build the tiny embedded qwen2 model + tokenizer (offline, seconds)")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=2048)
    p.set_defaults(func=_init_tiny)

    p = sub.add_parser("convert", help="convert a checkpoint: HF safetensors <-> sq-jax orbax")
    p.add_argument("src", help="HF model dir or hub id (--to orbax), or an sq-jax orbax checkpoint dir (--to hf)")
    p.add_argument("dst")
    p.add_argument("--to", choices=("orbax", "hf"), required=True)
    p.add_argument("--dtype", default=None, help="parameter dtype to write (default: the source's)")
    p.set_defaults(func=_convert)

    for task, text in (("qft", "question fine-tuning"), ("sft", "supervised fine-tuning on (query, response)"),
                       ("qpo", "question preference optimisation (DPO) on (prompt, chosen, rejected)")):
        p = sub.add_parser(task, help=f"{text} on the device mesh (config YAML + a.b=c overrides)")
        p.add_argument("config")
        p.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.lr=1e-5 max_steps=100")
        p.set_defaults(func=_train)

    p = sub.add_parser("plan", help="memory per chip of every stage (params, grads, optimizer, activations, KV "
                                    "cache); exits 2 naming what to change if a stage does not fit")
    p.add_argument("config", help="a pipeline or training config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--device", default="v5e-1", help="v5e-1, v6e-1, v5e-8, v4-8, v5p-16, ... (default v5e-1)")
    p.set_defaults(func=_plan)

    p = sub.add_parser("pipeline", help="the whole ScaleQuest method as resumable stages (run | status | report: "
                                        "report.html from the stage folders)")
    p.add_argument("action", choices=("run", "status", "report"))
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. stages.questions.config.count=100")
    p.add_argument("--only", default=None, help="run just this stage (its inputs must be done)")
    p.add_argument("--from", dest="start", default=None, help="start at this stage")
    p.add_argument("--until", default=None, help="stop after this stage")
    p.set_defaults(func=_pipeline)

    p = sub.add_parser("generate", help="offline batch generation to sharded JSONL (resumable)")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--restart", action="store_true",
                   help="delete the shards an earlier run left in output_dir and generate every one again")
    p.set_defaults(func=_generate)

    p = sub.add_parser("eval", help="accuracy on GSM8K / MATH-500 / College Math / OlympiadBench (greedy, graded): "
                                    "an EvalConfig YAML and/or a.b=c overrides; the flags set the same keys")
    p.add_argument("config", nargs="?", default=None, help="an EvalConfig YAML (optional)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. limit=20 engine.max_slots=32")
    p.add_argument("--model", help="HF model dir or hub id, or an sq-jax native checkpoint (key: model)")
    p.add_argument("--regrade", metavar="SAMPLES", default=None,
                   help="grade a saved samples.jsonl again with the current grader; write the changed verdicts")
    p.add_argument("--diff", default=None, help="with --regrade: the diff file (default: beside SAMPLES)")
    p.add_argument("--benchmarks", default=None,
                   help="comma-separated: gsm8k, math, math500, college_math, olympiadbench, jsonl:PATH "
                        "(default gsm8k,math500,college_math,olympiadbench)")
    p.add_argument("--output-dir", default=None, help=f"default {_EVAL_OUTPUT_DIR}")
    p.add_argument("--data-dir", default=None, help="read <DIR>/<benchmark>/test.jsonl instead of the hub")
    p.add_argument("--limit", type=int, default=None, help="first N questions of each benchmark")
    p.add_argument("--samples", type=int, default=None, help="k answers per question: adds pass@k and maj@k (1)")
    p.add_argument("--temperature", type=float, default=None, help="default 0.0")
    p.add_argument("--top-p", type=float, default=None, help="default 1.0")
    p.add_argument("--max-tokens", type=int, default=None, help="default 2048")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--max-slots", type=int, default=None, help="default 64")
    p.add_argument("--max-cache-length", type=int, default=None, help="default 4096")
    p.add_argument("--max-prefill-length", type=int, default=None, help="default 2048")
    p.add_argument("--truncate-prompts", action="store_true", help="cut overlong prompts on the left, not fail them")
    p.add_argument("--dtype", default=None, help="default bfloat16")
    p.add_argument("--format", default=None, help="prompt format; default: detected from the tokenizer")
    p.add_argument("--backend", choices=("jetstream", "raw"), default=None, help="default jetstream")
    p.add_argument("--base-url", default=None, help="answers from this OpenAI-compatible server (e.g. "
                   "http://127.0.0.1:8000/v1 of sq-jax serve); --model is then the name it serves")
    p.add_argument("--api-key-env", default=None, help="with --base-url: the API key's variable (SQ_JAX_API_KEY)")
    p.add_argument("--mesh-tensor", type=int, default=None,
                   help="tensor-parallel size (-1, the default: the devices fsdp leaves); must divide the model's "
                        "kv heads")
    p.add_argument("--mesh-fsdp", type=int, default=None,
                   help="parameter-sharding size (default 1; -1: the devices tensor leaves)")
    p.add_argument("--grade-workers", type=int, default=None, help="grading processes (default: one per CPU)")
    p.add_argument("--grade-timeout", type=float, default=None,
                   help="seconds per answer before it is graded wrong (default 5)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("serve", help="JetStream gRPC and OpenAI-compatible HTTP server over a model",
                       description="serve a ServeConfig YAML and/or a.b=c overrides; the flags set the same keys "
                                   "(defaults: sq_jax.sampling.server.ServeConfig)")
    p.add_argument("config", nargs="?", default=None, help="a ServeConfig YAML (optional)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. engine.max_slots=32 http_port=8001")
    p.add_argument("--model", default=None)
    p.add_argument("--host", default=None, help="bind address (default loopback; 0.0.0.0 / [::] to expose)")
    p.add_argument("--port", type=int, default=None, help="gRPC (JetStream protocol) port (9000); 0: no gRPC")
    p.add_argument("--http-port", type=int, default=None, help="OpenAI-compatible HTTP port (8000); 0: no HTTP")
    p.add_argument("--served-model-name", default=None, help="the `model` HTTP clients ask for (default: "
                   "the model folder's name)")
    p.add_argument("--api-key-env", default=None,
                   help="environment variable holding the HTTP API key (SQ_JAX_API_KEY); unset: no key asked")
    p.add_argument("--max-queue", type=int, default=None, help="requests waiting for prefill before 429 (1024)")
    p.add_argument("--shutdown-grace", type=float, default=None,
                   help="seconds open requests get to finish on SIGTERM (2)")
    p.add_argument("--max-slots", type=int, default=None)
    p.add_argument("--max-cache-length", type=int, default=None)
    p.add_argument("--max-prefill-length", type=int, default=None)
    p.add_argument("--decode-steps", type=int, default=None)
    p.add_argument("--overlong-prompt", choices=("error", "truncate_left"), default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--format", default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=None)
    p.set_defaults(func=_serve)

    p = sub.add_parser("sample", help="quick sampling from a model: questions from the pre-query template, or a solution")
    p.add_argument("--model", required=True, help="HF model dir or hub id")
    p.add_argument("--prompt", default=None, help="a question to solve (default: generate questions from scratch)")
    p.add_argument("--format", default=None, help="prompt format (qwen, deepseek, llama3, mistral); default: detected")
    p.add_argument("--num", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32")
    p.set_defaults(func=_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `pipeline run C --until X a.b=c`: argparse ends the overrides list at the first flag; take the rest too.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        # Before any JAX computation: tpu/run.sh exports SQ_JAX_DISTRIBUTED=1 on every worker of a slice.
        from sq_jax.parallel.distributed import initialize, settings_from_env
        from sq_jax.toy.corpora import register as register_toy_corpora

        register_toy_corpora()  # the `procedural:...` sources a command's config may name
        settings = settings_from_env()
        if settings is not None:
            initialize(settings)
        args.func(args)
    except (ValueError, FileNotFoundError, TimeoutError) as e:
        print(f"sq-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
