//! Names: a `versionName` is unique among an app's versions; an app's name as a label value.

use sha2::{Digest, Sha256};

/// The version (object name) other than `except` that already holds `version_name`, among
/// `versions` given as (object name, versionName) of one app.
pub fn version_name_holder<'a>(
    versions: impl IntoIterator<Item = (&'a str, &'a str)>,
    version_name: &str,
    except: &str,
) -> Option<&'a str> {
    versions
        .into_iter()
        .find(|(name, held)| *held == version_name && *name != except)
        .map(|(name, _)| name)
}

/// The value of the `tooljet.io/app` label for an app: the name when it fits a label value (63
/// characters), else a prefix and a hash of the whole name.
pub fn app_label_value(app: &str) -> String {
    if app.len() <= 63 {
        return app.to_string();
    }
    let digest: String = Sha256::digest(app.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}-{digest}", app[..46].trim_end_matches(['.', '-']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_name_is_held_by_another_version_only() {
        let versions = [("crm-v1", "v1"), ("crm-v2", "v2")];
        assert_eq!(
            version_name_holder(versions, "v1", "crm-new"),
            Some("crm-v1")
        );
        assert_eq!(version_name_holder(versions, "v1", "crm-v1"), None);
        assert_eq!(version_name_holder(versions, "v3", "crm-new"), None);
    }
}
