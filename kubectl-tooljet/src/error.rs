//! Errors and the exit codes scripts rely on.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | usage or input error (bad flags, unreadable file, nothing to roll back to, ...) |
//! | 2 | refused by the cluster: admission webhook, admission policy, schema validation or RBAC |
//! | 3 | not found (app, version, stage, CRD) |
//! | 4 | API or connection error (kubeconfig, network, server errors, conflicts) |
//! | 5 | `doctor` found at least one failed check |

use std::fmt;

/// Exit codes, stable across releases (documented in `--help` and docs/plugin.md).
pub mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 1;
    pub const DENIED: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const API: u8 = 4;
    pub const CHECKS_FAILED: u8 = 5;
}

/// Everything a command can fail with. The message names the object and the fix.
#[derive(Debug)]
pub enum Error {
    /// Bad flags or input; the message says what to give instead.
    Usage(String),
    /// The cluster refused the change: the message is the refusal itself (a webhook's or
    /// policy's denial, a schema rule, or RBAC), without the apiserver's wrapping.
    Denied(String),
    /// An object does not exist.
    NotFound(String),
    /// The API could not be reached or answered with an error.
    Api(String),
    /// The apiserver did not accept the credentials (401): expired or unknown.
    Unauthenticated(String),
    /// `doctor` ran and at least one check failed (already printed).
    ChecksFailed,
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Denied(_) => exit::DENIED,
            Error::NotFound(_) => exit::NOT_FOUND,
            Error::Api(_) | Error::Unauthenticated(_) => exit::API,
            Error::ChecksFailed => exit::CHECKS_FAILED,
        }
    }

    /// Wraps a kube error with what was being done (`context`, e.g. "patching AppVersion crm-v2").
    pub fn kube(context: impl fmt::Display, e: kube::Error) -> Error {
        match e {
            kube::Error::Api(status) => {
                let message = denial_message(&status.message);
                match status.code {
                    401 => Error::Unauthenticated(format!(
                        "{context}: the apiserver did not accept your credentials ({}); log in again",
                        status.message
                    )),
                    404 => Error::NotFound(format!("{context}: {}", status.message)),
                    // 403: RBAC or an admission webhook/policy; 422: schema or CEL rule; 400:
                    // e.g. a webhook denial with a custom code.
                    403 | 422 => Error::Denied(message),
                    400 if message != status.message => Error::Denied(message),
                    _ => Error::Api(format!("{context}: {} ({})", status.message, status.code)),
                }
            }
            other => Error::Api(format!("{context}: {other}")),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::NotFound(m) | Error::Api(m) | Error::Unauthenticated(m) => {
                f.write_str(m)
            }
            Error::Denied(m) => write!(f, "denied: {m}"),
            Error::ChecksFailed => f.write_str("doctor: at least one check failed"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The refusal itself, without the apiserver's wrapping: `admission webhook "x" denied the
/// request: MESSAGE` and `ValidatingAdmissionPolicy 'p' with binding 'b' denied request: MESSAGE`
/// become `MESSAGE`; anything else is returned unchanged.
pub fn denial_message(message: &str) -> String {
    for marker in ["denied the request: ", "denied request: "] {
        if let Some((_, rest)) = message.split_once(marker) {
            return rest.trim().to_string();
        }
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, "Forbidden")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_webhook_denial_becomes_its_message_and_exit_code_2() {
        let e = Error::kube(
            "patching",
            api(
                403,
                "admission webhook \"validate.appversions.tooljet.io\" denied the request: AppVersion crm-v2 is in staging: edits are only allowed in development",
            ),
        );
        assert_eq!(e.exit_code(), exit::DENIED);
        assert_eq!(
            e.to_string(),
            "denied: AppVersion crm-v2 is in staging: edits are only allowed in development"
        );
    }

    #[test]
    fn a_policy_denial_becomes_its_message() {
        assert_eq!(
            denial_message(
                "ValidatingAdmissionPolicy 'tooljet-operator-stage-rules' with binding 'b' denied request: no"
            ),
            "no"
        );
    }

    #[test]
    fn not_found_and_server_errors_have_their_own_codes() {
        assert_eq!(
            Error::kube("get", api(404, "not found")).exit_code(),
            exit::NOT_FOUND
        );
        assert_eq!(Error::kube("get", api(500, "boom")).exit_code(), exit::API);
        assert_eq!(
            Error::kube("get", api(409, "conflict")).exit_code(),
            exit::API
        );
    }
}
