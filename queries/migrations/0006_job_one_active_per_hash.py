from django.db import migrations, models


def release_duplicates(apps, schema_editor):
    """Jobs made while Redis had forgotten an in-flight mark may share a hash while active: all but the
    oldest of each hash stop counting for dedup, so the unique index can be built."""
    Job = apps.get_model("queries", "Job")
    seen: set[str] = set()
    active = Job.objects.filter(state__in=["queued", "running"]).order_by("created_at")
    for job_id, digest in active.values_list("id", "hash"):
        if digest in seen:
            Job.objects.filter(id=job_id).update(deduplicated=False)
        seen.add(digest)


class Migration(migrations.Migration):
    dependencies = [
        ("queries", "0005_prompt_blocks_stop_reason_request_api"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="deduplicated",
            field=models.BooleanField(
                default=True,
                help_text="Identical submissions join this job while it is queued or running (DEDUP_ENABLED).",
            ),
        ),
        migrations.RunPython(release_duplicates, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="job",
            constraint=models.UniqueConstraint(
                condition=models.Q(("deduplicated", True), ("state__in", ["queued", "running"])),
                fields=("hash",),
                name="job_one_active_per_hash",
            ),
        ),
    ]
