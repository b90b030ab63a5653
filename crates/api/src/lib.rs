//! The tine HTTP/JSON API.
//!
//! The server only parses requests, calls the [`Manager`](tine_manager::Manager)
//! and serializes answers; errors map to status codes in [`error`] alone.
//! The client is what the CLI uses. Routes (all JSON unless noted):
//!
//! | method + path                              | body / query           | answer                  |
//! |--------------------------------------------|------------------------|-------------------------|
//! | GET `/v1/health`                           |                        | [`Health`]              |
//! | GET `/metrics`                             |                        | Prometheus text         |
//! | POST `/v1/system/cleanup`                  |                        | `CleanupReport`         |
//! | GET `/v1/instances`                        |                        | `[InstanceInfo]`        |
//! | POST `/v1/instances`                       | `RunRequest`           | 201 `InstanceInfo`      |
//! | GET `/v1/instances/{name}`                 |                        | `InstanceInfo`          |
//! | DELETE `/v1/instances/{name}`              | `?force=true`          | `InstanceInfo`          |
//! | POST `/v1/instances/{name}/{action}`       | start stop pause resume standby restore | `InstanceInfo` |
//! | POST `/v1/instances/{name}/fork`           | `ForkRequest`          | `ForkReport`            |
//! | POST `/v1/instances/{name}/exec`           | `ExecRequest`          | [`ExecResult`]          |
//! | POST `/v1/instances/{name}/exec?stream=true` | `ExecRequest`        | NDJSON [`ExecFrame`]s   |
//! | GET `/v1/instances/{name}/logs`            | `?follow=true`         | text (serial console)   |
//! | GET/POST `/v1/snapshots`                   | `SnapshotRequest`      | `[SnapshotInfo]` / 201  |
//! | GET/DELETE `/v1/snapshots/{name}`          | `?wait_compressed=true`| `SnapshotInfo`          |
//! | POST `/v1/snapshots/{name}/restore`        | [`RestoreRequest`]     | `InstanceInfo`          |
//! | POST `/v1/snapshots/{name}/fork`           | `ForkRequest`          | `ForkReport`            |
//! | GET/POST `/v1/templates`                   | [`PromoteRequest`]     | `[SnapshotInfo]` / 201  |
//! | GET/DELETE `/v1/templates/{name}`          |                        | `SnapshotInfo` (409 with live forks) |
//! | POST `/v1/templates/{name}/fork`           | `ForkRequest`          | `ForkReport`            |
//! | GET/POST `/v1/pools`                       | `PoolSpec`             | `[PoolInfo]` / `PoolInfo` |
//! | DELETE `/v1/pools/{from}/{source}`         |                        | `PoolInfo`              |

pub mod client;
pub mod error;
mod logs;
pub mod server;
pub mod types;

pub use client::{Client, ClientError, Endpoint};
pub use server::{serve, Listeners};
pub use types::*;
