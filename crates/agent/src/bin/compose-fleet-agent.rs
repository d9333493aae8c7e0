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
        "init" => ExitCode::from(compose_fleet_agent::runtime::init::main()),
        _ => {
            eprintln!("usage: compose-fleet-agent <version|rpc|daemon|shim|init>");
            ExitCode::from(2)
        }
    }
}
