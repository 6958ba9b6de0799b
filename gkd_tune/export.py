"""Export a trained student for deployment: a torch.export program (.pt2) and an ONNX file, each with a dynamic
batch size, each checked against the PyTorch student.

    python -m gkd_tune.export --model models:/quickstart@champion --format pt2,onnx --out exported/quickstart

--model is a registered model (models:/NAME@ALIAS or models:/NAME/VERSION, in --tracking-uri's registry) or a
student.pt file. Both take uint8 images N x 3 x H x W at the training size and give logits (the normalisation is
inside). Parity is measured on the data set's test split (or --images, a folder of images): the largest |logit
difference| must be at most 1e-3 and the top-1 agreement at least 99.9%; a miss exits 1 and says by how much. For
a registered model the files and the figures are also logged to its run. ONNX is checked with onnxruntime.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from .cli import check_output_folder, run_command, shared_options

FORMATS = ("pt2", "onnx")
MAX_LOGIT_DELTA, MIN_AGREEMENT = 1e-3, 0.999
CHUNK = 256  # images per forward pass in the parity check


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gkd_tune.export", description=__doc__.split("\n\n")[0],
                                     parents=[shared_options(without_address=None, sweep=False)])
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a student.pt file")
    parser.add_argument("--format", default="pt2,onnx", help=f"comma-separated, of {', '.join(FORMATS)} "
                                                               f"(default: both)")
    parser.add_argument("--out", type=Path, required=True, help="folder for student.pt2 / student.onnx")
    parser.add_argument("--images", type=Path, help="a folder of images for the parity check (default: the data "
                                                    "set's test split)")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db",
                        help="the MLflow registry of a models:/ URI (default sqlite:///mlflow.db)")
    return parser


def load(reference: str, tracking_uri: str, scratch: Path):
    """(the student as an ImagesToLogits module in eval mode, its metadata, the MLflow run of a registered model or
    None). A registered model is exported from its run's student file (checkpoint/student.pt), the module it
    was made from."""
    from .core.files import STUDENT_FILE
    from .core.models import ImagesToLogits, load_student

    run_id = None
    if reference.startswith("models:/"):
        import mlflow
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(tracking_uri)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file
        try:
            run_id = mlflow.models.get_model_info(reference).run_id
            file = Path(MlflowClient().download_artifacts(run_id, f"checkpoint/{STUDENT_FILE}", str(scratch)))
        except MlflowException as error:
            raise ValueError(f"--model {reference}: {str(error).splitlines()[0]} (registry {tracking_uri})") from None
    else:
        file = Path(reference).expanduser()
    student = load_student(file)
    return ImagesToLogits(student).eval(), student.metadata, run_id


def parity_images(metadata: dict, folder: Path | None):
    """uint8 images N x 3 x S x S: the folder's, resized to the training size, or the data set's test split."""
    import numpy as np
    import torch

    size = int(metadata["image_size"])
    if folder is not None:
        from PIL import Image

        files = sorted(p for p in folder.expanduser().iterdir() if p.is_file()) if folder.is_dir() else []
        images = []
        for file in files:
            try:
                with Image.open(file) as image:
                    images.append(np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR)))
            except OSError:
                continue  # not an image
        if not images:
            raise ValueError(f"--images {folder}: no images found there")
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), f"{len(images)} images of {folder}"
    from .core.data import load_splits

    source = metadata.get("dataset")
    if not source:
        raise ValueError("the model names no data set to check it on: pass --images FOLDER")
    splits = load_splits(source, 0.1, image_size=size)
    part, name = (splits.test, "test") if splits.test is not None else (splits.val, "validation")
    return torch.as_tensor(part.images), f"the {name} split of {source} ({len(part.images)} images)"


def logits_of(run, images):
    """run's logits of `images` (a tensor), CHUNK at a time, as one tensor."""
    import torch

    with torch.no_grad():
        return torch.cat([torch.as_tensor(run(images[i:i + CHUNK])) for i in range(0, len(images), CHUNK)])


def export(module, example, kind: str, path: Path):
    """Write `module` as `kind` to `path`; the callable that runs the written file."""
    import torch

    dynamic = {"images": {0: torch.export.Dim("batch", max=CHUNK * 64)}}
    try:
        program = torch.export.export(module, (example,), dynamic_shapes=dynamic)
    except Exception as error:  # a model torch.export cannot trace (data-dependent control flow, a custom op)
        raise RuntimeError(f"{kind}: torch.export cannot trace this model: {str(error).strip().splitlines()[0]}") \
            from None
    if kind == "pt2":
        torch.export.save(program, path)
        loaded = torch.export.load(path).module()
        return lambda images: loaded(images)
    try:
        torch.onnx.export(program, dynamo=True, verbose=False).save(str(path))
    except Exception as error:
        raise RuntimeError(f"onnx: the exporter failed: {str(error).strip().splitlines()[0]}") from None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images.numpy()})[0]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        formats = [f.strip() for f in args.format.split(",") if f.strip()]
        unknown = [f for f in formats if f not in FORMATS]
        if unknown or not formats:
            raise ValueError(f"--format: {', '.join(unknown) or 'nothing'} is not one of {', '.join(FORMATS)}")
        out = check_output_folder(args.out, "--out")
        scratch = tempfile.TemporaryDirectory()
        module, metadata, run_id = load(args.model, args.tracking_uri, Path(scratch.name))
        images, described = parity_images(metadata, args.images)
        reference = logits_of(module, images)
        out.mkdir(parents=True, exist_ok=True)
        figures, files, missed = {}, [], []
        for kind in formats:
            path = out / f"student.{kind}"
            runner = export(module, images[:2], kind, path)
            logits = logits_of(runner, images).to(reference.dtype)
            delta = float((logits - reference).abs().max())
            agreement = float((logits.argmax(1) == reference.argmax(1)).float().mean())
            ok = delta <= MAX_LOGIT_DELTA and agreement >= MIN_AGREEMENT
            print(f"{kind}: {path}  max |delta logit| {delta:.2e} (<= {MAX_LOGIT_DELTA:g}), top-1 agreement "
                  f"{agreement:.2%} (>= {MIN_AGREEMENT:.1%}) on {described}: {'ok' if ok else 'MISSED'}", flush=True)
            if not ok:
                missed.append(f"{kind} by {max(delta / MAX_LOGIT_DELTA, 1):.1f}x the logit tolerance and "
                              f"{max(MIN_AGREEMENT - agreement, 0):.2%} of agreement")
            figures.update({f"export_{kind}_max_logit_delta": delta, f"export_{kind}_top1_agreement": agreement})
            files.append(path)
        if run_id is not None:
            import mlflow
            from mlflow.tracking import MlflowClient

            try:
                with mlflow.start_run(run_id=run_id):
                    for path in files:
                        mlflow.log_artifact(str(path), "export")
                    mlflow.log_metrics(figures)
            finally:  # the model's run was finished: it stays so, whatever happened here
                MlflowClient().set_terminated(run_id, "FINISHED")
            print(f"logged to the model's run {run_id} (artifacts export/, metrics export_*)")
        if missed:
            print(f"error: parity missed: {'; '.join(missed)}", file=sys.stderr)
            return 1
        return 0

    return run_command(run, args.debug)


if __name__ == "__main__":
    sys.exit(main())
