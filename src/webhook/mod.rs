//! The admission webhook: the environment rules in the apiserver's request path.

pub mod access;
pub mod certs;
pub mod config;
pub mod gates;
pub mod http;
#[cfg(test)]
mod proptests;
pub mod rules;
pub mod server;
