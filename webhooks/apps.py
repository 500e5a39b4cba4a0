from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"

    def ready(self) -> None:
        from queries import signals
        from webhooks import listeners

        signals.request_recorded.connect(listeners.on_request_recorded, dispatch_uid="webhooks-request")
        signals.job_finished.connect(listeners.on_job_finished, dispatch_uid="webhooks-job")
        signals.worker_maintenance.connect(listeners.on_worker_maintenance, dispatch_uid="webhooks-sweep")
