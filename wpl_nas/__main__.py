"""``python -m wpl_nas`` is the ``wpl-nas`` command."""

from wpl_nas.cli import main

main()
