"""The ``fgmm`` command (also ``python -m fgmm_lib`` and ``python -m fgmm_lib.cli``).

:mod:`fgmm_lib.cli.main` parses the command line and imports the one module of the command it names:
``generate``, ``pretrain``, ``evaluate``, ``imports`` (every ``import-*``), ``bench_loss``,
``bench_import``, ``bench_ddp``, ``bench_train``; :mod:`fgmm_lib.cli.options` holds the options they share.
"""
