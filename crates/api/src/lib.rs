//! The tine HTTP/JSON API.
//!
//! The server only parses requests, calls the [`Manager`](tine_manager::Manager)
//! and serializes answers; errors map to status codes in [`error`] alone.
//! The client is what the CLI uses. Routes (all JSON unless noted):
//!
//! | method + path                              | body / query           | answer                  |
//! |--------------------------------------------|------------------------|-------------------------|
//! | GET `/v1/health`                           |                        | [`Health`]              |
//! | GET `/v1/instances`                        |                        | `[InstanceInfo]`        |
//! | POST `/v1/instances`                       | `RunRequest`           | 201 `InstanceInfo`      |
//! | GET `/v1/instances/{name}`                 |                        | `InstanceInfo`          |
//! | DELETE `/v1/instances/{name}`              | `?force=true`          | `InstanceInfo`          |
//! | POST `/v1/instances/{name}/{action}`       | start stop pause resume standby restore | `InstanceInfo` |
//! | POST `/v1/instances/{name}/fork`           | `ForkRequest`          | `ForkReport`            |
//! | POST `/v1/instances/{name}/exec`           | `ExecRequest`          | [`ExecResult`]          |
//! | POST `/v1/instances/{name}/exec?stream=true` | `ExecRequest`        | NDJSON [`ExecFrame`]s   |
//! | GET `/v1/instances/{name}/logs`            | `?follow=true`         | text (serial console)   |

pub mod client;
pub mod error;
mod logs;
pub mod server;
pub mod types;

pub use client::{Client, ClientError, Endpoint};
pub use server::{serve, Listeners};
pub use types::*;
