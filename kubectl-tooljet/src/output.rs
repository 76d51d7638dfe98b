//! `-o table|json|yaml`: data commands build a serializable report and a table view of it.

use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;
use tooljet_operator::api::{VerificationCause, VerificationPhase};

use crate::error::{Error, Result};

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Human-readable columns.
    #[default]
    Table,
    /// One JSON document (stable field names, for scripts).
    Json,
    /// The same document as YAML.
    Yaml,
}

/// Prints `report` as JSON/YAML, or as the tables `tables` renders.
pub fn print<T: Serialize>(
    format: Format,
    report: &T,
    tables: impl FnOnce(&T) -> String,
) -> Result<()> {
    let text = match format {
        Format::Table => tables(report),
        Format::Json => serde_json::to_string_pretty(report)
            .map(|s| s + "\n")
            .map_err(|e| Error::Api(format!("encoding JSON: {e}")))?,
        Format::Yaml => {
            serde_yaml::to_string(report).map_err(|e| Error::Api(format!("encoding YAML: {e}")))?
        }
    };
    print!("{text}");
    Ok(())
}

/// A kubectl-style table: upper-case headers, no borders, columns separated by spaces.
pub fn table<I, R, C>(headers: &[&str], rows: I) -> String
where
    I: IntoIterator<Item = R>,
    R: IntoIterator<Item = C>,
    C: Into<comfy_table::Cell>,
{
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().map(|h| h.to_uppercase()));
    for row in rows {
        t.add_row(row);
    }
    for column in t.column_iter_mut() {
        column.set_padding((0, 3));
    }
    let mut out: String = t
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out
}

/// An RFC 3339 time as kubectl shows ages is not needed here: times stay absolute and UTC.
pub fn time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> String {
    t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A verification phase as the API spells it: Progressing, Verified or Failed.
pub fn phase(phase: VerificationPhase) -> &'static str {
    match phase {
        VerificationPhase::Progressing => "Progressing",
        VerificationPhase::Verified => "Verified",
        VerificationPhase::Failed => "Failed",
    }
}

/// What started a verification, in words: `promotion of crm-v4`, `rollback to crm-v1`,
/// `configuration change`.
pub fn started_by(cause: VerificationCause, version: Option<&str>) -> String {
    let (what, link) = match cause {
        VerificationCause::Release => ("release", "of"),
        VerificationCause::Rollback => ("rollback", "to"),
        VerificationCause::AutomaticRollback => ("automatic rollback", "to"),
        VerificationCause::Promotion => ("promotion", "of"),
        VerificationCause::Configuration => ("configuration change", ""),
    };
    match version {
        Some(version) if !link.is_empty() => format!("{what} {link} {version}"),
        _ => what.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_have_upper_case_headers_and_no_borders() {
        let t = super::table(
            &["name", "stage"],
            [["crm-v1", "staging"], ["crm-v22", "production"]],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["NAME", "STAGE"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["crm-v22", "production"]
        );
        assert!(!t.contains('|') && !t.contains('+'));
        // Columns line up.
        assert_eq!(lines[1].find("staging"), lines[0].find("STAGE"));
    }

    #[test]
    fn what_started_a_verification_reads_as_what_happened() {
        use tooljet_operator::api::VerificationCause::*;
        let cases = [
            (Release, Some("v2"), "release of v2"),
            (Rollback, Some("v1"), "rollback to v1"),
            (AutomaticRollback, Some("v1"), "automatic rollback to v1"),
            (Promotion, Some("v3"), "promotion of v3"),
            (Configuration, None, "configuration change"),
            (Release, None, "release"),
        ];
        for (cause, version, words) in cases {
            assert_eq!(super::started_by(cause, version), words);
        }
    }
}
