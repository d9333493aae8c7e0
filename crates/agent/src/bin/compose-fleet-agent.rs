//! The agent binary: dispatches on its first argument to one of the agent's modes.

use std::process::ExitCode;

use compose_fleet_agent::{daemon, rpc, store::Paths};

fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "version" | "--version" => {
            println!(
                "compose-fleet-agent {} (protocol {})",
                compose_fleet_agent::AGENT_VERSION,
                compose_fleet_agent::proto::PROTOCOL_VERSION
            );
            ExitCode::SUCCESS
        }
        "shim" => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            let code = compose_fleet_agent::supervisor::shim::main(&args);
            ExitCode::from(u8::try_from(code).unwrap_or(2))
        }
        "rpc" => block_on(false, rpc::run(Paths::from_env())),
        "daemon" => block_on(true, async {
            match daemon::run(Paths::from_env()).await? {
                Ok(()) => Ok(()),
                Err(daemon::AlreadyRunning) => {
                    eprintln!("daemon: another daemon holds the lock; exiting");
                    Ok(())
                }
            }
        }),
        "init" => ExitCode::from(compose_fleet_agent::runtime::init::main()),
        _ => {
            eprintln!("usage: compose-fleet-agent <version|rpc|daemon|shim|init>");
            ExitCode::from(2)
        }
    }
}

/// Runs one async mode to completion: 0 on success, 1 with the error on stderr otherwise.
fn block_on(
    multi_thread: bool,
    fut: impl std::future::Future<Output = std::io::Result<()>>,
) -> ExitCode {
    let runtime = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let result = match runtime {
        Ok(rt) => {
            let result = rt.block_on(fut);
            // Do not wait for a blocking stdin read that will never finish.
            rt.shutdown_background();
            result
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "compose-fleet-agent {mode}: {e}",
                mode = std::env::args().nth(1).unwrap_or_default()
            );
            ExitCode::from(1)
        }
    }
}
