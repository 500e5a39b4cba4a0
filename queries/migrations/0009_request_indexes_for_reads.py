"""QueryRequest keeps only the indexes its reads use: every cache hit inserts a row.

The single-column indexes on ``job_id`` and ``api_key_id`` duplicate the composite indexes that lead
with them, and the hash's ``varchar_pattern_ops`` twin (PostgreSQL) serves LIKE, which nothing runs.
The hash's own index is renamed rather than built again, so no table is locked while it builds.
"""

import django.db.models.deletion
from django.db import migrations, models

TABLE = "queries_queryrequest"
NAME = "request_hash_idx"


def _hash_indexes(schema_editor) -> list[str]:
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, TABLE)
    return [
        name
        for name, info in constraints.items()
        if info["index"] and not info["primary_key"] and info["columns"] == ["hash"]
    ]


def hash_index_keep(apps, schema_editor) -> None:
    quote = schema_editor.quote_name
    for name in _hash_indexes(schema_editor):
        if name == NAME:
            continue
        if name.endswith("_like"):
            schema_editor.execute(f"DROP INDEX {quote(name)}")
        elif schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(f"ALTER INDEX {quote(name)} RENAME TO {quote(NAME)}")
        else:
            schema_editor.execute(f"DROP INDEX {quote(name)}")
            schema_editor.execute(f"CREATE INDEX {quote(NAME)} ON {quote(TABLE)} ({quote('hash')})")


def hash_index_restore(apps, schema_editor) -> None:
    # Back to the field's own index (and, on PostgreSQL, its LIKE twin), as 0001 made them.
    model = apps.get_model("queries", "QueryRequest")
    schema_editor.execute(f"DROP INDEX {schema_editor.quote_name(NAME)}")
    for sql in schema_editor._field_indexes_sql(model, model._meta.get_field("hash")):
        schema_editor.execute(sql)


class Migration(migrations.Migration):
    dependencies = [
        ("queries", "0008_job_error_upstream_auth"),
    ]

    operations = [
        migrations.AlterField(
            model_name="queryrequest",
            name="api_key",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="requests",
                to="queries.apikey",
            ),
        ),
        migrations.AlterField(
            model_name="queryrequest",
            name="job",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="requests",
                to="queries.job",
            ),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="queryrequest",
                    name="hash",
                    field=models.CharField(max_length=64),
                ),
                migrations.AddIndex(
                    model_name="queryrequest",
                    index=models.Index(fields=["hash"], name=NAME),
                ),
            ],
            database_operations=[migrations.RunPython(hash_index_keep, hash_index_restore)],
        ),
    ]
