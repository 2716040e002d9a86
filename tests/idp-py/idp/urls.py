from django.contrib.auth import views as auth_views
from django.urls import include, path
from oauth2_provider import urls as dot

urlpatterns = [
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(template_name="login.html"),
        name="login",
    ),
    # The provider under /o/ (issuer http://host:port/o), as django-oauth-toolkit documents.
    path(
        "o/",
        include(
            (dot.base_urlpatterns + dot.oidc_urlpatterns, "oauth2_provider"),
            namespace="oauth2_provider",
        ),
    ),
    # RFC 8414 metadata at the origin: /.well-known/oauth-authorization-server/o for issuer
    # .../o (the toolkit's documented mount). Its OIDC discovery document lists no revocation
    # or introspection endpoint; this one does.
    path("", include((dot.metadata_urlpatterns, "metadata"))),
]
