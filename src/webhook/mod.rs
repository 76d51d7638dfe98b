//! The admission webhook: the environment rules in the apiserver's request path.

pub mod access;
pub mod certs;
pub mod config;
pub mod gates;
pub mod http;
pub mod limits;
pub mod metadata;
pub mod mutations;
pub mod needs;
pub mod notifications;
#[cfg(test)]
mod proptests;
pub mod reviews;
pub mod server;
pub mod vocabulary;
