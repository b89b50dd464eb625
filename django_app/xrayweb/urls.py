from diagnosis import views
from django.urls import path

urlpatterns = [
    path("", views.upload, name="upload"),
    path("model", views.model_card, name="model_card"),
    path("health", views.health, name="health"),
    path("api/v1/predictions", views.api_predictions, name="api_predictions"),
    path("api/v1/heatmaps/<str:token>.png", views.heatmap, name="heatmap"),
]

handler400 = views.bad_request
handler404 = views.not_found
handler500 = views.server_error
