//! tooljet-operator: ToolJet's multi-environment lifecycle (development -> staging -> production)
//! as Kubernetes custom resources.

pub mod api;
pub mod cached;
pub mod controller;
pub mod effective;
pub mod gate;
pub mod leader;
pub mod lean;
pub mod lifecycle;
pub mod managed;
pub mod materialize;
pub mod metrics;
pub mod operator;
pub mod policy;
pub mod state;
pub mod telemetry;
pub mod webhook;
