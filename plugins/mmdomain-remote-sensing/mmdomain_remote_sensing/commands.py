"""``mmdomain rs ...``: inspect a product, index a folder into an S2/S1 pairing manifest, band stats
(as encoder options, or a whole model config through ``models.model_for``).

The readers (rasterio) are imported when a command runs: the plugin adds these commands to every
``mmdomain`` invocation, ``--help`` and ``plugins list`` included."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click

from mmdomain import DataError

from .models import model_for


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc))


@click.group("rs")
def rs() -> None:
    """Remote sensing: Sentinel-2 L2A + Sentinel-1."""


def inspect_path(path: Path) -> dict:
    from rasterio.crs import CRS

    from .handles import open_raster, source_crs
    from .s1 import open_s1, polarisation_of
    from .s2 import cloud_fraction, is_s2_product, open_s2, read_scl

    if is_s2_product(path):
        p = open_s2(path)
        coarse = p.grid(p.res * 8)
        scl = read_scl(p, coarse)
        return {"kind": "s2", "path": str(path), "crs": CRS.from_user_input(p.crs).to_string(), "resolution": p.res,
                "bands": list(p.bands), "scl": p.scl is not None, "bounds": [round(b, 3) for b in p.bounds],
                "time": p.time.isoformat() if p.time else None, "offset": sorted(set(p.offset.values())),
                "quantification": p.quantification, "metadata": p.metadata_source,
                "cloud_fraction": round(cloud_fraction(scl), 4) if scl is not None else None}
    if polarisation_of(path):
        a = open_s1([path])
        src = open_raster(path)
        return {"kind": "s1", "path": str(path), "crs": CRS.from_user_input(a.crs).to_string(),
                "georeferencing": "transform" if src.crs is not None else "GCPs",
                "resolution": abs(src.transform.a) if src.crs is not None else None,
                "bands": list(a.polarisations), "units": a.units, "nodata": a.nodata,
                "bounds": [round(b, 6) for b in a.bounds], "time": a.time.isoformat() if a.time else None}
    src = open_raster(path)
    return {"kind": "raster", "path": str(path), "crs": source_crs(src).to_string(), "resolution": abs(src.transform.a),
            "bands": [d or f"band {i + 1}" for i, d in enumerate(src.descriptions)],
            "bounds": [round(b, 6) for b in src.bounds], "time": None}


@rs.command("inspect")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def inspect_cmd(path: Path, as_json: bool) -> None:
    """CRS, resolution, bands, bounds, time and cloud fraction of an S2 product or S1 file."""
    try:
        info = inspect_path(path)
    except DataError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for k, v in info.items():
        click.echo(f"{k:>15}: {v}")


@rs.command("index")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--tolerance", "tolerance_days", default=6.0, show_default=True, help="max days between S2 and S1")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="manifest CSV (default: stdout)")
def index_cmd(root: Path, tolerance_days: float, output: Path | None) -> None:
    """Pair every S2 acquisition under ROOT with the nearest S1 within the tolerance; write a manifest."""
    from .layouts.scene_folder import scan
    from .pairing import pair_acquisitions

    try:
        folder = scan(root)
        pairs = pair_acquisitions(folder.s2, folder.s1, tolerance_days)
    except DataError as exc:
        _fail(exc)
    fields = ["s2", "s2_time", "s1_vv", "s1_vh", "s1_time", "days_apart", "status"]
    f = output.open("w", newline="") if output else sys.stdout
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    for p in pairs:
        w.writerow({"s2": str(p.s2.path.relative_to(root)), "s2_time": p.s2.time.isoformat() if p.s2.time else "",
                    "s1_vv": str(p.s1.files["VV"].relative_to(root)) if p.s1 and "VV" in p.s1.files else "",
                    "s1_vh": str(p.s1.files["VH"].relative_to(root)) if p.s1 and "VH" in p.s1.files else "",
                    "s1_time": p.s1.time.isoformat() if p.s1 and p.s1.time else "",
                    "days_apart": f"{p.days_apart:.2f}" if p.days_apart is not None else "",
                    "status": "paired" if p.s1 else f"s2 only: {p.reason}"})
    if output:
        f.close()
        click.echo(f"{len(pairs)} S2 acquisitions, {sum(p.s1 is not None for p in pairs)} paired -> {output}",
                   err=True)


@rs.command("stats")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--patches", default=64, show_default=True)
@click.option("--s2-bands", default=None, help="comma-separated S2 bands to read (the dataset's s2_bands)")
@click.option("--model", "as_model", is_flag=True, help="print the default model config with these statistics")
def stats_cmd(root: Path, patches: int, s2_bands: str | None, as_model: bool) -> None:
    """Per-band mean/std of this site's data, as encoder options (JSON), or a model config using them."""
    from .dataset import SceneFolderDataset

    options = {"s2_bands": [b.strip() for b in s2_bands.split(",")]} if s2_bands else {}
    try:
        stats = SceneFolderDataset(root, "train", task="contrastive", **options).band_stats(patches)
    except DataError as exc:
        _fail(exc)
    click.echo(json.dumps(model_for(options, stats=stats) if as_model else stats, indent=1))
