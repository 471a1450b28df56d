"""Backends turn Requests into Responses; nothing else (no scoring, no scheduling)."""
