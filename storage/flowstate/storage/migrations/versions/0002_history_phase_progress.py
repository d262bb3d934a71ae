"""History entries keep the in-phase progress a PROGRESS report carried.

Revision ID: 0002_history_phase_progress
Revises: 0001_initial
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_history_phase_progress"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add flow_history.phase_progress (NULL for every entry but progress reports)."""
    op.add_column("flow_history", sa.Column("phase_progress", sa.Float(), nullable=True))


def downgrade() -> None:
    """Drop flow_history.phase_progress."""
    op.drop_column("flow_history", "phase_progress")
