from oauth2_provider.oauth2_validators import OAuth2Validator


class Validator(OAuth2Validator):
    """The ID token's `sub` is the username, the value introspection answers in `username`
    (it has no `sub`): the proxy's `upstream.subject_claim = "username"` then names the same
    subject whichever of the two it reads."""

    def get_additional_claims(self, request):
        return {"preferred_username": request.user.get_username()}

    def get_claim_dict(self, request):
        claims = super().get_claim_dict(request)
        claims["sub"] = request.user.get_username()
        return claims
