from django.db import migrations, models

GROUP = "synthetic traffic"
SMOKE_TEST_ACCOUNT = "smoke-test"  # the name docs/operations.md gives the deploy's account


def mark_the_smoke_test_account(apps, schema_editor):
    """The group exists from the start; the documented smoke-test account joins it, and its
    earlier uploads are marked, so the monitoring page stops counting them at this release."""
    Group = apps.get_model("auth", "Group")
    User = apps.get_model("auth", "User")
    group, _ = Group.objects.get_or_create(name=GROUP)
    for user in User.objects.filter(username=SMOKE_TEST_ACCOUNT):
        user.groups.add(group)
        for model in ("Prediction", "Refusal"):
            apps.get_model("diagnosis", model).objects.filter(user=user).update(synthetic=True)


class Migration(migrations.Migration):

    dependencies = [
        ("diagnosis", "0005_held_item"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [
        *(
            migrations.AddField(
                model_name=model,
                name="synthetic",
                field=models.BooleanField(
                    default=False,
                    help_text="sent by an account in the 'synthetic traffic' group (the "
                    "deploy's smoke test): kept out of the monitoring page and labelled apart "
                    "in the metrics",
                ),
            )
            for model in ("prediction", "refusal")
        ),
        migrations.RunPython(mark_the_smoke_test_account, migrations.RunPython.noop),
    ]
