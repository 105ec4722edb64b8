from django.contrib import admin
from django.urls import include, path

from jobs.storage import file_download

urlpatterns = [
    path("admin/", admin.site.urls),
    path("files/<str:token>", file_download, name="file-download"),
    path("", include("jobs.urls")),
]

handler404 = "jobs.api_errors.json_404"
handler500 = "jobs.api_errors.json_500"
