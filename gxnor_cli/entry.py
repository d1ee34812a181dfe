"""The `gxnor` command's entry point.

`gxnor eval --engine packed FILE [options]` on an exported file is what a deployer times
against the runtime itself, so it runs here without the command line's framework (typer,
pydantic, the config system): numpy, the engine and the dataset reader only.  Everything
else, and every invocation this path does not take exactly (an unknown option, a value it
would refuse, --help), goes to the full command line (:mod:`gxnor_cli.cli`), which also
gives every error message.  Both print the same tables (``tracking.report.show_eval``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

SPLITS = ("train", "val", "test")
KERNELS = ("auto", "onnxruntime", "gemm", "xnor")
VALUED = ("--engine", "--split", "--kernel", "--data-root", "--batch-size", "--predictions")


def packed_eval(args: list[str]) -> Optional[dict]:
    """The options of ``eval --engine packed FILE ...`` when ``args`` asks exactly that with
    values the full command line would accept; None otherwise."""
    if not args or args[0] != "eval":
        return None
    opts: dict[str, object] = {"--split": "test", "--kernel": "auto", "--batch-size": "1000"}
    files, rest = [], list(args[1:])
    while rest:
        word = rest.pop(0)
        name, eq, value = word.partition("=")
        if word == "--json":
            opts["--json"] = True
        elif eq and name in VALUED:
            opts[name] = value
        elif word in VALUED and rest:
            opts[word] = rest.pop(0)
        elif word.startswith("-") or files:
            return None
        else:
            files.append(word)
    batch = str(opts["--batch-size"])
    predictions = Path(str(opts["--predictions"])) if "--predictions" in opts else None
    if (opts.get("--engine") != "packed" or not files or opts["--split"] not in SPLITS
            or opts["--kernel"] not in KERNELS or not batch.isdigit() or int(batch) < 1
            or (predictions is not None and (predictions.is_dir() or not predictions.parent.is_dir()))):
        return None
    from .deploy.evaluate import is_packed

    path = Path(files[0]).expanduser()
    if not is_packed(path):
        return None
    return {"path": path, "split": opts["--split"], "kernel": opts["--kernel"], "data_root": opts.get("--data-root"),
            "batch_size": int(batch), "predictions": predictions, "json": bool(opts.get("--json"))}


def run_packed_eval(job: dict) -> int:
    import json

    from .deploy.evaluate import evaluate_file
    from .errors import UserError

    try:
        result = evaluate_file(job["path"], job["split"], job["kernel"], job["data_root"], job["batch_size"],
                               job["predictions"])
    except UserError as error:
        print(f"gxnor: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gxnor: interrupted", file=sys.stderr)
        return 130
    if job["json"]:
        print(json.dumps(result, indent=1))
    else:
        from rich.console import Console

        from .tracking.report import show_eval

        show_eval(result, job["split"], Console() if sys.stdout.isatty() else Console(width=160))
    return 0


def main() -> None:
    job = packed_eval(sys.argv[1:])
    if job is None:
        from .cli import main as cli_main

        cli_main()
    try:
        code = run_packed_eval(job)
        sys.stdout.flush()
    except BrokenPipeError:
        from .interrupt import quiet_broken_pipe

        code = quiet_broken_pipe()
    sys.exit(code)
