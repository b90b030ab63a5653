//! `tine`: the daemon and its command-line client. Thin: parsing and
//! printing here, everything else in tine-api and tine-manager.

mod args;
mod commands;
mod lines;
mod output;
mod prometheus;
mod serve;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = args::Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tine: {}", output::error_chain(&e));
            std::process::ExitCode::from(1)
        }
    }
}
