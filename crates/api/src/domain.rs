//! Validated values: they exist only valid.

use builderos_shared::http::ApiError;

/// A lower-cased email address of sane shape and length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Parses and normalises an email address.
    ///
    /// # Errors
    /// 400 `ERR_INPUTS` naming `field`.
    pub fn parse(field: &str, raw: &str) -> Result<Self, ApiError> {
        let s = raw.trim().to_lowercase();
        let bad = || ApiError::inputs(format!("{field}: not a valid email address"));
        if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (local, domain) = s.rsplit_once('@').ok_or_else(bad)?;
        if local.is_empty()
            || local.len() > 64
            || local.contains('@')
            || domain.len() < 3
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
            || !domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            return Err(bad());
        }
        Ok(Self(s))
    }

    /// The normalised address.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A lowercase slug: `[a-z0-9]` and single dashes, 2–63 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slug(String);

impl Slug {
    /// Parses a slug.
    ///
    /// # Errors
    /// 400 `ERR_INPUTS` naming `field`.
    pub fn parse(field: &str, raw: &str) -> Result<Self, ApiError> {
        let ok = (2..=63).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !raw.starts_with('-')
            && !raw.ends_with('-')
            && !raw.contains("--");
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ApiError::inputs(format!(
                "{field}: must be 2-63 characters of a-z, 0-9 and single dashes, not starting or ending with a dash"
            )))
        }
    }

    /// The slug.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A human name: 1–100 characters after trimming, no control characters.
///
/// # Errors
/// 400 `ERR_INPUTS` naming `field`.
pub fn display_name(field: &str, raw: &str) -> Result<String, ApiError> {
    let s = raw.trim();
    if s.is_empty() || s.chars().count() > 100 || s.chars().any(char::is_control) {
        Err(ApiError::inputs(format!(
            "{field}: must be 1-100 characters without control characters"
        )))
    } else {
        Ok(s.to_owned())
    }
}

/// The message for a cursor this server did not make.
pub const BAD_CURSOR: &str = "cursor: not a cursor returned by this endpoint";

/// An opaque pagination cursor carrying `key`, bound to the org it came from.
#[must_use]
pub fn encode_cursor(org: uuid::Uuid, key: impl std::fmt::Display) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{org}:{key}"))
}

/// The key of a cursor made by [`encode_cursor`] for `org`.
///
/// # Errors
/// [`BAD_CURSOR`] when it is malformed or belongs to another org.
pub fn decode_cursor(org: uuid::Uuid, cursor: &str) -> Result<String, String> {
    use base64::Engine as _;
    let bad = || BAD_CURSOR.to_owned();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (o, key) = text.split_once(':').ok_or_else(bad)?;
    if o != org.to_string() {
        return Err(bad());
    }
    Ok(key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Emails are normalised; malformed and overlong ones are refused.
    #[test]
    fn emails() {
        assert_eq!(
            Email::parse("email", " Alice@Example.COM ")
                .expect("valid")
                .as_str(),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "a b@example.com",
            "alice@exa..mple.com",
            "alice@@example.com",
        ] {
            assert!(Email::parse("email", bad).is_err(), "{bad}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse("email", &long).is_err());
    }

    /// Slugs are strict.
    #[test]
    fn slugs() {
        assert!(Slug::parse("slug", "acme-corp").is_ok());
        for bad in [
            "A",
            "a",
            "-ab",
            "ab-",
            "a--b",
            "ab_c",
            "ab c",
            &"a".repeat(64),
        ] {
            assert!(Slug::parse("slug", bad).is_err(), "{bad}");
        }
    }
}
