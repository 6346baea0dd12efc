"""calls.worker: the agent process ("host:pid") that owned each call

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

With `sipagent serve --workers K`, a worker that dies leaves its calls' rows open; the
supervisor ends exactly those (end reason "worker-died") by this column. Nullable: calls
recorded before this revision have no owner to record. Batch mode so SQLite can follow.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("worker", sa.String(128), nullable=True))
        batch.create_index("ix_calls_worker", ["worker"])


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_index("ix_calls_worker")
        batch.drop_column("worker")
