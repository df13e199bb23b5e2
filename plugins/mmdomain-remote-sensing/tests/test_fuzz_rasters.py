"""Fuzzed rasters and metadata (issue #17 item 6): seeded mutants of the synthetic generator's real
files (a Sentinel-2 SAFE product's JP2 bands and SCL, its MTD_MSIL2A.xml, the Sentinel-1 GeoTIFFs, the
land-cover GeoTIFF), each read through ``SceneFolderDataset`` (every patch) in a forked child under
2 GiB and 30 s (``mmdomain.testing.fuzz``). Every mutant reads (finite tensors) or is refused with
``RasterDataError`` (or the core's ``DataError``), or skipped by the dataset, with a message naming
the mutated file.

``bench/fuzz.py`` runs the same family with more mutants; the functions here are its source."""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from mmdomain import DataError
from mmdomain.testing import fuzz
from mmdomain.testing.fuzz import Case, Refused, mutate, unmutated
from mmdomain_remote_sensing import handles
from mmdomain_remote_sensing.dataset import SceneFolderDataset
from mmdomain_remote_sensing.synthetic import generate

SEED = 1707
ALLOWED = (DataError,)  # RasterDataError is one
KINDS = ("jp2", "mtd", "s1", "labels")


@dataclass
class Template:
    site: Path  # one seeded scene: SAFE (JP2 bands, SCL, MTD), S1 VV / VH, land cover, classes.json
    files: dict[str, list[Path]]  # kind -> the site's files of that kind (relative to the site)


def make_template(workdir: Path, seed: int = SEED) -> Template:
    site = generate(workdir, num_sites=1, seed=seed, scenes_per_site=1, size=32, patch_size=16)[0]
    rel = lambda pattern: sorted(p.relative_to(site) for p in site.glob(pattern))  # noqa: E731
    files = {"jp2": rel("s2/*.SAFE/GRANULE/*/IMG_DATA/R*/*.jp2"), "mtd": rel("s2/*.SAFE/MTD_MSIL2A.xml"),
             "s1": rel("s1/*.tif"), "labels": rel("labels/*.tif")}
    assert all(files.values()), files
    return Template(site, files)


def read_site(root: Path) -> int:
    """Every patch of the scene folder at ``root``: a scene or file the dataset skipped is ``Refused``
    with the dataset's own message; every tensor is finite. Returns the number of patches."""
    ds = SceneFolderDataset(root, "all")
    for reason in ds.skipped:
        raise Refused(reason)
    for i in range(len(ds)):
        sample = ds[i]
        for name, x in sample.inputs.items():
            assert np.isfinite(x.numpy()).all(), f"{name} is not finite"
    return len(ds)


def _copy(t: Template, dst: Path) -> None:
    """The template site, its rasters hard-linked (read-only for the readers), its XML copied (GDAL may
    rewrite a .aux.xml beside a raster it opened)."""
    def link_or_copy(src: str, to: str) -> None:
        if src.endswith(".xml"):
            shutil.copy2(src, to)
        else:
            os.link(src, to)
    shutil.copytree(t.site, dst, copy_function=link_or_copy)


def raster_cases(t: Template, workdir: Path, count: int, seed: int = SEED, *, mutation=mutate) -> Iterator[Case]:
    """One file of the site mutated (headers focused for the rasters: their first 512 bytes)."""
    for k in range(count):
        rng = random.Random(seed + k)
        kind = rng.choice(KINDS)
        rel = rng.choice(t.files[kind])
        root = workdir / f"m{seed + k}" / "site"
        if root.parent.exists():
            shutil.rmtree(root.parent)
        _copy(t, root)
        data = (t.site / rel).read_bytes()
        m = mutation(data, seed + k, focus=None if kind == "mtd" else (0, 512))
        bad = root / rel
        bad.unlink()  # a new file, not a write through the template's hard link
        bad.write_bytes(m.data)
        yield Case(f"{kind} {rel.name} {m.label}", lambda r=root: read_site(r), str(bad))


FAMILIES = {"rasters": raster_cases}


# -- the test ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def template(tmp_path_factory):
    t = make_template(tmp_path_factory.mktemp("fuzz-rasters"))
    for case in raster_cases(t, tmp_path_factory.mktemp("fuzz-rasters-good"), 1, mutation=unmutated):
        assert case.run() > 0  # the unmutated site reads here (and GDAL's drivers are loaded for the children)
    handles.close_all()
    return t


#: seeds of mutants (of this template, seed SEED) that found a bug, kept as regression cases:
#: a TIFF cut below its 8-byte header (struct.error in raster_limits._tiff: an S1 and a land-cover
#: raster), an MTD declaring an unknown encoding (LookupError from ElementTree), an MTD listing
#: no BOA_ADD_OFFSET for one band (KeyError 'B8A' in read_s2, mid-epoch)
REGRESSIONS = (6066, 6134, 6122, 6140)


def regression_cases(t: Template, workdir: Path) -> Iterator[Case]:
    for seed in REGRESSIONS:
        yield from raster_cases(t, workdir, 1, seed)


@pytest.mark.timeout(240)
def test_raster_mutants_read_or_are_a_typed_error_naming_the_file(template, tmp_path):
    cases = [*regression_cases(template, tmp_path / "regressions"), *raster_cases(template, tmp_path, 36)]
    assert [c.label.split()[0] for c in cases[:4]] == ["s1", "labels", "mtd", "mtd"]  # they still mutate that
    outcomes = fuzz.run_cases(cases, allowed=ALLOWED)
    assert [o.kind for o in outcomes[:4]] == ["clear"] * 4, outcomes[:4]
    row = fuzz.tally(outcomes)
    assert fuzz.failures(outcomes) == [], (row, fuzz.failures(outcomes))
    assert row["clear"] > 0 and row["grew_mb"] < 2048, row
