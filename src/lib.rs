//! tooljet-operator: ToolJet's multi-environment lifecycle (development -> staging -> production)
//! as Kubernetes custom resources.

pub mod api;
pub mod controller;
pub mod materialize;
pub mod telemetry;
