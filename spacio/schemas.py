"""Fields shared by the feature schemas."""

import unicodedata

import marshmallow as ma


# Cc (C0, DEL, C1) and Cs (lone surrogates, which JSON can escape), and what str.strip() strips
SURROGATES = frozenset(range(0xD800, 0xE000))
CONTROL = frozenset(range(0x20)) | frozenset(range(0x7F, 0xA0)) | SURROGATES
WHITESPACE = frozenset(c for c in range(0x3001) if chr(c).isspace())  # none above U+3000


def _char_class(codepoints, *, negate=False):
    """A regex character class, written with escapes only (Python re and ECMA-262 alike)."""
    points, ranges = sorted(codepoints), []
    for point in points:
        if ranges and ranges[-1][1] == point - 1:
            ranges[-1][1] = point
        else:
            ranges.append([point, point])

    def escape(point):
        return f"\\x{point:02x}" if point <= 0xFF else f"\\u{point:04x}"

    body = "".join(escape(a) if a == b else f"{escape(a)}-{escape(b)}" for a, b in ranges)
    return f"[{'^' if negate else ''}{body}]"


def _repeat(atom, low, high):
    if high is None:
        return f"{atom}*" if low == 0 else f"{atom}{{{low},}}"
    return atom if low == high == 1 else f"{atom}{{{low},{high}}}"


def trimmed_pattern(allowed_controls="", min_length=None, max_length=None):
    """The regex of the strings a Trimmed field accepts: any surrounding white space (stripped
    before checking), then ``min_length`` to ``max_length`` characters without control
    characters other than ``allowed_controls``, which start and end with no white space."""
    # lone surrogates are left out: only Python strings hold them (JSON validators and
    # generators such as Rust's regex or Hypothesis have no such characters), the server
    # still refuses them
    forbidden = CONTROL - SURROGATES - {ord(ch) for ch in allowed_controls}
    space = _char_class(WHITESPACE)
    inner = _char_class(forbidden, negate=True)  # allowed inside the trimmed value
    edge = _char_class(forbidden | WHITESPACE, negate=True)  # its first and last character
    low, high = min_length or 0, max_length
    if high is not None and high < 1:
        core = None
    elif high == 1:
        core = edge
    elif low <= 1:
        core = f"{edge}(?:{_repeat(inner, 0, None if high is None else high - 2)}{edge})?"
    else:
        core = f"{edge}{_repeat(inner, low - 2, None if high is None else high - 2)}{edge}"
    if core is None:
        middle = ""
    elif low == 0:
        middle = f"(?:{core})?"
    else:
        middle = core
    return f"^{space}*{middle}{space}*$"


class Trimmed(ma.fields.String):
    """A string stripped of surrounding white space, with no control characters.

    Its Length validator applies to the stripped value, so the spec states the whole rule
    (white space, control characters, length after stripping) as one ``pattern`` instead of
    minLength/maxLength, which would count the white space that is stripped."""

    ALLOWED_CONTROLS = ""
    CONTROL_MESSAGE = "Control characters are not allowed."

    def __init__(self, *, validate=None, metadata=None, **kwargs):
        validators = [] if validate is None else list(validate) if isinstance(validate, (list, tuple)) else [validate]
        self.lengths = [v for v in validators if isinstance(v, ma.validate.Length)]
        if any(v.equal is not None for v in self.lengths) or len(self.lengths) > 1:
            raise ValueError("Trimmed takes at most one Length(min, max) validator")
        low = self.lengths[0].min if self.lengths else None
        high = self.lengths[0].max if self.lengths else None
        metadata = {"pattern": trimmed_pattern(self.ALLOWED_CONTROLS, low, high),
                    "description": self.describe(low, high), **(metadata or {})}
        super().__init__(validate=[v for v in validators if v not in self.lengths], metadata=metadata, **kwargs)

    def describe(self, low, high):
        if low and high is not None:
            length = f"{low} to {high} characters"
        elif high is not None:
            length = f"at most {high} characters"
        else:
            length = f"at least {low or 0} characters"
        controls = " but line breaks and tabs" if self.ALLOWED_CONTROLS else ""
        return f"Surrounding white space is trimmed, then: {length}, no control characters{controls}."

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs).strip()
        if any(unicodedata.category(ch) in ("Cc", "Cs") and ch not in self.ALLOWED_CONTROLS for ch in value):
            raise ma.ValidationError(self.CONTROL_MESSAGE)
        for length in self.lengths:
            length(value)
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
