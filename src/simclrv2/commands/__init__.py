"""The user-facing commands that are not training stages, one module each: ``evaluate``,
``predict``, ``embed``, ``select``, ``export``, ``import_tf``, ``report``, ``run`` (the whole
method as one job, and ``demo``) and ``models``. The command line (``simclrv2.cli``) names each
command's function as ``"simclrv2.commands.<module>:cmd_<name>"`` and imports it after parsing.
"""
