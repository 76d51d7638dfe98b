//! ToolJet's rules for constants: what it accepts as a name and a value, and the Secret constant
//! a secret data source option becomes.

use sha2::{Digest, Sha256};

/// ToolJet's limits on a constant (server DTO `CreateOrganizationConstantDto`): a name of at most
/// 50 characters matching `^[a-zA-Z_][a-zA-Z0-9_]*$`, a value of 1-10000 characters.
pub const MAX_CONSTANT_NAME: usize = 50;
/// See [`MAX_CONSTANT_NAME`]. Checked in bytes, which is never fewer than characters.
pub const MAX_CONSTANT_VALUE: usize = 10_000;

/// Whether ToolJet accepts `name` as a constant name: at most [`MAX_CONSTANT_NAME`] characters
/// matching `^[a-zA-Z_][a-zA-Z0-9_]*$` (the CRDs' CEL rules say the same).
pub fn is_constant_name(name: &str) -> bool {
    name.len() <= MAX_CONSTANT_NAME
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The name of the Secret constant that carries secret option `option` of data source `source`:
/// both upper-cased and joined with `_`, every character ToolJet does not allow in a constant
/// name replaced by `_`, `_` put first when it would start with a digit. A name longer than
/// ToolJet's 50 characters keeps its first 41 and ends with `_` and 8 hex digits of a hash of the
/// source and option, so it stays unique. Examples: (`crm-db`, `password`) -> `CRM_DB_PASSWORD`.
pub fn option_constant(source: &str, option: &str) -> String {
    let mut name: String = format!("{source}_{option}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    if name.len() > MAX_CONSTANT_NAME {
        let digest = Sha256::new()
            .chain_update(source.as_bytes())
            .chain_update([0])
            .chain_update(option.as_bytes())
            .finalize();
        name.truncate(MAX_CONSTANT_NAME - 9);
        name.push('_');
        for b in &digest[..4] {
            name.push_str(&format!("{b:02x}"));
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_names_are_tooljets() {
        for ok in ["A", "_x", "API_URL_2", &"a".repeat(MAX_CONSTANT_NAME)] {
            assert!(is_constant_name(ok), "{ok}");
        }
        for bad in [
            "",
            "1BAD",
            "A-B",
            "é",
            "a.b",
            &"a".repeat(MAX_CONSTANT_NAME + 1),
        ] {
            assert!(!is_constant_name(bad), "{bad}");
        }
    }

    #[test]
    fn option_constant_names_follow_tooljets_rules() {
        assert_eq!(option_constant("crm-db", "password"), "CRM_DB_PASSWORD");
        assert_eq!(
            option_constant("hr.pg", "ssh_password"),
            "HR_PG_SSH_PASSWORD"
        );
        assert_eq!(option_constant("1st", "token"), "_1ST_TOKEN");
        let long = "a".repeat(100);
        let a = option_constant(&long, "password");
        let b = option_constant(&long, "passwore");
        assert_eq!(a.len(), MAX_CONSTANT_NAME);
        assert_ne!(a, b, "a shortened name keeps a hash of the whole");
        for n in ["CRM_DB_PASSWORD", "_1ST_TOKEN", &a, &b] {
            assert!(is_constant_name(n), "{n}");
        }
    }
}
