//! End-to-end tests of the HTTP API against a real PostgreSQL. One binary, many modules: it
//! links once, and nextest still runs every test in its own process.

mod agents;
mod audit;
mod auth;
mod authorization_matrix;
mod browser;
mod cli;
mod clouds;
mod contract;
mod donations;
mod jobs;
mod leases;
mod lifecycle;
mod listing;
mod openapi;
mod pages;
mod schedules;
mod ssh;
mod system;
mod trust;
mod validation;
mod webhooks;
