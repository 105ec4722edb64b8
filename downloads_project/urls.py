from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

from jobs.ops import probes as ops
from jobs.web.signed_links import file_download
from jobs.web.views import downloads_page

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="login"), name="logout"),
    path("files/<str:token>", file_download, name="file-download"),
    path("health", ops.health, name="health"),
    path("ready", ops.ready, name="ready"),
    path("metrics", ops.metrics_view, name="metrics"),
    # Readable without signing in: the schema describes the public contract (docs/api.md) and
    # holds no secret; every operation it lists still requires authentication.
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[AllowAny]), name="api-schema"),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(url_name="api-schema", permission_classes=[AllowAny]),
        name="api-docs",
    ),
    path("", downloads_page, name="downloads"),
    path("", include("jobs.api.urls")),
    path("", include("notices.urls")),
    path("", include("webhooks.urls")),
    path("", include("legacy.urls")),  # the old endpoint (legacy/): deleted with it
]

handler404 = "jobs.api.errors.json_404"
handler500 = "jobs.api.errors.json_500"
