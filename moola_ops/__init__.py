"""Moola ops: inventory, deploy engine, deployment log, checklist phases and health checks.

Rule of the house: nothing here imports torch or pandas at import time.
"""
