"""One module per ``flythinker`` command: ``add_parser(sub)`` registers it, ``run(args)`` runs it."""
