"""``rtinjury evaluate``: the full inference pipeline on annotated cases, scored like the paper."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from service.cli.output import emit_json, progress_line, say


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="score one or more networks on annotated DICOM cases (Dice, IoU, precision, recall, HD95, ASSD)",
        description=(
            "Runs every annotated follow-up in DATA through assemble, read, register, dose, high-dose "
            "region and inference (the ground truth is used only for scoring) and writes cases.csv, "
            "summary.json, summary.md (tables shaped like the paper's Tables 1-2) and plots into OUT. "
            "Several --weights evaluate an ablation on one registration per case; several --tau values "
            "give the dose-threshold sweep."
        ),
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="folder of patient folders with ground truth"
    )
    parser.add_argument(
        "--weights",
        type=Path,
        nargs="*",
        default=[],
        help="checkpoint files or ONNX export folders (default: the shipped demo model)",
    )
    parser.add_argument("--labels", nargs="*", default=None, help="row labels, one per --weights")
    parser.add_argument("--tau", type=float, nargs="+", default=[0.8], help="high-dose fractions of Dmax")
    parser.add_argument("--gate-margin", type=float, default=3.0, help="mm around r where predictions count")
    parser.add_argument(
        "--min-component", type=float, default=0.05, help="drop predicted components below this volume (cc)"
    )
    parser.add_argument("--out", type=Path, default=Path("evaluation"), help="folder for tables and plots")
    parser.add_argument("--text-encoder", default=None, help="local text model folder (default MiniLM)")
    parser.add_argument("--threads", type=int, default=None, help="inference threads")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    def tell(text: str) -> None:
        progress_line(text, machine=args.json)

    from models.errors import ModelError
    from models.loading import open_model
    from models.text.registry import open_text_encoder
    from worker.stages.infer import InferenceOptions
    from worker.training.evaluate import NamedModel, evaluate_folder
    from worker.training.tables import summarise, write_evaluation

    sources: list[Path | None] = list(args.weights) or [None]
    labels = args.labels or [_label(s) for s in sources]
    if len(labels) != len(sources):
        raise ModelError(f"{len(labels)} --labels for {len(sources)} --weights")
    models = [
        NamedModel(label, open_model(s, threads=args.threads))
        for label, s in zip(labels, sources, strict=True)
    ]
    encoder = open_text_encoder(args.text_encoder)
    tell(f"evaluating {', '.join(labels)} on {args.data} (tau {', '.join(f'{t:g}' for t in args.tau)})")
    records = evaluate_folder(
        args.data,
        models,
        encoder,
        taus=args.tau,
        options=InferenceOptions(gate_margin_mm=args.gate_margin, min_component_cc=args.min_component),
        progress=lambda name: tell(f"  {name} done"),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    files = write_evaluation(records, args.out)
    overall = [s for s in summarise(records) if s.group == "overall"]
    document = {
        "files": {k: str(v) for k, v in files.items()},
        "models": {m.label: m.model.model_id for m in models},
        "overall": [
            {
                "model": s.model,
                "tau": s.tau,
                "cases": s.cases,
                "failed": s.failed,
                "mean": s.mean,
                "std": s.std,
            }
            for s in overall
        ],
    }
    if args.json:
        emit_json(document)
        return 0
    for s in overall:
        say(
            f"{s.model} tau {s.tau:g}: Dice {100 * s.mean['dice']:.2f}% ± {100 * s.std['dice']:.2f}, "
            f"HD95 {s.mean['hd95_mm']:.2f} ± {s.std['hd95_mm']:.2f} mm, "
            f"ASSD {s.mean['assd_mm']:.2f} mm ({s.cases} cases, {s.failed} failed)"
        )
    say(f"tables and plots in {args.out}")
    return 0


def _label(source: Path | None) -> str:
    if source is None:
        return "demo"
    return source.stem if source.is_file() else source.name
