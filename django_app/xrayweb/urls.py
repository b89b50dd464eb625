from diagnosis.accounts import ThrottledLoginView, ThrottledPasswordChangeView, admin_login
from diagnosis.views import api, dicomweb, errors, pages
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

urlpatterns = [
    path("", pages.upload, name="upload"),
    path("model", pages.model_card, name="model_card"),
    path("health", api.health, name="health"),
    path("metrics", api.metrics_endpoint, name="metrics"),
    path("history", pages.history, name="history"),
    path("predictions/<int:pk>", pages.prediction_detail, name="prediction"),
    path("predictions/<int:pk>/feedback", pages.feedback, name="feedback"),
    path("monitoring", pages.monitoring_page, name="monitoring"),
    path("account/login", ThrottledLoginView.as_view(), name="login"),
    path("account/logout", auth_views.LogoutView.as_view(), name="logout"),
    path("account/password", ThrottledPasswordChangeView.as_view(), name="password_change"),
    path("account/tokens", pages.tokens, name="tokens"),
    path("admin/login/", admin_login, name="admin_login"),  # before the admin's own
    path("admin/", admin.site.urls),
    path("api/v1/openapi.json", api.openapi, name="openapi"),
    path("api/v1/predictions", api.api_predictions, name="api_predictions"),
    path("api/v1/predictions/<int:pk>", api.api_prediction, name="api_prediction"),
    path("api/v1/predictions/<int:pk>/feedback", api.api_feedback, name="api_feedback"),
    path("api/v1/heatmaps/<str:token>.jpg", api.heatmap, name="heatmap"),
    path("api/v1/drift", api.api_drift, name="api_drift"),
    path("dicomweb/studies", dicomweb.stow, name="stow"),
    path("dicomweb/studies/<str:study>", dicomweb.stow, name="stow_study"),
]

handler400 = errors.bad_request
handler403 = errors.permission_denied
handler404 = errors.not_found
handler500 = errors.server_error
