//! The agent binary: dispatches on its first argument to one of the agent's modes.

use std::process::ExitCode;

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
        _ => {
            eprintln!("usage: compose-fleet-agent <version|rpc|daemon|shim|init>");
            ExitCode::from(2)
        }
    }
}
