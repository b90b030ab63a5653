//! Boot time of the default guest: QEMU process start → first agent `pong`.
//!
//!     cargo run --release -p tine-agent-proto --example boot_time [-- RUNS]
//!
//! Uses the same guest and QEMU command line as the integration tests (TCG here).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map_or(5, |n| n.parse().expect("RUNS is a number"));
    let image = common::image();
    let mut times = Vec::new();
    for run in 1..=runs {
        let start = Instant::now();
        let vm = common::Vm::start(image);
        let (_agent, pong) = vm.ready().await;
        let took = start.elapsed();
        println!(
            "run {run}: {:.0} ms (guest uptime at pong {} ms)",
            took.as_secs_f64() * 1e3,
            pong.uptime_ms
        );
        times.push(took);
        drop(vm);
    }
    times.sort();
    let median = times[times.len() / 2];
    println!("median of {runs}: {:.0} ms", median.as_secs_f64() * 1e3);
}
