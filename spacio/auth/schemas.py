import marshmallow as ma

from spacio.schemas import Email, Name, Password, Timestamp


class RegisterSchema(ma.Schema):
    email = Email(required=True)
    password = Password(required=True)
    name = Name(required=True)


class LoginSchema(ma.Schema):
    email = Email(required=True)
    password = Password(required=True)


class UserSchema(ma.Schema):
    id = ma.fields.UUID(dump_only=True)
    email = ma.fields.String(dump_only=True)
    name = ma.fields.String(dump_only=True)
    created_at = Timestamp()


class UpdateMeSchema(ma.Schema):
    name = Name(required=True)


class TokensSchema(ma.Schema):
    access_token = ma.fields.String(required=True)
    refresh_token = ma.fields.String(required=True)
    token_type = ma.fields.String(required=True, metadata={"example": "Bearer"})
    expires_in = ma.fields.Integer(required=True, metadata={"description": "Access token lifetime in seconds"})


class LogoutArgsSchema(ma.Schema):
    all = ma.fields.Boolean(load_default=False, metadata={"description": "Revoke every session of the user"})


class PasswordChangeSchema(ma.Schema):
    current_password = Password(required=True)
    new_password = Password(required=True)


class PasswordResetSchema(ma.Schema):
    email = Email(required=True)


class PasswordResetConfirmSchema(ma.Schema):
    token = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=200))
    new_password = Password(required=True)
