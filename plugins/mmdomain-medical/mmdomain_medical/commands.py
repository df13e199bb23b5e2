"""``mmdomain medical inspect PATH`` and ``mmdomain medical index ROOT``."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click

from mmdomain import DataError

from .dataset import MedicalDataset, describe
from .deid import deidentify
from .dicom_header import header_facts, safe_meta
from .dicom_parse import read_header
from .dicom_read import read_dicom
from .errors import MedicalDataError
from .pairing import index_tree, manifest_rows
from .reports import read_text_report, scrub_text, split_sections
from .sr import is_sr, sr_text


def _inspect_file(path: Path) -> dict:
    if path.suffix.lower() in (".txt",):
        sections = split_sections(scrub_text(read_text_report(path)))
        return {"path": str(path), "kind": "report", "sections": {k: len(v) for k, v in sections.items()}}
    ds = read_header(path)
    info = {"path": str(path), **safe_meta(header_facts(ds))}
    if is_sr(ds):
        phi = deidentify(ds, burned_in="warn", path=path)
        text = scrub_text(sr_text(ds, path), phi)
        info.update(kind="sr", sections={k: len(v) for k, v in split_sections(text).items()}, text_chars=len(text))
        return info
    img = read_dicom(path, ds=ds, burned_in="warn")
    info.update(kind="image", axes=img.axes, shape=list(img.array.shape),
                value_range=[round(float(img.array.min()), 3), round(float(img.array.max()), 3)],
                window=list(img.window) if img.window else None)
    return info


@click.group("medical")
def medical() -> None:
    """DICOM + radiology reports: inspect files, index folders."""


@medical.command("inspect")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def inspect_cmd(path: Path, as_json: bool) -> None:
    """What the loader sees in a DICOM file, report, or folder (de-identified)."""
    try:
        if path.is_dir():
            info = describe(MedicalDataset(path, split="all", cache=None, burned_in="warn"))
        else:
            info = _inspect_file(path)
    except DataError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
    else:
        for k, v in info.items():
            click.echo(f"{k}: {v}")


@medical.command("index")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="manifest CSV to write (default ROOT/manifest.csv; '-' for stdout)")
def index_cmd(root: Path, output: Path | None) -> None:
    """Pair images and reports under ROOT into a manifest CSV (paths + study pseudonyms)."""
    try:
        studies = index_tree(root, keep_headers=False)
    except MedicalDataError as exc:
        raise click.ClickException(str(exc)) from None
    rows = manifest_rows(root, studies)
    if not rows:
        raise click.ClickException(f"{root}: no DICOM image or report found")
    out = sys.stdout if str(output) == "-" else None
    target = output or root / "manifest.csv"
    fields = list(rows[0])
    if out is not None:
        w = csv.DictWriter(out, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
        return
    with open(target, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    paired = sum(1 for s in studies if s.images and s.report)
    click.echo(f"{len(studies)} studies ({paired} paired, {len(getattr(index_tree, 'errors', []))} unreadable files) "
               f"-> {target}")
