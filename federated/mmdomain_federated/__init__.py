"""mmdomain-federated: a Flower (1.42, Message API) app around mmdomain's core.

``task`` does the ML work (no flwr import), ``aggregation`` the modality-aware averaging,
screening and central DP noise (numpy), ``privacy`` the accountant and ledger, ``policy``
the site policy, ``state`` server checkpoints; ``client_app`` / ``server_app`` only turn
records into task calls and back.
"""
