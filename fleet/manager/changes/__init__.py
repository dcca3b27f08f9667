"""Changing the fleet from the manager: policies (central agent definitions, their
versions and each node's result), and rollouts (an operation or a policy's new
version, wave by wave, stopped by failures), driven under a lease by one manager."""
