"""Sites by their consortium names (issue #15): node id -> name, as the coordinator registered them.

``register-sites.sh`` of a provisioned coordinator kit (``provision.register_sites``) records each
node id Flower gives at registration with the site's name in ``state/site-nodes.json``; the kit's
``start-superlink.sh`` points ``MMDOMAIN_SITE_NAMES`` at that file, so the ServerApp the SuperLink
starts reads it. The server's event log then says ``site hospital-a (node 4711)`` where it said
``site 4711`` (the readiness lines too; a round's line keys its per-site entries by name), and
``summary.json`` keys its per-site entries (history included) by name and
holds the mapping (``site-names``). ``readiness.json`` and the checkpoints keep node ids: the server
reads them back by node id (count caps, resume). Without the file (simulation, ``fed deploy``, a site
registered by hand) sites keep their node ids.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

ENV = "MMDOMAIN_SITE_NAMES"
PER_SITE_KEYS = ("per-site", "local-epsilon", "dropped-sites")  # a round record's entries keyed by site
_SITE = re.compile(r"\bsite (\d+)\b")


class SiteNames:
    """``names[str(node_id)] = site name``; empty: every site keeps its node id."""

    def __init__(self, names: Mapping[str, str] | None = None):
        self.names = {str(k): str(v) for k, v in (names or {}).items()}

    @classmethod
    def from_env(cls, log: Callable[[str], None] = print) -> "SiteNames":
        """The mapping of the file ``$MMDOMAIN_SITE_NAMES`` (none when unset); a file that cannot be
        read is logged and ignored (the run goes on, naming sites by node id)."""
        path = os.environ.get(ENV)
        if not path:
            return cls()
        try:
            data = json.loads(Path(path).read_text())
            return cls(data["node-ids"])
        except FileNotFoundError:
            log(f"site names: {path} does not exist yet (no site registered by register-sites.sh): node ids used")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log(f"site names: {path} unreadable ({type(exc).__name__}; expected {{\"node-ids\": {{id: name}}}}): "
                "node ids used")
        return cls()

    def __bool__(self) -> bool:
        return bool(self.names)

    def label(self, site: Any) -> str:
        """The site's name, else its node id."""
        return self.names.get(str(site), str(site))

    def text(self, line: str) -> str:
        """``site 4711`` -> ``site hospital-a (node 4711)`` for every registered node id in ``line``."""
        if not self.names:
            return line
        return _SITE.sub(lambda m: f"site {self.names[m[1]]} (node {m[1]})" if m[1] in self.names else m[0], line)

    def keyed(self, per_site: Mapping[Any, Any] | None) -> Any:
        """A per-site dict keyed by name instead of node id (unregistered ids stay)."""
        if not self.names or not isinstance(per_site, Mapping):
            return per_site
        return {self.label(k): v for k, v in per_site.items()}

    def record(self, record: dict[str, Any]) -> dict[str, Any]:
        """A round's record with its per-site entries keyed by name."""
        if not self.names:
            return record
        return {**record, **{k: self.keyed(record[k]) for k in PER_SITE_KEYS if k in record}}

    def summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """``summary.json`` with its per-site entries keyed by name, and ``site-names`` (node id -> name)."""
        if not self.names:
            return summary
        out = dict(summary)
        out["site-names"] = dict(sorted(self.names.items()))
        for key in ("final", "personalised"):
            if isinstance(out.get(key), dict) and "per_site" in out[key]:
                out[key] = {**out[key], "per_site": self.keyed(out[key]["per_site"])}
        for key in ("refused", "local-epsilon"):
            out[key] = self.keyed(out.get(key))
        out["rejections"] = [{**r, "site": self.label(r.get("site"))} for r in out.get("rejections") or []]
        out["history"] = [self.record(h) for h in out.get("history") or []]
        return out
