"""Operator work over the same named queries: reports, purge, fsck, import-fs
and export-fs.

These are batch tools on a SyncConnection (pgblobs/db/connector.py, plain
psycopg2): no reactor, one transaction per unit of work, progress on a terminal.
"""
