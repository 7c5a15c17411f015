"""Fields shared by the feature schemas."""

import unicodedata

import marshmallow as ma


class Trimmed(ma.fields.String):
    """A string stripped of surrounding white space, with no control characters."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs).strip()
        if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
            raise ma.ValidationError("Control characters are not allowed.")
        return value


class Email(ma.fields.Email):
    """An email address, compared case-insensitively: stored trimmed and lower-cased."""

    def __init__(self, **kwargs):
        super().__init__(validate=ma.validate.Length(max=254), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            value = value.strip()
        return super()._deserialize(value, attr, data, **kwargs).lower()


def Name(**kwargs):  # noqa: N802 - a field factory
    return Trimmed(validate=ma.validate.Length(min=1, max=100), **kwargs)


class Password(ma.fields.String):
    """A password: strength is checked by the service, length bounded here."""

    def __init__(self, **kwargs):
        super().__init__(validate=ma.validate.Length(min=1, max=256), load_only=True, **kwargs)


class Timestamp(ma.fields.AwareDateTime):
    def __init__(self, **kwargs):
        super().__init__(format="iso", default_timezone=None, dump_only=True, **kwargs)
