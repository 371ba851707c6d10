"""Operator work over the same named queries: reports, purge, fsck, import-fs.

These are batch tools on plain psycopg2 connections (database.connect_sync):
no reactor, one transaction per unit of work, progress on a terminal.
"""
