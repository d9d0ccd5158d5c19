from dtproc.cli import entry

entry()
