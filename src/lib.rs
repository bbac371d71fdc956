//! incentives: a rewards engine. Decides, exactly once, that a user earned an
//! incentive, and publishes the award.
//!
//! # Layout
//!
//! - [`api`]: `incentives api`, the read API (progress, explanations, awards).
//! - [`bench`]: `incentives bench`, the processor's throughput, latency and memory figures.
//! - [`events`]: the domain records (input events, awards).
//! - [`codec`]: the Avro contract in `schemas/` and its single-object encoding.
//! - [`gateway`]: `incentives gateway`, the HTTP way in (auth, idempotency, 202 after ack).
//! - [`json`]: the JSON form of input events (gateway bodies, `produce --file`).
//! - [`config`]: settings, catalog and programs, validated, with env overrides.
//! - [`days`]: local calendar days in IANA zones.
//! - [`engine`]: pure decisions: streaks, once-rules, award ids.
//! - [`parallel`]: splitting a batch's CPU work over a few threads.
//! - [`partitioner`]: the Java client's murmur2 partitioner.
//! - [`state`]: every Redis key and Lua script.
//! - [`sweeper`]: deletes expired user states of the owned partitions.
//! - [`kafka`]: client settings, admin helpers.
//! - [`publisher`]: the embeddable event publisher (contract encoding, acks=all).
//! - [`processor`]: the consumer-group worker (`incentives process`).
//! - [`dead_letter`]: reasons and headers of dead-lettered records.
//! - [`corpus`]: a seeded corpus of malformed input records (tests of bad input).
//! - [`tools`]: `incentives produce` and `incentives awards`.
//! - [`loadgen`]: `produce` pacing, concurrency, latency figures; broker and gateway sinks.
//! - [`telemetry`]: metrics, health endpoints, logging.
#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod bench;
pub mod codec;
pub mod config;
pub mod corpus;
pub mod days;
pub mod dead_letter;
pub mod engine;
pub mod events;
pub mod gateway;
pub mod json;
pub mod kafka;
pub mod loadgen;
pub mod parallel;
pub mod partitioner;
pub mod processor;
pub mod publisher;
pub mod state;
pub mod sweeper;
pub mod telemetry;
pub mod tools;
