//! Entry names: what a safe relative path is, and when two names collide.

use unicode_normalization::UnicodeNormalization;

use crate::error::PackError;
use crate::limits::Limits;

/// Checks that `name` is a plain relative path: `/`-separated, no empty, `.` or `..`
/// segments, no backslash, drive letter, NUL or control character, within the limits.
///
/// # Errors
/// The [`PackError`] naming the first rule broken.
pub fn check(name: &str, limits: &Limits) -> Result<(), PackError> {
    let shown = name.escape_debug();
    if name.is_empty() {
        return Err(PackError::BadPath("empty entry name".into()));
    }
    if name.contains('\\') {
        return Err(PackError::Backslash(format!(
            "`{shown}` contains a backslash"
        )));
    }
    if name.starts_with('/') {
        return Err(PackError::AbsolutePath(format!("`{shown}` is absolute")));
    }
    let bytes = name.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Err(PackError::AbsolutePath(format!(
            "`{shown}` starts with a drive letter"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(PackError::BadPath(format!(
            "`{shown}` contains a NUL or control character"
        )));
    }
    let mut depth = 0;
    for segment in name.split('/') {
        depth += 1;
        match segment {
            "" => {
                return Err(PackError::BadPath(format!(
                    "`{shown}` has an empty segment"
                )));
            }
            "." | ".." => {
                return Err(PackError::PathTraversal(format!(
                    "`{shown}` has a `{segment}` segment"
                )));
            }
            _ => {}
        }
    }
    if name.len() > limits.max_path_len || depth > limits.max_depth {
        return Err(PackError::PathTooLong(format!(
            "`{shown}` exceeds {} bytes or {} segments",
            limits.max_path_len, limits.max_depth
        )));
    }
    Ok(())
}

/// The form two names collide in: NFC, then lower-cased (what case-insensitive or normalising
/// file systems would make of them).
#[must_use]
pub fn collision_key(name: &str) -> String {
    // ASCII is already NFC and lower-cases to ASCII: the common case needs no tables.
    if name.is_ascii() {
        return name.to_ascii_lowercase();
    }
    name.nfc()
        .collect::<String>()
        .to_lowercase()
        .nfc()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every hostile shape is refused with its own code; plain paths pass.
    #[test]
    fn rules() {
        let l = Limits::default();
        assert!(check("templates/readme.md", &l).is_ok());
        let cases = [
            ("", "ERR_PACK_BAD_PATH"),
            ("a\\b", "ERR_PACK_BACKSLASH"),
            ("/etc/passwd", "ERR_PACK_ABSOLUTE_PATH"),
            ("C:/x", "ERR_PACK_ABSOLUTE_PATH"),
            ("//server/share", "ERR_PACK_ABSOLUTE_PATH"),
            ("a/../b", "ERR_PACK_PATH_TRAVERSAL"),
            ("./a", "ERR_PACK_PATH_TRAVERSAL"),
            ("a//b", "ERR_PACK_BAD_PATH"),
            ("dir/", "ERR_PACK_BAD_PATH"),
            ("a\0b", "ERR_PACK_BAD_PATH"),
            ("a\nb", "ERR_PACK_BAD_PATH"),
        ];
        for (name, code) in cases {
            assert_eq!(check(name, &l).map_err(|e| e.code()), Err(code), "{name:?}");
        }
        assert_eq!(
            check("a/".repeat(20).trim_end_matches('/'), &l).map_err(|e| e.code()),
            Err("ERR_PACK_PATH_TOO_LONG")
        );
    }

    /// Case and normalisation variants collide.
    #[test]
    fn collisions() {
        assert_eq!(collision_key("README.md"), collision_key("readme.MD"));
        assert_eq!(collision_key("caf\u{e9}"), collision_key("cafe\u{301}"));
        assert_ne!(collision_key("a"), collision_key("b"));
        assert_eq!(
            collision_key("Dir/Caf\u{c9}.md"),
            collision_key("dir/cafe\u{301}.MD")
        );
        assert_eq!(collision_key("A-Z_0/9.TXT"), "a-z_0/9.txt");
    }
}
