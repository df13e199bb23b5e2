"""mmdomain-federated: a Flower (1.42, Message API) app around mmdomain's core.

Site side, no flwr: ``settings`` (the run config, typed), ``groups`` (parameter groups and the
one modality-aware weighting rule), ``task`` (model, site data, local training, evaluation),
``readiness`` (the noised readiness report), ``local_dp`` (DP-SGD), ``policy`` (site policy).
Server side: ``aggregation`` (averaging, screening, central-DP noise; numpy), ``strategy``
(Flower's FedAvg / FedProx with that aggregation), ``rounds`` (readiness, training and
evaluation rounds; ``RoundResult``), ``run_state`` (resume, accountant, ledger), ``privacy``
(accountant, ledger), ``budget`` (noise from a target epsilon), ``state`` (checkpoints),
``server_log``. Both: ``records`` (the wire format, bf16 included), ``secure`` (SecAgg+);
every JSON file of a run is written by the core's ``mmdomain.jsonout`` (strict JSON).
``client_app`` / ``server_app`` only turn records into these calls and back. Launching:
``simulate``, ``deploy``, ``inprocess``, ``warm_exec``; commands: ``demo`` (with ``experiment``
and ``report``), ``compare``, ``plugin``. For analysts (the public API): ``analysis`` (a
federation in one call; a run folder as pandas tables).
"""
