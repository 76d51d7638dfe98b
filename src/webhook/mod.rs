//! The admission webhook: the environment rules in the apiserver's request path.

pub mod certs;
pub mod config;
#[cfg(test)]
mod proptests;
pub mod rules;
pub mod server;
