"""Choosing which images to label from self-supervised features (``simclrv2 select``)."""

from .methods import DEFAULT_METHOD, METHODS, Selection, parse_budget, select

__all__ = ["DEFAULT_METHOD", "METHODS", "Selection", "parse_budget", "select"]
