from django.urls import URLPattern, path, re_path

from compat import views

urlpatterns: list[URLPattern] = [
    path("v1/messages", views.messages_create, name="v1-messages"),
    path("v1/chat/completions", views.chat_completions_create, name="v1-chat-completions"),
    path("v1/models", views.models_list, name="v1-models"),
    path("v1/models/<str:model_id>", views.models_detail, name="v1-model"),
    re_path(r"^v1/(?P<rest>.*)$", views.not_found, name="v1-not-found"),
]
