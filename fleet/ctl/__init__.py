"""fleet ctl: the operator's command line, a client of the manager's HTTP API only.

It uses the standard library alone and imports neither fleet.daemon nor
fleet.manager: `python fleet.pyz ctl ...` runs on any machine that can reach
the API. main.py parses the command line, client.py speaks HTTP, commands.py
does each command, output.py draws tables.
"""
