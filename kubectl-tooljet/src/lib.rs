//! `kubectl tooljet`: the tooljet-operator lifecycle from kubectl. The library holds every
//! command (the binary only parses the command line), so integration tests reuse the pure parts
//! (the ToolJet export mapping) next to the real binary.

pub mod cluster;
pub mod dashboard;
pub mod diff;
pub mod doctor;
pub mod error;
pub mod history;
pub mod lifecycle;
pub mod output;
pub mod status;
pub mod transfer;
pub mod transfer_cmd;
