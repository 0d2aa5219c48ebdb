"""Backups of a site cluster to object storage, and disaster recovery from them.

crypto.py (keys, sealed objects), repository.py (a location and its object layout),
recovery.py (point in time, verify, restore to a directory, retention), job.py (the leader's
snapshots and journal), routes.py (API), commands.py (CLI). See docs/backup.md.
"""
