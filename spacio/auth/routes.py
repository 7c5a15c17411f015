from flask import request
from flask.views import MethodView
from flask_jwt_extended import current_user, get_jwt
from werkzeug.exceptions import HTTPException

from spacio.auth import schemas, services
from spacio.http import Blueprint, client_address

blp = Blueprint("auth", __name__, url_prefix="/api/v1/auth", description="Accounts, sessions and passwords")


def email_in_body():
    """Rate-limit key: the email a login or reset is for (brute force against one account
    from many addresses is limited too). A body with no email to read (not JSON, too large)
    counts against its address."""
    try:
        body = request.get_json(silent=True)
    except HTTPException:  # 413, a broken body, the client went away: the view answers it
        body = None
    email = body.get("email") if isinstance(body, dict) else None
    if not isinstance(email, str) or not email.strip():
        return "no-email:" + client_address()
    return "email:" + email.strip().lower()


@blp.route("/register")
class Register(MethodView):
    @blp.limit("REGISTER_RATE_LIMIT", key_func=client_address)
    @blp.arguments(schemas.RegisterSchema)
    @blp.response(201, schemas.UserSchema)
    @blp.errors(409)
    def post(self, data):
        """Create an account

        Emails compare case-insensitively; the password must be at least 8 characters and
        hard to guess (422 `weak_password` with advice otherwise).
        """
        return services.register(**data)


@blp.route("/login")
class Login(MethodView):
    @blp.limit("LOGIN_RATE_LIMIT", key_func=client_address)
    @blp.limit("LOGIN_RATE_LIMIT", key_func=email_in_body)
    @blp.arguments(schemas.LoginSchema)
    @blp.response(200, schemas.TokensSchema)
    @blp.errors(401)
    def post(self, data):
        """Log in: open a session and get an access and a refresh token"""
        return services.login(data["email"], data["password"])


@blp.route("/refresh")
class Refresh(MethodView):
    @blp.login_required(refresh=True)
    @blp.response(200, schemas.TokensSchema)
    def post(self):
        """Exchange the refresh token (as Bearer) for new tokens

        Refresh tokens rotate: the one presented is spent. Presenting it again within
        `SPACIO_JWT_REFRESH_REUSE_GRACE_S` (20 s) of its rotation (two tabs, a retry) answers
        the same pair again; presenting it later, or any older one, revokes the whole session.
        """
        return services.refresh(get_jwt())


@blp.route("/logout")
class Logout(MethodView):
    @blp.login_required
    @blp.arguments(schemas.LogoutArgsSchema, location="query")
    @blp.response(204)
    def post(self, args):
        """Log out: revoke this session (access and refresh token), or every session with `all=true`"""
        services.logout(current_user, get_jwt(), everywhere=args["all"])


@blp.route("/me")
class Me(MethodView):
    @blp.login_required
    @blp.response(200, schemas.UserSchema)
    def get(self):
        """The logged-in user"""
        return current_user

    @blp.login_required
    @blp.arguments(schemas.UpdateMeSchema)
    @blp.response(200, schemas.UserSchema)
    def patch(self, data):
        """Change your name"""
        return services.rename(current_user, data["name"])

    @blp.login_required
    @blp.response(204)
    @blp.errors(409)
    def delete(self):
        """Delete your account (409 `owns_spaces` while you own spaces)"""
        services.delete_account(current_user)


@blp.route("/password")
class Password(MethodView):
    @blp.login_required
    @blp.arguments(schemas.PasswordChangeSchema)
    @blp.response(204)
    def post(self, data):
        """Change your password; your other sessions are revoked"""
        services.change_password(current_user, get_jwt(), data["current_password"], data["new_password"])


@blp.route("/password-reset")
class PasswordReset(MethodView):
    @blp.limit("PASSWORD_RESET_RATE_LIMIT", key_func=client_address)
    @blp.limit("PASSWORD_RESET_RATE_LIMIT", key_func=email_in_body)
    @blp.arguments(schemas.PasswordResetSchema)
    @blp.response(202)
    def post(self, data):
        """Mail a password reset link

        Always 202, whether or not the email has an account. The link is
        `<FRONTEND_URL>/reset?token=...`, single use, valid for an hour.
        """
        services.request_password_reset(data["email"])


@blp.route("/password-reset/confirm")
class PasswordResetConfirm(MethodView):
    @blp.limit("PASSWORD_RESET_RATE_LIMIT", key_func=client_address)
    @blp.arguments(schemas.PasswordResetConfirmSchema)
    @blp.response(204)
    @blp.errors(404, 410)
    def post(self, data):
        """Set a new password with a reset token; every session is revoked"""
        services.confirm_password_reset(data["token"], data["new_password"])
