"""A Ray-free Grid that delivers Messages to the real ClientApp in this process.

Used by the tests and the benchmark to run the real ServerApp loop and ClientApp handlers on
real Messages. A ClientApp that raises gives an error reply, as Flower's runtime does (the
site failed; the run goes on). ``down`` holds nodes that stop answering (a site that
disappears); ``tamper[node](reply)`` may alter a node's reply (e.g. inject NaN); ``recording(store)``
is a hook that only keeps the train replies.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class LocalGrid(Grid):
    def __init__(self, num_sites: int, run_config: dict[str, Any], *, node_configs: list[dict] | None = None,
                 client_app=None):
        from .client_app import app as default_app

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
        self.app = client_app or default_app
        self.run_config = dict(run_config)
        self.contexts: dict[int, Context] = {}
        for i in range(num_sites):
            node_id = 101 + i
            cfg = {"partition-id": i, "num-partitions": num_sites}
            if node_configs:
                cfg = {**cfg, **node_configs[i]}
            self.contexts[node_id] = Context(run_id=1, node_id=node_id, node_config=cfg, state=RecordDict(),
                                             run_config=dict(run_config))
        self.down: set[int] = set()
        self.tamper: dict[int, Callable[[Message], Message]] = {}
        self.sent: list[Message] = []
        self._replies: dict[str, Message] = {}

    def site_names(self):
        """Each node named ``site-<partition-id>``, as the cross-site matrix names its columns."""
        from .site_names import SiteNames

        return SiteNames({node: f"site-{ctx.node_config['partition-id']}" for node, ctx in self.contexts.items()})

    def set_run(self, run) -> None:  # pragma: no cover - not used in-process
        self._run = run

    def run(self):  # pragma: no cover
        return getattr(self, "_run", None)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for i, msg in enumerate(messages):
            mid = f"m{len(self.sent)}-{i}"
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            if node in self.down or node not in self.contexts:
                continue
            try:
                reply = self.app(copy.deepcopy(msg), self.contexts[node])  # each site its own copy, as on the wire
            except Exception as exc:  # noqa: BLE001 - as Flower's runtime: an error reply, its reason format
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc)}:<'{exc}'>"),
                                reply_to=msg)
            if node in self.tamper:
                reply = self.tamper[node](reply)
            self._replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(list(messages)))


def recording(store: list[Message]) -> Callable[[Message], Message]:
    """A ``tamper`` hook that alters nothing: it keeps a copy of each train reply (not error
    replies) in ``store``, to look at what a site sent."""
    def keep(reply: Message) -> Message:
        if reply.metadata.message_type == "train" and not reply.has_error():
            store.append(copy.deepcopy(reply))
        return reply
    return keep
