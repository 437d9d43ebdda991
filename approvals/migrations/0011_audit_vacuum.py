from django.db import migrations


def vacuum_often(apps, schema_editor):
    # Sealing updates every event once: vacuum the table after every thousand such updates,
    # not after a fifth of it has changed, so old versions do not pile up in its indexes.
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "ALTER TABLE approvals_auditevent SET "
            "(autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000)"
        )


def vacuum_by_default(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "ALTER TABLE approvals_auditevent RESET "
            "(autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold)"
        )


class Migration(migrations.Migration):
    dependencies = [("approvals", "0010_lean_proposal_indexes")]

    operations = [migrations.RunPython(vacuum_often, vacuum_by_default)]
