//! tooljet-operator: ToolJet's multi-environment lifecycle (development -> staging -> production)
//! as Kubernetes custom resources.

pub mod api;
pub mod apiclient;
pub mod cache;
pub mod controller;
pub mod effective;
pub mod gate;
pub mod leader;
pub mod lifecycle;
pub mod materialize;
pub mod metrics;
pub mod notify;
pub mod operator;
pub mod policy;
pub mod telemetry;
pub mod webhook;
