"""`contrastive index add|search|repair|export|import|alias`: one module per subcommand
(`import` is a keyword: its module is `import_`; `alias` is a package of its own
subcommands), registered in service/cli.py's table.

add and search work on a Target (targets.py): a collection in this process (local.py) or
on a running server (remote.py); images.py reads the files. options.py holds the flags and
help texts the subcommands share and the Settings their flags give, report.py what every
subcommand says on stderr (progress, and how it fails).
"""
