from diagnosis import views
from diagnosis.accounts import ThrottledLoginView
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

urlpatterns = [
    path("", views.upload, name="upload"),
    path("model", views.model_card, name="model_card"),
    path("health", views.health, name="health"),
    path("history", views.history, name="history"),
    path("predictions/<int:pk>", views.prediction_detail, name="prediction"),
    path("predictions/<int:pk>/feedback", views.feedback, name="feedback"),
    path("monitoring", views.monitoring_page, name="monitoring"),
    path("account/login", ThrottledLoginView.as_view(), name="login"),
    path("account/logout", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "account/password",
        auth_views.PasswordChangeView.as_view(
            template_name="diagnosis/password.html", success_url="/"
        ),
        name="password_change",
    ),
    path("account/tokens", views.tokens, name="tokens"),
    path("admin/", admin.site.urls),
    path("api/v1/predictions", views.api_predictions, name="api_predictions"),
    path("api/v1/predictions/<int:pk>", views.api_prediction, name="api_prediction"),
    path("api/v1/predictions/<int:pk>/feedback", views.api_feedback, name="api_feedback"),
    path("api/v1/heatmaps/<str:token>.jpg", views.heatmap, name="heatmap"),
]

handler400 = views.bad_request
handler403 = views.permission_denied
handler404 = views.not_found
handler500 = views.server_error
