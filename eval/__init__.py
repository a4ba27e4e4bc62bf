"""Evaluation: multi-view consistency (more to come: linear probes, 3D correspondence)."""
