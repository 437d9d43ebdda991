from __future__ import annotations

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION approvals_auditevent_guard() RETURNS trigger AS $$
BEGIN
    -- The one change allowed: sealing an unsealed event, its content untouched.
    IF TG_OP = 'UPDATE' AND OLD.seq IS NULL AND NEW.seq IS NOT NULL
       AND NEW.id = OLD.id
       AND (NEW.created_at, NEW.actor_kind, NEW.actor, NEW.action, NEW.domain,
            NEW.object_type, NEW.object_id, NEW.summary, NEW.data::text)
           IS NOT DISTINCT FROM
           (OLD.created_at, OLD.actor_kind, OLD.actor, OLD.action, OLD.domain,
            OLD.object_type, OLD.object_id, OLD.summary, OLD.data::text)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only: % on approvals_auditevent refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER approvals_auditevent_append_only
    BEFORE UPDATE OR DELETE ON approvals_auditevent
    FOR EACH ROW EXECUTE FUNCTION approvals_auditevent_guard();
"""

DROP = """
DROP TRIGGER IF EXISTS approvals_auditevent_append_only ON approvals_auditevent;
DROP FUNCTION IF EXISTS approvals_auditevent_guard();
"""


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("approvals", "0001_initial")]

    operations = [migrations.RunPython(create, drop)]
