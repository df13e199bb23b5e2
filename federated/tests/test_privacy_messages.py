"""No seeded PHI leaves a site: the medical generator writes fake PHI into DICOM headers and
reports; after a real (in-process) federated run, no PHI string appears in any message a site
sent back nor in any file the server wrote."""

import json
import re
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from mmdomain_federated.inprocess import LocalGrid
from mmdomain_federated.server_app import run_server

NUM_SITES = 3


def seeded_phi(root: Path) -> set[str]:
    """PHI strings the generator wrote: DICOM identifying tags + names/MRNs/phones in the raw reports."""
    phi: set[str] = set()
    for dcm in root.rglob("*.dcm"):
        ds = pydicom.dcmread(dcm, stop_before_pixels=True)
        name = ds.get("PatientName")
        if name:
            phi.update({str(name), name.family_name, name.given_name, f"{name.given_name} {name.family_name}"})
        for tag in ("PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName", "OtherPatientIDs",
                    "PatientTelephoneNumbers", "PatientAddress", "ReferringPhysicianName", "OperatorsName"):
            value = ds.get(tag)
            if value:
                phi.add(str(value))
    for txt in root.rglob("*.txt"):
        text = txt.read_text()
        for pattern in (r"Patient:\s*(\S+)\s+(\S+)", r"MRN:\s*(\d+)", r"Accession:\s*(\S+)",
                        r"(\(\d{3}\) \d{3}-\d{4})", r"Patient address:\s*(.+)", r"Dr\. (\S+) (\S+)"):
            for match in re.finditer(pattern, text):
                phi.update(g.strip() for g in match.groups())
                phi.add(" ".join(g.strip() for g in match.groups()))
    return {p for p in phi if len(p) >= 4}


def leaks(text: str, phi: set[str]) -> list[str]:
    """PHI strings found in ``text`` (case-insensitive); all-digit ones only as whole numbers,
    so that a 7-digit MRN inside a float's digits is not a false alarm."""
    low = text.lower()
    found = []
    for p in phi:
        if p.isdigit():
            if re.search(rf"(?<!\d){p}(?!\d)", text):
                found.append(p)
        elif p.lower() in low:
            found.append(p)
    return found


def message_text(msg) -> str:
    """Every record of a reply: array names/dtypes/shapes, metric and config keys and values."""
    parts = [repr(msg.metadata.message_type)]
    if msg.has_error():
        return parts[0] + repr(msg.error.reason)
    for name, record in msg.content.items():
        if isinstance(record, ArrayRecord):
            parts += [f"{name}:{k}:{a.dtype}:{a.shape}:{a.stype}" for k, a in record.items()]
        else:
            parts.append(f"{name}:{json.dumps(dict(record), default=repr)}")
    return "\n".join(parts)


def file_text(path: Path) -> str:
    if path.suffix == ".safetensors":  # binary tensors; the header (names + metadata) is the text part
        raw = path.read_bytes()
        (size,) = struct.unpack("<Q", raw[:8])
        return raw[8:8 + size].decode()
    if path.suffix == ".npz":
        with np.load(path) as z:
            return "\n".join(z.files)
    return path.read_text(errors="replace")


@pytest.mark.slow
def test_no_seeded_phi_leaves_a_site(registry, settings_for, tmp_path):
    if "medical" not in registry.names("dataset"):
        pytest.skip("dataset 'medical' is not installed")
    root = tmp_path / "sites"
    registry.synthetic_for("medical").generate(root, num_sites=NUM_SITES, seed=3, studies_per_site=20, image_size=32)
    phi = seeded_phi(root)
    assert len(phi) > 50 and any(p.isdigit() for p in phi) and any("(" in p for p in phi)
    # the detector works: the raw data does contain the PHI
    assert leaks(next(root.rglob("*.txt")).read_text(), phi)

    s = settings_for(dataset="medical", data_root=str(root), num_server_rounds=2, max_steps=1, batch_size=8,
                     readiness=True, fused_eval=True, central_dp=True, noise_multiplier=0.1)
    grid = LocalGrid(NUM_SITES, s.as_run_config())
    replies = []
    app = grid.app

    def capture(msg, context):
        reply = app(msg, context)
        replies.append(reply)
        return reply
    grid.app = capture
    out = tmp_path / "run"
    summary = run_server(grid, s, out)
    assert summary["stopped"] == "completed" and summary["rounds"] == 2

    kinds = {r.metadata.message_type for r in replies}
    assert {"query", "train", "evaluate"} <= {k.split(".")[0] for k in kinds}, kinds
    assert not any(r.has_error() for r in replies)
    # the serialisation sees record values: a name smuggled into a reply would be caught
    name = next(p for p in phi if p.isalpha())
    smuggled = Message(RecordDict({"site": ConfigRecord({"note": name.upper()}), "metrics": MetricRecord({"x": 1})}),
                       message_type="train", dst_node_id=101)
    assert leaks(message_text(smuggled), phi)
    for reply in replies:
        text = message_text(reply)
        assert not leaks(text, phi), (reply.metadata.message_type, leaks(text, phi), text[:2000])
    written = sorted(p for p in out.rglob("*") if p.is_file())
    assert {"summary.json", "readiness.json", "events.log", "model.safetensors", "state.json",
                                                                                         "privacy-ledger.jsonl"} <= \
        {p.name for p in written}
    for path in written:
        found = leaks(file_text(path), phi)
        assert not found, (path.name, found)


def test_a_failing_site_sends_the_error_type_only(settings_for, registry, tmp_path):
    """A data error names the file; at a hospital a path can carry a patient id. Only the type leaves."""
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    from mmdomain_federated import task
    from mmdomain_federated.client_app import app as client_app
    from mmdomain_federated.inprocess import LocalGrid
    from mmdomain_federated.records import numpy_to_arrays

    s = settings_for()
    secret = tmp_path / "p12345678" / "DOE^JANE"  # a site folder named after a patient
    grid = LocalGrid(2, s.as_run_config(), node_configs=[{"data-root": str(secret)}] * 2)
    msg = Message(RecordDict({"arrays": numpy_to_arrays(task.get_weights(task.build(s, registry))),
                              "config": ConfigRecord({"server-round": 1, "fused-eval": True})}),
                  message_type=MessageType.TRAIN, dst_node_id=101)
    try:
        reply = client_app(msg, grid.contexts[101])
        leaving = repr(reply.error) if reply.has_error() else repr(reply.content)
    except Exception as exc:  # noqa: BLE001 - what the site process would report upward
        assert exc.__cause__ is None and exc.__suppress_context__
        leaving = repr(exc)
    assert "DataError" in leaving
    assert "12345678" not in leaving and "DOE" not in leaving, leaving
