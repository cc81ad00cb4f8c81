//! Fleetyard: one pool of donated lab machines and rented cloud capacity for an open-source
//! Linux distribution's builds, CI and tests. See ARCHITECTURE.md for the map.

pub mod admin;
pub mod auth;
pub mod cloud;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod error_code;
pub mod extract;
pub mod handlers;
pub mod heartbeats;
pub mod locale;
pub mod monitoring;
pub mod operations;
pub mod probe;
pub mod provisioner;
pub mod routes;
pub mod scheduler;
pub mod schedules;
pub mod secrets;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod ui;
pub mod views;
pub mod work;

pub use config::Config;
pub use state::AppState;
