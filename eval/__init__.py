"""Evaluation of what the 3D awareness buys: multi-view consistency (``consistency``), 3D
correspondence (``correspondence``: APE / PCDP with baselines) and linear probes
(``linear_probe`` with ``protocols``, ``probe_heads``, ``probe_checkpoint``, ``augment``,
``datasets``, ``metrics``, ``plot``)."""
