"""Related-instance counts kept by triggers

The database maintains NumberOf*Related* counts itself: one INSERT per stored instance
instead of an INSERT and three UPDATE round trips through the driver.

Revision ID: 0002
Revises: 0001
"""
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# (name, table, event, body using NEW/OLD)
_TRIGGERS = [
    ("trg_instances_ins", "instances", "INSERT", [
        "UPDATE series SET num_instances = num_instances + 1 WHERE pk = NEW.series_pk",
        "UPDATE studies SET num_instances = num_instances + 1 WHERE pk = "
        "(SELECT study_pk FROM series WHERE pk = NEW.series_pk)",
        "UPDATE patients SET num_instances = num_instances + 1 WHERE pk = "
        "(SELECT st.patient_pk FROM studies st JOIN series se ON se.study_pk = st.pk "
        "WHERE se.pk = NEW.series_pk)",
    ]),
    ("trg_instances_del", "instances", "DELETE", [
        "UPDATE series SET num_instances = num_instances - 1 WHERE pk = OLD.series_pk",
        "UPDATE studies SET num_instances = num_instances - 1 WHERE pk = "
        "(SELECT study_pk FROM series WHERE pk = OLD.series_pk)",
        "UPDATE patients SET num_instances = num_instances - 1 WHERE pk = "
        "(SELECT st.patient_pk FROM studies st JOIN series se ON se.study_pk = st.pk "
        "WHERE se.pk = OLD.series_pk)",
    ]),
    ("trg_series_ins", "series", "INSERT", [
        "UPDATE studies SET num_series = num_series + 1 WHERE pk = NEW.study_pk",
        "UPDATE patients SET num_series = num_series + 1 WHERE pk = "
        "(SELECT patient_pk FROM studies WHERE pk = NEW.study_pk)",
    ]),
    ("trg_series_del", "series", "DELETE", [
        "UPDATE studies SET num_series = num_series - 1 WHERE pk = OLD.study_pk",
        "UPDATE patients SET num_series = num_series - 1 WHERE pk = "
        "(SELECT patient_pk FROM studies WHERE pk = OLD.study_pk)",
    ]),
    ("trg_studies_ins", "studies", "INSERT", [
        "UPDATE patients SET num_studies = num_studies + 1 WHERE pk = NEW.patient_pk",
    ]),
    ("trg_studies_del", "studies", "DELETE", [
        "UPDATE patients SET num_studies = num_studies - 1 WHERE pk = OLD.patient_pk",
    ]),
]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, table, event, body in _TRIGGERS:
        if dialect == "postgresql":
            op.execute(f"CREATE FUNCTION {name}_fn() RETURNS trigger AS $$ BEGIN "
                       + "; ".join(body) + "; RETURN NULL; END $$ LANGUAGE plpgsql")
            op.execute(f"CREATE TRIGGER {name} AFTER {event} ON {table} "
                       f"FOR EACH ROW EXECUTE FUNCTION {name}_fn()")
        else:
            op.execute(f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW BEGIN "
                       + "; ".join(body) + "; END")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, table, _event, _body in reversed(_TRIGGERS):
        op.execute(f"DROP TRIGGER {name}" + (f" ON {table}" if dialect == "postgresql" else ""))
        if dialect == "postgresql":
            op.execute(f"DROP FUNCTION {name}_fn()")
