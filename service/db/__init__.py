"""Job records in SQL: a SQLite file by default, PostgreSQL by URL (SQLAlchemy 2)."""

from service.db.engine import Database
from service.db.models import AuditEvent, Base, JobRecord, NodeAssociation, NodeInstance, NodeStudy

__all__ = ["AuditEvent", "Base", "Database", "JobRecord", "NodeAssociation", "NodeInstance", "NodeStudy"]
