use std::process::ExitCode;

use clap::Parser as _;
use portmap_user::cli::{self, Cli};

fn main() -> ExitCode {
    // Usage errors exit with 2 from here, before anything else runs.
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if matches!(cli.command, cli::Command::Run(_)) {
        // Before any thread exists.
        portmap_user::reserve::make_room();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("portmap: error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("portmap: error: {:#}", failure.error());
            ExitCode::from(failure.exit_code())
        }
    }
}
