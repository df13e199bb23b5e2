"""``mmdomain medical inspect PATH``, ``mmdomain medical index ROOT``, ``mmdomain medical label ROOT`` and
``mmdomain medical locate ROOT NAME...`` (the path of a file that messages named by pseudonym).

The DICOM readers (pydicom) are imported when a command runs: the plugin adds these commands to
every ``mmdomain`` invocation, ``--help`` and ``plugins list`` included."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click

from mmdomain import DataError

from .errors import MedicalDataError
from .facts import CHEXPERT_LABELS, REPORT_SECTIONS
from .labeller import BLANK, DEFAULT_LABEL_SECTIONS, NEGATIVE, POSITIVE, UNCERTAIN, label_report
from .labels import REPORT_LABELS_FILE, find_label_file, write_label_file
from .reports import read_text_report, scrub_text, split_sections


def _inspect_file(path: Path) -> dict:
    """``_inspect`` of one file; any library failure is the plugin's error naming the file, and
    pydicom's warnings (they quote header values) stay out of the output."""
    from .dicom_parse import quiet_validation

    try:
        with quiet_validation(all_warnings=False):
            return _inspect(path)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. pydicom's NotImplementedError for an unknown VR
        raise MedicalDataError(path, f"unreadable ({type(exc).__name__})") from None


def _inspect(path: Path) -> dict:
    from .deid import deidentify
    from .dicom_parse import regular_file
    from .dicom_header import header_facts, safe_meta
    from .dicom_parse import read_header
    from .dicom_read import read_dicom
    from .sr import is_sr, sr_text

    if path.suffix.lower() in (".txt",):
        regular_file(path, "REPORT_FILE_BYTES")  # never a FIFO (it would block), nor a 50 MB line
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
    """DICOM + radiology reports: inspect files, index folders, label studies from their reports."""


@medical.command("inspect")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def inspect_cmd(path: Path, as_json: bool) -> None:
    """What the loader sees in a DICOM file, report, or folder (de-identified)."""
    from .dataset import MedicalDataset, describe

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
    from .pairing import index_tree, manifest_rows

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


@medical.command("locate")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("names", nargs=-1, required=True)
@click.option("--deid-key", default=None, metavar="KEY",
              help="the dataset's de-identification key (default: MMDOMAIN_DEID_KEY, else the built-in one)")
def locate_cmd(root: Path, names: tuple[str, ...], deid_key: str | None) -> None:
    """Print the path under ROOT of each file that messages name by pseudonym (``file-<hex>``): inside a
    dataset, errors, warnings and logs never name a file by its path, which may carry a patient's name
    or MRN. Run it on the site's own machine; its output holds those paths."""
    import os

    from .deid import DEFAULT_KEY
    from .errors import FILE_PREFIX, file_pseudonym

    key = deid_key or DEFAULT_KEY
    wanted = {n.strip().split(".")[0].rstrip(":") for n in names}
    bad = sorted(n for n in wanted if not n.startswith(FILE_PREFIX))
    if bad:
        raise click.BadParameter(f"not a file pseudonym: {bad} (they look like {FILE_PREFIX}0123456789abcdef.dcm)",
                                 param_hint="NAMES")
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            full = Path(folder) / name
            stem = file_pseudonym(root, full, key).split(".")[0]
            if stem in wanted:
                found[stem] = str(full)
        if len(found) == len(wanted):
            break
    for n in sorted(wanted):
        click.echo(f"{n}\t{found.get(n, '(not found under ROOT with this key)')}")
    if len(found) < len(wanted):
        raise SystemExit(1)


# Where the dataset finds reports (for the "no reports found" error).
_REPORT_LAYOUTS = ("MIMIC-CXR files/pXX/pNNNN/sNNNN.txt", "DICOM SR files", "OpenI XML reports",
                   "manifest.csv / manifest.parquet with a 'report' or 'report_path' column")


def _sections_option(values: tuple[str, ...]) -> tuple[str, ...]:
    sections = tuple(s.strip().lower() for v in values for s in v.split(",") if s.strip())
    unknown = [s for s in sections if s not in REPORT_SECTIONS]
    if unknown:
        raise click.BadParameter(f"unknown report sections {unknown}; known: {list(REPORT_SECTIONS)}",
                                 param_hint="--sections")
    return sections or DEFAULT_LABEL_SECTIONS


@medical.command("label")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"labels CSV to write (default ROOT/{REPORT_LABELS_FILE}, which the dataset reads when ROOT "
                   "has no labels.csv; '-' for stdout)")
@click.option("--sections", multiple=True, metavar="NAMES",
              help="report sections to read, comma-separated or repeated (default findings,impression; "
                   "a report with none of them is read whole)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def label_cmd(root: Path, output: Path | None, sections: tuple[str, ...], as_json: bool) -> None:
    """Label each study under ROOT from its de-identified report: the 14 CheXpert observations
    (1.0 positive, 0.0 negative, -1.0 uncertain, blank not mentioned), by negation- and
    uncertainty-aware rules (``mmdomain_medical.labeller``). The file holds the study pseudonym
    (as in Sample.meta["id"]) and the labels only, never report text or identifiers."""
    from .dataset import MedicalDataset
    from .deid import pseudonym

    chosen = _sections_option(sections)
    try:
        ds = MedicalDataset(root, split="all", cache=None, burned_in="warn")
    except MedicalDataError as exc:
        raise click.ClickException(f"{exc} (looked for: {'; '.join(_REPORT_LAYOUTS)})") from None
    rows, unreadable, no_report, whole, capped = [], 0, 0, 0, 0
    for i, st in enumerate(ds.studies):
        try:
            text = ds.raw_report(i)
        except MedicalDataError:
            unreadable += 1
            continue
        if text is None:
            no_report += 1
            continue
        result = label_report(text, chosen)
        whole += result.source != "sections"
        capped += result.capped
        rows.append({"study": pseudonym(st.key, ds.key, "st-"), **result.values})
    if not rows:
        raise click.ClickException(f"{root}: no reports found among {len(ds.studies)} studies "
                                   f"({unreadable} unreadable; looked for: {'; '.join(_REPORT_LAYOUTS)})")
    if str(output) == "-":
        write_label_file(sys.stdout, rows)
        target = "-"
    else:
        target = output or root / REPORT_LABELS_FILE
        with open(target, "w", newline="") as f:
            write_label_file(f, rows)
    counts = {name: {"positive": sum(r[name] == POSITIVE for r in rows),
                     "uncertain": sum(r[name] == UNCERTAIN for r in rows),
                     "negative": sum(r[name] == NEGATIVE for r in rows),
                     "blank": sum(r[name] == BLANK for r in rows)} for name in CHEXPERT_LABELS}
    site_file = find_label_file(root)
    summary = {"studies": len(ds.studies), "labelled": len(rows), "without_report": no_report,
               "unreadable_reports": unreadable, "read_whole_text": whole, "capped": capped,
               "sections": list(chosen), "output": str(target), "labels": counts,
               "dataset_reads": str(site_file) if site_file is not None else None}
    echo = (lambda msg: click.echo(msg, err=True)) if target == "-" else click.echo
    if as_json:
        echo(json.dumps(summary, indent=2))
        return
    echo(f"{len(rows)} of {len(ds.studies)} studies labelled from their reports ({no_report} without report, "
         f"{unreadable} unreadable, {whole} read whole: no {'/'.join(s.upper() for s in chosen)}, "
         f"{capped} capped) -> {target}")
    width = max(len(n) for n in CHEXPERT_LABELS)
    echo(f"{'':{width}}  positive  uncertain  negative")
    for name, c in counts.items():
        echo(f"{name:{width}}  {c['positive']:8d}  {c['uncertain']:9d}  {c['negative']:8d}")
    if target != "-" and site_file is not None and site_file.resolve() != Path(target).resolve():
        echo(f"note: the dataset reads {site_file.name} at this site, not this file "
             f"(pass label_file={Path(target).resolve()} to use it)")
